package main

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestCheckPositive(t *testing.T) {
	for _, tt := range []struct {
		args []string
		err  string // "" for none
	}{
		{nil, ""}, // defaults are not checked, even 0
		{[]string{"--grace", "5m"}, ""},
		{[]string{"--grace", "0s"}, "--grace 0s"},
		{[]string{"--grace", "-1m"}, "--grace -1m0s"},
		{[]string{"--count", "3"}, ""},
		{[]string{"--count", "0"}, "--count 0"},
		{[]string{"--count", "-2"}, "--count -2"},
		{[]string{"--size", "0"}, "--size 0"},
		{[]string{"--size", "7"}, ""},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := &cobra.Command{Use: "x", RunE: func(cmd *cobra.Command, _ []string) error {
				return checkPositive(cmd, "grace", "count", "size")
			}}
			cmd.Flags().Duration("grace", time.Minute, "")
			cmd.Flags().Int("count", 0, "")
			cmd.Flags().Uint64("size", 1, "")
			cmd.SetArgs(tt.args)
			err := cmd.Execute()
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("got %v; want %q", err, tt.err)
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
)

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"list", "list", 0},
		{"lst", "list", 1},
		{"lsit", "list", 1}, // a swap of neighbours is one edit
		{"tokn", "token", 1},
		{"lookpu", "lookup", 1},
		{"revok", "revoke", 1},
		{"create", "delete", 4},
		{"", "abc", 3},
		{"abc", "", 3},
		{"ca", "abc", 3}, // optimal string alignment, not full Damerau
	} {
		t.Run(tt.a+"/"+tt.b, func(t *testing.T) {
			if got := editDistance(tt.a, tt.b); got != tt.want {
				t.Fatalf("editDistance(%q, %q) = %d; want %d", tt.a, tt.b, got, tt.want)
			}
			if got := editDistance(tt.b, tt.a); got != tt.want {
				t.Fatalf("editDistance(%q, %q) = %d; want %d (symmetric)", tt.b, tt.a, got, tt.want)
			}
		})
	}
}

func TestSuggest(t *testing.T) {
	token := []string{"create", "list", "revoke", "prune", "help"}
	route := []string{"list", "lookup", "overlaps", "drain", "undrain", "help"}
	root := []string{"coordinator", "cluster", "vnet", "token", "peer", "route", "gossip", "policy", "admin", "status", "ping", "netcheck", "version", "help", "completion"}
	for _, tt := range []struct {
		name  string
		word  string
		cands []string
		want  []string
	}{
		{"dropped letter", "lst", token, []string{"list"}},
		{"swapped letters", "lsit", token, []string{"list"}},
		{"case", "LIST", token, []string{"list"}},
		{"prefix", "rev", token, []string{"revoke"}},
		{"several within reach, nearest then by name", "rain", []string{"train", "drains", "brain"}, []string{"brain", "train", "drains"}},
		{"prefix of several", "lo", route, []string{"lookup"}},
		{"short words allow one edit", "lit", route, []string{"list"}},
		{"nothing near", "xyzzy", root, nil},
		{"group name", "tokn", root, []string{"token"}},
		{"two groups", "peers", root, []string{"peer"}},
		{"statsu", "statsu", root, []string{"status"}},
		{"empty", "", root, nil},
		{"at most three", "p", []string{"pa", "pb", "pc", "pd"}, []string{"pa", "pb", "pc"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := suggest(tt.word, tt.cands); !slices.Equal(got, tt.want) {
				t.Fatalf("suggest(%q) = %q; want %q", tt.word, got, tt.want)
			}
		})
	}
}

// TestUnknownSubcommand: a word that names no subcommand, at any level,
// fails with exit status 1 and a suggestion on stderr, and prints nothing
// on stdout; help, and a group alone, still succeed.
func TestUnknownSubcommand(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		code     int
		stderr   string // a part of what stderr must hold
		stdout   string // a part of what stdout must hold
		noStdout bool
	}{
		{[]string{"token", "lst"}, 1, `unknown command "lst" for "meshd token"; did you mean "list"?`, "", true},
		{[]string{"tokn", "list"}, 1, `did you mean "token"?`, "", true},
		{[]string{"route", "lokup", "10.0.0.1"}, 1, `did you mean "lookup"?`, "", true},
		{[]string{"admin", "token", "lsit"}, 1, `for "meshd admin token"; did you mean "list"?`, "", true},
		{[]string{"cluster", "snapshot", "sav", "x"}, 1, `did you mean "save"?`, "", true},
		{[]string{"token", "lst", "--json"}, 1, `unknown command "lst"`, "", true},
		{[]string{"xyzzy"}, 1, `run 'meshd --help' for its commands`, "", true},
		{[]string{"help", "tokn"}, 1, `did you mean "token"?`, "", true},
		{[]string{"token", "--bogus"}, 1, "unknown flag: --bogus", "", true},
		{[]string{"token"}, 0, "", "meshd token [command]", false},
		{[]string{"help", "token"}, 0, "", "meshd token [command]", false},
		{[]string{"help"}, 0, "", "Available Commands", false},
		{[]string{"token", "--help"}, 0, "", "meshd token [command]", false},
		{[]string{"route", "lookup", "--help"}, 0, "", "--all-vnets", false},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := execute(context.Background(), tt.args, &out, &errOut)
			if code != tt.code {
				t.Fatalf("exit %d; want %d (stdout %q, stderr %q)", code, tt.code, out.String(), errOut.String())
			}
			if !strings.Contains(errOut.String(), tt.stderr) {
				t.Errorf("stderr %q; want it to contain %q", errOut.String(), tt.stderr)
			}
			if !strings.Contains(out.String(), tt.stdout) {
				t.Errorf("stdout %q; want it to contain %q", out.String(), tt.stdout)
			}
			if tt.noStdout && out.Len() > 0 {
				t.Errorf("stdout %q; want nothing (help goes only with success)", out.String())
			}
		})
	}
}

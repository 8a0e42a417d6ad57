package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// checkPositive refuses a zero or negative value of any of the named
// duration or integer flags, so an explicit --ephemeral-grace 0 is an
// error and not silently the default. Flags left at their defaults are
// not checked.
func checkPositive(cmd *cobra.Command, names ...string) error {
	for _, n := range names {
		f := cmd.Flags().Lookup(n)
		if f == nil {
			panic("checkPositive: no flag --" + n)
		}
		if !f.Changed {
			continue
		}
		if err := positive(f); err != nil {
			return err
		}
	}
	return nil
}

func positive(f *pflag.Flag) error {
	v := f.Value.String()
	switch f.Value.Type() {
	case "duration":
		d, err := time.ParseDuration(v)
		if err == nil && d > 0 {
			return nil
		}
		return fmt.Errorf("--%s %s: give a positive duration such as 30s or 5m", f.Name, v)
	default:
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil && n > 0 {
			return nil
		}
		return fmt.Errorf("--%s %s: give a number from 1 up", f.Name, v)
	}
}

package main

import (
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// noJSON lists the commands without --json: each prints a confirmation,
// a file or runs in the foreground, not data to read back.
var noJSON = map[string]string{
	"meshd admin token revoke":      "a confirmation",
	"meshd cluster remove":          "a confirmation",
	"meshd coordinator":             "a server in the foreground",
	"meshd coordinator admin-token": "the credential itself",
	"meshd coordinator api-ca":      "a PEM certificate",
	"meshd coordinator keygen":      "the key itself",
	"meshd coordinator restore":     "a confirmation",
	"meshd peer export":             "a wg-quick file",
	"meshd peer remove":             "a confirmation",
	"meshd peer up":                 "the agent in the foreground",
	"meshd route drain":             "a confirmation",
	"meshd route undrain":           "a confirmation",
	"meshd token revoke":            "a confirmation",
	"meshd vnet create":             "a confirmation",
	"meshd vnet delete":             "a confirmation",
	"meshd completion bash":         "a shell script",
	"meshd completion fish":         "a shell script",
	"meshd completion powershell":   "a shell script",
	"meshd completion zsh":          "a shell script",
}

// TestEveryCommandTakesJSON: every command that prints data (every list,
// show, status, lookup and write that answers with a record) takes
// --json; a new command must take it or say here why not.
func TestEveryCommandTakesJSON(t *testing.T) {
	root := newRoot(io.Discard, io.Discard)
	root.InitDefaultCompletionCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && !c.HasSubCommands() && c.Name() != "help" {
			_, exempt := noJSON[c.CommandPath()]
			has := c.Flags().Lookup("json") != nil
			switch {
			case !has && !exempt:
				t.Errorf("%s has no --json", c.CommandPath())
			case has && exempt:
				t.Errorf("%s takes --json but is listed in noJSON", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// TestJSONOutputs: each read command's --json output is one JSON value,
// against a running coordinator.
func TestJSONOutputs(t *testing.T) {
	startCoordinator(t)
	for _, args := range [][]string{
		{"vnet", "list"},
		{"token", "list"},
		{"token", "prune"},
		{"peer", "list"},
		{"route", "list"},
		{"route", "lookup", "10.1.2.3"},
		{"route", "overlaps"},
		{"gossip", "rotate-key"},
		{"cluster", "status"},
		{"policy", "get"},
		{"admin", "token", "list"},
		{"version", "--cluster"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := meshdErr(t, append(args, "--json")...)
			var v any
			if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil {
				t.Fatalf("exit %d, stdout %q (%v), stderr %q; want one JSON value", code, out, err, errOut)
			}
		})
	}
}

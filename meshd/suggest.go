package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// errUnknownCommand is what an unknown subcommand gets: the command path,
// the word, and the nearest names, so `meshd token lst` fails with
// `unknown command "lst" for "meshd token"; did you mean "list"?`.
func errUnknownCommand(parent *cobra.Command, word string) error {
	var names []string
	for _, c := range parent.Commands() {
		if c.IsAvailableCommand() || c.Name() == "help" {
			names = append(names, c.Name())
			names = append(names, c.Aliases...)
		}
	}
	msg := fmt.Sprintf("unknown command %q for %q", word, parent.CommandPath())
	switch s := suggest(word, names); len(s) {
	case 0:
		return fmt.Errorf("%s; run '%s --help' for its commands", msg, parent.CommandPath())
	case 1:
		return fmt.Errorf("%s; did you mean %q?", msg, s[0])
	default:
		q := make([]string, len(s))
		for i, n := range s {
			q[i] = fmt.Sprintf("%q", n)
		}
		return fmt.Errorf("%s; did you mean %s or %s?", msg, strings.Join(q[:len(q)-1], ", "), q[len(q)-1])
	}
}

// maxSuggestions bounds how many names a suggestion offers.
const maxSuggestions = 3

// suggest returns the candidates word is most likely a typo of, nearest
// first (then by name): those within edit distance 2 (1 for words of up to
// three letters; a swap of two neighbouring letters counts as one edit),
// and those word is a prefix of. Case is ignored.
func suggest(word string, candidates []string) []string {
	w := strings.ToLower(word)
	if w == "" {
		return nil
	}
	limit := 2
	if len([]rune(w)) <= 3 {
		limit = 1
	}
	type match struct {
		name string
		d    int
	}
	var ms []match
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c] {
			continue
		}
		seen[c] = true
		lc := strings.ToLower(c)
		d := editDistance(w, lc)
		if d > limit && !(len(w) >= 2 && strings.HasPrefix(lc, w)) {
			continue
		}
		ms = append(ms, match{c, d})
	}
	slices.SortFunc(ms, func(a, b match) int {
		if a.d != b.d {
			return a.d - b.d
		}
		return strings.Compare(a.name, b.name)
	})
	var out []string
	for _, m := range ms {
		if len(out) == maxSuggestions {
			break
		}
		out = append(out, m.name)
	}
	return out
}

// editDistance is the optimal string alignment distance between a and b:
// the fewest insertions, deletions, substitutions and swaps of two
// neighbouring letters that turn one into the other.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// d[i][j] is the distance between ra[:i] and rb[:j].
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// strictGroups makes every command that only groups subcommands (root,
// token, route, ...) refuse a word that names none of them, with a
// suggestion, instead of printing its help and succeeding: run alone, a
// group still prints its help and exits 0. It also replaces the help
// command, so `meshd help tokn` fails the same way, and makes an unknown
// flag after an unknown subcommand (`meshd token lst --json`) report the
// subcommand, the real mistake.
func strictGroups(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return errUnknownCommand(cmd, args[0])
				}
				return nil
			}
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if c.HasSubCommands() {
			if args := c.Flags().Args(); len(args) > 0 {
				return errUnknownCommand(c, args[0])
			}
		}
		return err
	})
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return errUnknownCommand(target, rest[0])
			}
			return target.Help()
		},
	})
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Manage a vnet's access policy: who may reach what"}
	path := func(vnet string) string { return "/v1/vnets/" + url.PathEscape(vnet) + "/policy" }

	var setVNet string
	set := &cobra.Command{
		Use:   "set --vnet NAME FILE",
		Short: "Validate a policy (JSON, - for stdin) and put it in force as the vnet's next version",
		Long: `Validate a policy and put it in force as the vnet's next version.

The coordinators refuse a policy with unknown fields or selectors, tags or
peers the vnet does not have, bad ports, or tests of its own that fail, and
name the rule or test at fault. Peers get the new policy within a second.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			var out api.Policy
			if err := g.call(cmd, http.MethodPut, path(setVNet), json.RawMessage(doc), &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			fmt.Fprintf(g.out, "policy of vnet %s set: version %d\n", setVNet, out.Version)
			return nil
		},
	}
	set.Flags().StringVar(&setVNet, "vnet", api.DefaultVNet, "vnet whose policy to set")
	addJSONFlag(set, g)

	var getVNet string
	var version int
	get := &cobra.Command{
		Use:   "get --vnet NAME",
		Short: "Show the vnet's policy and who set which version when",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkPositive(cmd, "version"); err != nil {
				return err
			}
			p := path(getVNet)
			if version > 0 {
				p += "?version=" + strconv.Itoa(version)
			}
			var out api.Policy
			if err := g.call(cmd, http.MethodGet, p, nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return printPolicy(g, out)
		},
	}
	get.Flags().StringVar(&getVNet, "vnet", api.DefaultVNet, "vnet whose policy to show")
	get.Flags().IntVar(&version, "version", 0, "show this earlier version's document (the last 10 are kept)")
	addJSONFlag(get, g)

	var delVNet string
	del := &cobra.Command{
		Use:   "delete --vnet NAME",
		Short: "Remove the vnet's policy: every peer of the vnet may reach every other again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out api.Policy
			if err := g.call(cmd, http.MethodDelete, path(delVNet), nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			fmt.Fprintf(g.out, "policy of vnet %s removed (version %d): everything inside it is allowed\n", delVNet, out.Version)
			return nil
		},
	}
	del.Flags().StringVar(&delVNet, "vnet", api.DefaultVNet, "vnet whose policy to remove")
	addJSONFlag(del, g)

	var testVNet, proto string
	test := &cobra.Command{
		Use:   "test --vnet NAME SRC DST:PORT [--proto tcp|udp|icmp]",
		Short: "Say whether the vnet's policy lets SRC open a flow to DST:PORT, and which rule does",
		Long: `Say whether the vnet's policy lets SRC open a flow to DST:PORT, and which rule does.

SRC is tag:NAME, peer:NAME or an address; DST is the same followed by :PORT
(an address on a gateway's LAN, such as 192.168.10.10:443, too). For icmp
give DST without a port.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"src": {args[0]}, "dst": {args[1]}, "proto": {proto}}
			var res api.PolicyTestResult
			if err := g.call(cmd, http.MethodGet, path(testVNet)+"/test?"+q.Encode(), nil, &res); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, res)
			}
			flow := fmt.Sprintf("%s to %s over %s", res.Src, res.Dst, res.Proto)
			switch {
			case res.NoPolicy:
				fmt.Fprintf(g.out, "allow: %s (vnet %s has no policy: everything inside it is allowed)\n", flow, res.VNet)
			case res.Allowed && res.Rule != nil:
				name := ""
				if res.RuleName != "" {
					name = fmt.Sprintf(" (%q)", res.RuleName)
				}
				fmt.Fprintf(g.out, "allow: %s, by acls[%d]%s of policy version %d\n", flow, *res.Rule, name, res.Version)
			default:
				fmt.Fprintf(g.out, "deny: %s: no rule of policy version %d accepts it\n", flow, res.Version)
			}
			return nil
		},
	}
	test.Flags().StringVar(&testVNet, "vnet", api.DefaultVNet, "vnet whose policy to ask")
	test.Flags().StringVar(&proto, "proto", "tcp", "tcp, udp or icmp")
	addJSONFlag(test, g)

	cmd.AddCommand(set, get, del, test)
	return cmd
}

// readPolicyFile reads a policy document ("-": stdin). A document that is
// not JSON at all is refused here, with where it breaks; everything else
// is the coordinators' to judge.
func readPolicyFile(cmd *cobra.Command, name string) ([]byte, error) {
	var doc []byte
	var err error
	if name == "-" {
		doc, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), api.MaxPolicyBytes+1))
	} else {
		doc, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	if len(doc) > api.MaxPolicyBytes {
		return nil, fmt.Errorf("policy %s is larger than %d bytes", name, api.MaxPolicyBytes)
	}
	if !json.Valid(doc) {
		_, perr := policy.Parse(doc)
		return nil, fmt.Errorf("policy %s is not JSON: %v", name, perr)
	}
	return doc, nil
}

func printPolicy(g *globals, p api.Policy) error {
	switch {
	case p.Version == 0:
		fmt.Fprintf(g.out, "vnet %s has no policy: everything inside it is allowed\n", p.VNet)
		return nil
	case len(p.Policy) == 0 || string(p.Policy) == "null":
		fmt.Fprintf(g.out, "vnet %s has no policy: version %d removed it (%s, %s); everything inside it is allowed\n",
			p.VNet, p.Version, p.SetBy, p.SetAt.Format(time.RFC3339))
	default:
		fmt.Fprintf(g.out, "vnet %s: policy version %d, set by %s at %s\n", p.VNet, p.Version, p.SetBy, p.SetAt.Format(time.RFC3339))
		var buf bytes.Buffer
		if err := json.Indent(&buf, p.Policy, "", "  "); err != nil {
			buf.Reset()
			buf.Write(p.Policy)
		}
		fmt.Fprintln(g.out, buf.String())
		for _, s := range p.Skipped {
			fmt.Fprintf(g.out, "not applied by this coordinator's version: %s\n", s)
		}
	}
	fmt.Fprintln(g.out)
	return g.table("VERSION\tSET BY\tSET AT\tCHANGE", func(w *tabwriter.Writer) {
		for _, v := range p.History {
			change := "set"
			if v.Deleted {
				change = "removed"
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", v.Version, v.SetBy, v.SetAt.Format(time.RFC3339), change)
		}
	})
}

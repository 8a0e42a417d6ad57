package main

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/gateway"
	"github.com/meshd/meshd/pkg/token"
)

// adminClient builds a client from MESHD_ADMIN_TOKEN and --coordinator.
func (g *globals) adminClient() (*apiclient.Client, error) {
	raw := strings.TrimSpace(os.Getenv("MESHD_ADMIN_TOKEN"))
	if raw == "" {
		return nil, fmt.Errorf("MESHD_ADMIN_TOKEN is not set: export MESHD_ADMIN_TOKEN=$(cat DATA_DIR/admin.token) from a coordinator's data dir")
	}
	t, err := token.ParseKind(raw, token.KindAdmin)
	if err != nil {
		return nil, fmt.Errorf("MESHD_ADMIN_TOKEN: %w", err)
	}
	urls := t.URLs
	if g.coordinator != "" {
		u, err := url.Parse(g.coordinator)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("--coordinator %q must look like https://host:port", g.coordinator)
		}
		urls = append([]string{"https://" + u.Host}, urls...)
	}
	return apiclient.New(urls, t.Pin, raw), nil
}

func (g *globals) call(cmd *cobra.Command, method, path string, in, out any) error {
	c, err := g.adminClient()
	if err != nil {
		return err
	}
	return c.Do(cmd.Context(), method, path, in, out)
}

func (g *globals) table(header string, rows func(w *tabwriter.Writer)) error {
	w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	rows(w)
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func join(xs []string) string { return dash(strings.Join(xs, ",")) }

// withIPv6 shows an IPv4 value and, in a dual-stack vnet, its IPv6
// counterpart after a comma.
func withIPv6(v, v6 string) string {
	if v6 == "" {
		return v
	}
	return v + "," + v6
}

func newVNetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vnet", Short: "Manage virtual networks"}
	var overlays []string
	create := &cobra.Command{
		Use:   "create NAME --overlay CIDR [--overlay CIDR]",
		Short: "Create a vnet with its overlay address pool (IPv4, IPv6 or both)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(overlays) == 0 {
				return fmt.Errorf("--overlay CIDR is required (for example 100.112.0.0/16; add --overlay fd7a:115c:a1e0::/48 for IPv6)")
			}
			overlay := strings.Join(overlays, ",")
			if err := g.call(cmd, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: args[0], Overlay: overlay}, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vnet %s created with overlay %s\n", args[0], overlay)
			return nil
		},
	}
	create.Flags().StringSliceVar(&overlays, "overlay", nil, "overlay CIDR, disjoint from every other vnet's; one IPv4 and one IPv6 prefix (repeat the flag or separate with a comma) make a dual-stack vnet")
	list := &cobra.Command{
		Use:   "list",
		Short: "List vnets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []api.VNet
			if err := g.call(cmd, http.MethodGet, "/v1/vnets", nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("NAME\tOVERLAY\tPEERS\tCREATED", func(w *tabwriter.Writer) {
				for _, v := range out {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", v.Name, withIPv6(v.Overlay, v.Overlay6), v.Peers, v.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	addJSONFlag(list, g)
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an empty vnet",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.call(cmd, http.MethodDelete, "/v1/vnets/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vnet %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var req api.CreateTokenRequest
	var maxPriority int
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token; prints the token string, and its id on stderr",
		Long: `Create a join token. The token string goes to stdout alone (so
'meshd token create > gw.token' makes a token file); its id, what it allows and
how to revoke it go to stderr. --json prints both as one object:
{token, id, vnet, uses, expires}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkTokenFlags(cmd, &req, maxPriority); err != nil {
				return err
			}
			var resp api.CreateTokenResponse
			if err := g.call(cmd, http.MethodPost, "/v1/tokens", req, &resp); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, tokenCreated{CreateTokenResponse: resp, VNet: req.VNet, Uses: req.Uses})
			}
			fmt.Fprintln(g.out, resp.Token)
			uses := "single use"
			if req.Uses != 1 {
				uses = fmt.Sprintf("%d uses", req.Uses)
			}
			fmt.Fprintf(g.errOut, "join token %s for vnet %s: %s, expires %s (revoke: meshd token revoke %s)\n",
				resp.ID, req.VNet, uses, resp.Expires.Format(time.RFC3339), resp.ID)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&req.VNet, "vnet", api.DefaultVNet, "vnet the token joins")
	f.IntVar(&req.Uses, "uses", 1, "how many peers may join with it")
	f.StringVar(&req.TTL, "ttl", "24h", "how long it is valid (30m, 12h, 7d)")
	f.StringSliceVar(&req.Tags, "tag", nil, "tag given to peers that join with it (repeatable)")
	f.StringSliceVar(&req.AllowRoutes, "allow-routes", nil, "CIDRs the joining peer may announce (comma separated)")
	f.BoolVar(&req.Ephemeral, "ephemeral", false, "remove peers joined with it once they have been offline for the grace period")
	f.IntVar(&maxPriority, "max-priority", 0, "highest route priority a gateway joining with it may claim; a join announcing more is refused (default: no cap)")
	addJSONFlag(create, g)

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []api.Token
			if err := g.call(cmd, http.MethodGet, "/v1/tokens", nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("ID\tVNET\tUSES LEFT\tEXPIRES\tSTATE\tTAGS\tALLOW ROUTES\tMAX PRIORITY", func(w *tabwriter.Writer) {
				for _, t := range out {
					st := tokenState(t)
					if t.Ephemeral {
						st += ",ephemeral"
					}
					mp := "-"
					if t.MaxPriority != nil {
						mp = fmt.Sprint(*t.MaxPriority)
					}
					fmt.Fprintf(w, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.VNet, t.UsesLeft, t.Uses, t.Expires.Format(time.RFC3339), st, join(t.Tags), join(t.AllowRoutes), mp)
				}
			})
		},
	}
	addJSONFlag(list, g)
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token (one revoked already is an error: already_revoked)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.call(cmd, http.MethodPost, "/v1/tokens/"+url.PathEscape(args[0])+"/revoke", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "token %s revoked\n", args[0])
			return nil
		},
	}
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove the join tokens that can admit no one: used up, expired or revoked",
		Long: `Remove every join token that can admit no one any more: used up, expired or
revoked. A token used up in the last two minutes stays, for a join whose answer
was lost and is repeated. Peers that joined with a pruned token are not
affected. The leader prunes tokens dead for a day by itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.PruneTokensResponse
			if err := g.call(cmd, http.MethodPost, "/v1/tokens/prune", nil, &res); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, res)
			}
			if len(res.Pruned) == 0 {
				fmt.Fprintln(g.out, "no token to prune")
				return nil
			}
			return g.table("PRUNED\tVNET\tSTATE", func(w *tabwriter.Writer) {
				for _, t := range res.Pruned {
					fmt.Fprintf(w, "%s\t%s\t%s\n", t.ID, t.VNet, tokenState(t))
				}
			})
		},
	}
	addJSONFlag(prune, g)
	cmd.AddCommand(create, list, revoke, prune)
	return cmd
}

// tokenCreated is what token create --json prints.
type tokenCreated struct {
	api.CreateTokenResponse
	VNet string `json:"vnet"`
	Uses int    `json:"uses"`
}

// tokenState is a join token's state in one word: valid, revoked, expired
// or used.
func tokenState(t api.Token) string {
	switch {
	case t.Revoked:
		return "revoked"
	case t.Expired:
		return "expired"
	case t.UsesLeft == 0:
		return "used"
	}
	return "valid"
}

// checkTokenFlags refuses token create's values out of range, here rather
// than at the coordinator, and never changes one: --uses 0 is an error,
// not one use.
func checkTokenFlags(cmd *cobra.Command, req *api.CreateTokenRequest, maxPriority int) error {
	if req.Uses < 1 || req.Uses > state.MaxTokenUses {
		return fmt.Errorf("--uses %d: give from 1 to %d peers", req.Uses, state.MaxTokenUses)
	}
	if strings.TrimSpace(req.TTL) == "" {
		return fmt.Errorf("--ttl is empty: give a duration such as 30m, 12h or 7d")
	}
	ttl, err := coordinator.ParseTTL(req.TTL)
	if err != nil {
		return fmt.Errorf("--ttl %q: give a positive duration such as 30m, 12h or 7d", req.TTL)
	}
	if ttl > state.MaxTTL {
		return fmt.Errorf("--ttl %s: a token lives at most %dd", req.TTL, int(state.MaxTTL/(24*time.Hour)))
	}
	req.MaxPriority = nil
	if cmd.Flags().Changed("max-priority") {
		if maxPriority < 0 || maxPriority > state.MaxPriority {
			return fmt.Errorf("--max-priority %d: give a priority from 0 to %d", maxPriority, state.MaxPriority)
		}
		req.MaxPriority = &maxPriority
	}
	for _, r := range req.AllowRoutes {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil || p != p.Masked() {
			return fmt.Errorf("--allow-routes %q is not a network CIDR like 10.1.0.0/16", r)
		}
	}
	return nil
}

func newPeerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "peer", Short: "Manage peers"}
	var vnet string
	list := &cobra.Command{
		Use:   "list",
		Short: "List peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/peers"
			if vnet != "" {
				path += "?vnet=" + url.QueryEscape(vnet)
			}
			var out []api.Peer
			if err := g.call(cmd, http.MethodGet, path, nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("NAME\tVNET\tROLE\tOVERLAY IP\tONLINE\tGATEWAY\tROUTES\tENDPOINTS", func(w *tabwriter.Writer) {
				for _, p := range out {
					var rs []string
					for _, r := range p.Routes {
						rs = append(rs, fmt.Sprintf("%s(%d)", r.Prefix, r.Priority))
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\t%s\t%s\t%s\n", p.Name, p.VNet, p.Role, withIPv6(p.OverlayIP, p.OverlayIP6), p.Online, dash(p.GatewayState), join(rs), join(p.Endpoints))
				}
			})
		},
	}
	list.Flags().StringVar(&vnet, "vnet", "", "only this vnet")
	addJSONFlag(list, g)
	var rmVNet string
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a peer; it disappears from every other peer's configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.call(cmd, http.MethodDelete, "/v1/peers/"+url.PathEscape(rmVNet)+"/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "peer %s removed from vnet %s\n", args[0], rmVNet)
			return nil
		},
	}
	remove.Flags().StringVar(&rmVNet, "vnet", api.DefaultVNet, "vnet of the peer")
	cmd.AddCommand(list, remove, newPeerUpCmd(g))
	cmd.AddCommand(newPeerExportCmd(g))
	return cmd
}

// printGateways lists gateways with their priorities and states:
// "gwa1(200,active),gwa2(100,standby)".
func printGateways(gs []api.Gateway, active string) string {
	var parts []string
	for _, gw := range gs {
		parts = append(parts, fmt.Sprintf("%s(%d,%s)", gw.Name, gw.Priority, gatewayState(gw, active)))
	}
	return join(parts)
}

// gatewayState is a gateway's state word (package gateway); a coordinator
// that predates the words sends none, and the word follows from what it
// does send.
func gatewayState(gw api.Gateway, active string) string {
	switch {
	case gw.State != "":
		return gw.State
	case gw.Name == active:
		return string(gateway.Active)
	case !gw.Healthy:
		return string(gateway.Offline)
	case gw.Drained:
		return string(gateway.Drained)
	}
	return string(gateway.Standby)
}

// moreSpecific describes which prefix of an overlap is the more specific
// and who announces it: "B: gw2 (allowed exactly), gw3 (NOT allowed
// exactly)", marked UNAUTHORIZED when one took it on a wider allowance.
func moreSpecific(o api.Overlap) string {
	if o.MoreSpecific == "" {
		return "-"
	}
	var gws []string
	for _, gw := range o.SpecificGateways {
		how := "allowed exactly"
		if !gw.AllowedExactly {
			how = "NOT allowed exactly"
		}
		gws = append(gws, fmt.Sprintf("%s (%s)", gw.Name, how))
	}
	out := strings.ToUpper(o.MoreSpecific) + ": " + strings.Join(gws, ", ")
	if o.Unauthorized {
		out = "UNAUTHORIZED " + out
	}
	return out
}

func newRouteCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "route", Short: "Inspect subnet routes"}
	var vnet string
	list := &cobra.Command{
		Use:   "list",
		Short: "List announced routes with their gateways",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/routes"
			if vnet != "" {
				path += "?vnet=" + url.QueryEscape(vnet)
			}
			var out []api.RouteInfo
			if err := g.call(cmd, http.MethodGet, path, nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("VNET\tPREFIX\tACTIVE\tGATEWAYS", func(w *tabwriter.Writer) {
				for _, r := range out {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.VNet, r.Prefix, dash(r.ActiveGateway), printGateways(r.Gateways, r.ActiveGateway))
				}
			})
		},
	}
	list.Flags().StringVar(&vnet, "vnet", "", "only this vnet")
	addJSONFlag(list, g)
	var lvnet string
	var allVNets bool
	lookup := &cobra.Command{
		Use:   "lookup IP|CIDR [--vnet NAME | --all-vnets]",
		Short: "Show which gateway carries an address or a CIDR now, and why (longest prefix match)",
		Long: `Show which gateway carries an address or a CIDR now, and why. The answer is
the longest announced route that covers it, with its active gateway, that
gateway's state and reason, and every gateway of the route with its state
(active, standby, drained, unhealthy, offline). For a CIDR, the routes inside
it (more specific ones, each carrying part of it) are listed too.

It looks in one vnet (--vnet, default "default"); --all-vnets looks in every
vnet and answers for each that has a match (--json: an array of the objects
one vnet gives).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if allVNets && cmd.Flags().Changed("vnet") {
				return fmt.Errorf("--vnet and --all-vnets exclude each other")
			}
			// An address goes as ip=, which every coordinator version
			// takes; a CIDR as prefix=.
			q := url.Values{"prefix": {args[0]}}
			if _, err := netip.ParseAddr(args[0]); err == nil {
				q = url.Values{"ip": {args[0]}}
			}
			if allVNets {
				q.Set("all_vnets", "1")
				var res []api.LookupResult
				if err := g.call(cmd, http.MethodGet, "/v1/routes/lookup?"+q.Encode(), nil, &res); err != nil {
					return err
				}
				if g.json {
					return printJSON(g.out, res)
				}
				if len(res) == 0 {
					fmt.Fprintf(g.out, "%s: no route in any vnet\n", args[0])
				}
				for i, r := range res {
					if i > 0 {
						fmt.Fprintln(g.out)
					}
					printLookup(g.out, r)
				}
				return nil
			}
			q.Set("vnet", lvnet)
			var res api.LookupResult
			if err := g.call(cmd, http.MethodGet, "/v1/routes/lookup?"+q.Encode(), nil, &res); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, res)
			}
			printLookup(g.out, res)
			return nil
		},
	}
	lookup.Flags().StringVar(&lvnet, "vnet", api.DefaultVNet, "vnet to look in")
	lookup.Flags().BoolVar(&allVNets, "all-vnets", false, "look in every vnet; answer for each that has a match")
	addJSONFlag(lookup, g)
	overlaps := &cobra.Command{
		Use:   "overlaps",
		Short: "List overlapping announced CIDRs and the vnets they belong to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []api.Overlap
			if err := g.call(cmd, http.MethodGet, "/v1/routes/overlaps", nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("PREFIX A\tVNET A\tPREFIX B\tVNET B\tSCOPE\tMORE SPECIFIC", func(w *tabwriter.Writer) {
				for _, o := range out {
					scope := "separate vnets"
					if o.SameVNet {
						scope = "same vnet (longest prefix wins)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", o.A.Prefix, o.A.VNet, o.B.Prefix, o.B.VNet, scope, moreSpecific(o))
				}
			})
		},
	}
	addJSONFlag(overlaps, g)
	drainCmd := func(use, short string, drain bool) *cobra.Command {
		var vnet string
		c := &cobra.Command{
			Use:   use + " GATEWAY",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				path := "/v1/peers/" + url.PathEscape(vnet) + "/" + url.PathEscape(args[0]) + "/" + use
				if err := g.call(cmd, http.MethodPost, path, nil, nil); err != nil {
					return err
				}
				if drain {
					fmt.Fprintf(g.out, "gateway %s drained: its routes move to their standbys\n", args[0])
				} else {
					fmt.Fprintf(g.out, "gateway %s undrained: it carries its routes again (after the hold-down)\n", args[0])
				}
				return nil
			},
		}
		c.Flags().StringVar(&vnet, "vnet", api.DefaultVNet, "vnet of the gateway")
		return c
	}
	drain := drainCmd("drain", "Move every route of a gateway to its standby (before maintenance)", true)
	undrain := drainCmd("undrain", "Give a drained gateway its routes back", false)
	cmd.AddCommand(list, lookup, overlaps, drain, undrain)
	return cmd
}

func newGossipCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "Manage the peers' gossip encryption"}
	var vnet string
	rotate := &cobra.Command{
		Use:   "rotate-key",
		Short: "Give every vnet (or the one --vnet names) a new primary gossip key; the previous one stays accepted for the coordinators' grace period",
		Long: `Give every vnet a new primary gossip key of its own, or only the vnet --vnet
names. The previous key stays accepted for the coordinators' grace period
(--gossip-key-grace, 60s by default) so the vnet's peers switch without a gap,
and is then dropped. Removing a peer rotates its vnet's key by itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/gossip/rotate-key"
			if vnet != "" {
				path += "?vnet=" + url.QueryEscape(vnet)
			}
			var res api.RotateGossipKeyResponse
			if err := g.call(cmd, http.MethodPost, path, nil, &res); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, res)
			}
			if len(res.VNets) == 0 { // a coordinator that predates per-vnet keys
				fmt.Fprintln(g.out, "gossip key rotated")
				return nil
			}
			for _, v := range res.VNets {
				fmt.Fprintf(g.out, "vnet %s: gossip key rotated; the previous key stays accepted for %s\n", v.VNet, dash(res.Grace))
			}
			return nil
		},
	}
	rotate.Flags().StringVar(&vnet, "vnet", "", "rotate only this vnet's key (default: every vnet)")
	addJSONFlag(rotate, g)
	cmd.AddCommand(rotate)
	return cmd
}

func newAdminCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "admin", Short: "Manage admin credentials"}
	tok := &cobra.Command{
		Use:   "token",
		Short: "Manage named admin credentials: full or read-only, each revocable",
		Long: `Manage named admin credentials. A full one may do everything; a read-only one
(--read-only) may call only what changes nothing: cluster status, lists,
lookups, policy get and test. Each can be revoked without a new cluster key.
The bootstrap credential in DATA_DIR/admin.token is named "admin"; it can be
revoked once another full admin credential exists, and the last full one can
never be revoked.`,
	}
	var readOnly bool
	create := &cobra.Command{
		Use:   "create NAME [--read-only]",
		Short: "Create a named admin credential; prints it once (the cluster keeps only its hash)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp api.CreateAdminTokenResponse
			if err := g.call(cmd, http.MethodPost, "/v1/admin/tokens", api.CreateAdminTokenRequest{Name: args[0], ReadOnly: readOnly}, &resp); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, resp)
			}
			fmt.Fprintln(g.out, resp.Token)
			return nil
		},
	}
	create.Flags().BoolVar(&readOnly, "read-only", false, "may only read (GET calls): for dashboards and monitoring")
	addJSONFlag(create, g)
	list := &cobra.Command{
		Use:   "list",
		Short: "List admin credentials (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []api.AdminToken
			if err := g.call(cmd, http.MethodGet, "/v1/admin/tokens", nil, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, out)
			}
			return g.table("NAME\tID\tACCESS\tSTATE\tCREATED\tBY", func(w *tabwriter.Writer) {
				for _, a := range out {
					access := "full"
					if a.ReadOnly {
						access = "read-only"
					}
					st := "valid"
					if a.Revoked {
						st = "revoked"
						if a.RevokedBy != "" {
							st += " by " + a.RevokedBy
						}
					}
					created := "bootstrap"
					if a.CreatedAt != nil {
						created = a.CreatedAt.Format(time.RFC3339)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, a.ID, access, st, created, dash(a.CreatedBy))
				}
			})
		},
	}
	addJSONFlag(list, g)
	revoke := &cobra.Command{
		Use:   "revoke NAME|ID",
		Short: "Revoke an admin credential; every coordinator refuses it once this returns",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.call(cmd, http.MethodPost, "/v1/admin/tokens/"+url.PathEscape(args[0])+"/revoke", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "admin token %s revoked\n", args[0])
			return nil
		},
	}
	tok.AddCommand(create, list, revoke)
	cmd.AddCommand(tok)
	return cmd
}

// printLookup writes one vnet's lookup answer for people:
//
//	192.168.10.7 in vnet default: 192.168.10.0/24 via gwa1 (active: highest-priority healthy gateway)
//	  gwa1(200) active: highest-priority healthy gateway
//	  gwa2(100) standby: lower priority than gwa1(200)
func printLookup(w io.Writer, r api.LookupResult) {
	switch {
	case r.Prefix != nil:
		fmt.Fprintf(w, "%s in vnet %s: %s via %s (%s)\n", r.IP, r.VNet, *r.Prefix, dash(r.ActiveGateway), r.Why)
		printLookupGateways(w, "  ", r.Gateways, r.ActiveGateway)
		for _, c := range r.Covering[min(1, len(r.Covering)):] {
			fmt.Fprintf(w, "  also covered by %s via %s\n", c.Prefix, dash(c.ActiveGateway))
		}
	case len(r.Inside) > 0:
		fmt.Fprintf(w, "%s in vnet %s: no route covers all of it\n", r.IP, r.VNet)
	default:
		fmt.Fprintf(w, "%s in vnet %s: no route\n", r.IP, r.VNet)
	}
	if len(r.Inside) > 0 {
		fmt.Fprintf(w, "routes inside %s:\n", r.Network)
		for _, in := range r.Inside {
			fmt.Fprintf(w, "  %s via %s\n", in.Prefix, dash(in.ActiveGateway))
			printLookupGateways(w, "    ", in.Gateways, in.ActiveGateway)
		}
	}
}

func printLookupGateways(w io.Writer, indent string, gs []api.Gateway, active string) {
	for _, gw := range gs {
		line := fmt.Sprintf("%s%s(%d) %s", indent, gw.Name, gw.Priority, gatewayState(gw, active))
		if gw.Reason != "" {
			line += ": " + gw.Reason
		}
		fmt.Fprintln(w, line)
	}
}

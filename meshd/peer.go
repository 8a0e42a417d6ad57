package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/peer"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/meshdns"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/metrics"
)

func newPeerUpCmd(g *globals) *cobra.Command {
	var (
		cfg      peer.Config
		routes   []string
		priority int
		port     uint16
		logLevel string
		lanVIP   string
		lanCheck string
		tokFile  string
		metricsL string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the peer agent: join the mesh and keep this host in it (foreground)",
		Long: `Run the peer agent in the foreground. The first run joins with --token; the
identity (WireGuard key, overlay address, credential) is kept in --state-dir,
so later runs need no token and come back with the same key and address.
A gateway announces its site's subnets with --advertise-routes; gateways
forward without source NAT unless --snat is given.

Exit status 3: this peer was removed from the mesh or its credential was
refused; restarting will not help (join again with a new token).
Exit status 4: every coordinator refused this agent's protocol version; the
message says which side to upgrade (usually the coordinators, first).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lvl, ok := logging.ParseLevel(logLevel)
			if !ok {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			// 0 would mean "the default" further on: refuse it rather than
			// change it.
			if err := checkPositive(cmd, "mtu", "gossip-port", "liveness-port"); err != nil {
				return err
			}
			warnLooseKeyFiles(g.errOut,
				secretFile{"private key file", filepath.Join(cfg.StateDir, controlclient.KeyFile)},
				secretFile{"credential file", filepath.Join(cfg.StateDir, controlclient.IdentityFile)},
				secretFile{"join token file", tokFile},
			)
			if cfg.Token == "" {
				cfg.Token = strings.TrimSpace(os.Getenv("MESHD_TOKEN"))
			}
			if cfg.Token == "" && tokFile != "" {
				// Read once; a peer that has joined keeps its identity in the
				// state dir and no longer needs the file (it may be deleted).
				b, err := os.ReadFile(tokFile)
				if err != nil && !os.IsNotExist(err) {
					return fmt.Errorf("--token-file: %w", err)
				}
				cfg.Token = strings.TrimSpace(string(b))
			}
			for _, r := range routes {
				pfx, err := netip.ParsePrefix(strings.TrimSpace(r))
				if err != nil || pfx != pfx.Masked() {
					return fmt.Errorf("--advertise-routes %q is not a network CIDR like 10.1.0.0/24", r)
				}
				cfg.Routes = append(cfg.Routes, api.Route{Prefix: pfx.String(), Priority: priority})
			}
			if priority < 0 || priority > 1000 {
				return fmt.Errorf("--gateway-priority %d is outside 0..1000", priority)
			}
			cfg.ListenPort = port
			if lanVIP != "" {
				v, v6, err := parseLANVIPs(lanVIP)
				if err != nil {
					return err
				}
				cfg.LANVIP, cfg.LANVIP6 = v, v6
			}
			if lanCheck != "" {
				a, err := netip.ParseAddr(lanCheck)
				if err != nil || !a.Is4() {
					return fmt.Errorf("--lan-check %q is not an IPv4 address", lanCheck)
				}
				cfg.LANCheck = a
			}
			// Everything that can be checked here is, before a join uses
			// the token or registers a peer.
			if ps := peer.Preflight(cfg, cmd.Flags().Changed("name"), peer.OSSystem()); len(ps) > 0 {
				return preflightError(ps)
			}
			cfg.Logger = logging.New(g.errOut, lvl)
			// The metrics port is taken before the join too: a port in
			// use fails the run before it costs a token.
			if metricsL != "" {
				ln, err := metrics.Listen(metricsL)
				if err != nil {
					return fmt.Errorf("%w (nothing was sent to the coordinators)", err)
				}
				cfg.MetricsListener = ln
			}
			a, err := peer.New(cfg)
			if err != nil {
				if cfg.MetricsListener != nil {
					cfg.MetricsListener.Close()
				}
				return err
			}
			err = a.Run(cmd.Context())
			if errors.Is(err, controlclient.ErrRemoved) || errors.Is(err, controlclient.ErrCredentialRefused) {
				// Restarting cannot help: a distinct status lets a service
				// manager stop trying (systemd RestartPreventExitStatus).
				fmt.Fprintf(g.errOut, "meshd: %v\n", err)
				return exitError{code: exitRemoved}
			}
			if errors.Is(err, controlclient.ErrProtocol) {
				// The coordinator's own words say which side to upgrade.
				fmt.Fprintf(g.errOut, "meshd: %v\n", err)
				return exitError{code: exitProtocol}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Token, "token", "", "join token (first run only; env MESHD_TOKEN)")
	f.StringVar(&tokFile, "token-file", "", "read the join token from this file (first run only; the file may be removed after the join)")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/meshd", "directory for this peer's key, identity and status socket")
	f.StringVar(&cfg.Name, "name", "", "peer name (default: the host name)")
	f.StringVar(&cfg.Interface, "interface", peer.DefaultInterface, "WireGuard interface name")
	f.StringSliceVar(&routes, "advertise-routes", nil, "subnets this gateway announces (comma separated CIDRs)")
	f.IntVar(&priority, "gateway-priority", 100, "priority of this gateway's routes; the highest healthy one carries a route")
	f.BoolVar(&cfg.SNAT, "snat", false, "masquerade mesh traffic leaving this gateway (LAN hosts then see the gateway's address)")
	f.StringVar(&cfg.WGMode, "wg-mode", engine.ModeAuto, "WireGuard engine: auto (userspace: hole punching and the relay), userspace, or kernel (the kernel module; peers only at their announced endpoints, no relay)")
	f.Uint16Var(&port, "listen-port", 0, "WireGuard UDP port (default: 51820 on a gateway; on a client a random port, kept in the state dir, so clients behind one NAT keep their own mappings)")
	f.IntVar(&cfg.MTU, "mtu", engine.DefaultMTU, "MTU of the WireGuard interface")
	f.StringVar(&lanVIP, "lan-vip", "", "virtual IP/LEN the active gateway of an HA pair owns on --lan-dev (LAN hosts route through it); an IPv4 and an IPv6 one, comma-separated, on a dual-stack LAN")
	f.StringVar(&cfg.LANDev, "lan-dev", "", "LAN interface of this gateway for --lan-vip and --lan-check (default: the interface with an address in the VIP's subnet)")
	f.StringVar(&lanCheck, "lan-check", "", "LAN address this gateway must reach (ARP) to carry its routes")
	f.DurationVar(&cfg.HoldDown, "hold-down", health.DefaultHoldDown, "how long a recovered gateway must stay healthy before it takes its routes back")
	f.IntVar(&cfg.GossipPort, "gossip-port", health.DefaultPort, "health gossip port on the overlay address (UDP and TCP, inside the tunnels)")
	f.IntVar(&cfg.LivenessPort, "liveness-port", liveness.DefaultPort, "gateway health probe port on the overlay address (UDP, inside the tunnels); every peer of a vnet must use the same")
	f.BoolVar(&cfg.DNS.Enabled, "dns", true, "answer DNS for NAME.VNET.SUFFIX on the overlay address (port 53) and point the host's resolver at it for SUFFIX (systemd-resolved)")
	f.StringVar(&cfg.DNS.Suffix, "dns-suffix", meshdns.DefaultSuffix, "DNS suffix of the mesh's names: NAME.VNET.SUFFIX")
	f.StringVar(&metricsL, "metrics-listen", "", "HOST:PORT where Prometheus metrics are served at /metrics in plain HTTP (default: off; no credential is asked, so bind it to an address only the scraper reaches)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// preflightError lists what peer up found wrong before it sent anything,
// one problem a line.
func preflightError(ps []*peer.Problem) error {
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Msg
	}
	if len(msgs) == 1 {
		return fmt.Errorf("%s (nothing was sent to the coordinators)", msgs[0])
	}
	return fmt.Errorf("%d problems; nothing was sent to the coordinators:\n  %s", len(msgs), strings.Join(msgs, "\n  "))
}

// exitRemoved is peer up's exit status when the peer was removed or its
// credential refused.
const exitRemoved = 3

// exitProtocol is peer up's exit status when the coordinators refuse the
// agent's protocol version: an upgrade (of the coordinators, or of an agent
// too old) is needed first. A service manager may keep restarting it; it
// comes up once the coordinators speak its version.
const exitProtocol = 4

func newStatusCmd(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local peer: its peers, endpoints, handshakes and active gateways",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := peer.QueryStatus(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, st)
			}
			fmt.Fprintf(g.out, "%s  vnet %s  overlay %s  interface %s  role %s\n", st.Self.Name, st.Self.VNet, st.Self.OverlayIP, st.Interface, st.Self.Role)
			coord := st.Coordinator
			if coord == "" {
				coord = "none (running on the last network map)"
			}
			fmt.Fprintf(g.out, "coordinator %s  map index %d  listen port %d\nendpoints %s  relay %s\n\n", coord, st.MapIndex, st.ListenPort, join(st.Endpoints), dash(st.Relay))
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tOVERLAY IP\tPATH\tENDPOINT\tRTT\tLAST HANDSHAKE\tONLINE\tRX\tTX\tROUTES")
			for _, p := range st.Peers {
				hs := "never"
				if p.LastHandshakeAgeSeconds != nil {
					hs = ago(time.Duration(*p.LastHandshakeAgeSeconds) * time.Second)
				}
				rtt := "-"
				if p.RTTMs > 0 {
					rtt = fmt.Sprintf("%.1fms", p.RTTMs)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%t\t%d\t%d\t%s\n", p.Name, p.OverlayIP, dash(p.Path), dash(p.Endpoint), rtt, hs, p.Online, p.RxBytes, p.TxBytes, join(p.Routes))
			}
			if len(st.Routes) > 0 {
				fmt.Fprintln(w, "\nROUTE\tACTIVE GATEWAY\tWHY")
				for _, r := range st.Routes {
					local := ""
					if r.Local {
						local = " (announced here)"
					}
					fmt.Fprintf(w, "%s\t%s%s\t%s\n", r.Prefix, r.ActiveGateway, local, r.Why)
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", "/var/lib/meshd", "state dir of the peer to ask")
	addJSONFlag(cmd, g)
	return cmd
}

func newPingCmd(g *globals) *cobra.Command {
	var (
		dir   string
		count int
		until bool
	)
	cmd := &cobra.Command{
		Use:   "ping PEER",
		Short: "Probe a peer (name or overlay IP) on every path; say which answered (direct or relay) and the round-trip time",
		Long: `Probe a peer through the mesh on every path at once (its direct
candidates and its relayed address) and print the first that answers:
"direct" with the peer's address, or "relay" with its relayed address.
--count repeats; --until-direct stops at the first direct answer and
fails if none comes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return fmt.Errorf("--count %d: must be 1 or more", count)
			}
			var results []*api.PingResult
			for i := range count {
				r, err := peer.QueryPing(cmd.Context(), dir, args[0])
				if err != nil {
					return err
				}
				results = append(results, r)
				if !g.json {
					fmt.Fprintf(g.out, "pong from %s (%s) via %s %s in %.2fms\n", r.Peer, r.OverlayIP, r.Path, r.Endpoint, r.RTTMs)
				}
				if until && r.Path == api.PathDirect {
					break
				}
				if i < count-1 {
					select {
					case <-cmd.Context().Done():
						return cmd.Context().Err()
					case <-time.After(time.Second):
					}
				}
			}
			if g.json {
				if err := printJSON(g.out, results[len(results)-1]); err != nil {
					return err
				}
			}
			if until && results[len(results)-1].Path != api.PathDirect {
				return fmt.Errorf("no direct path to %s after %d probes", args[0], len(results))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", "/var/lib/meshd", "state dir of the local peer")
	cmd.Flags().IntVarP(&count, "count", "c", 1, "number of probes, one a second")
	cmd.Flags().BoolVar(&until, "until-direct", false, "stop at the first direct answer; fail if none comes within --count probes")
	addJSONFlag(cmd, g)
	return cmd
}

func newNetcheckCmd(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "netcheck",
		Short: "Say what the local network allows: UDP, the reflexive address, whether the NAT maps per destination, relay latencies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := peer.QueryNetcheck(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, r)
			}
			fmt.Fprintf(g.out, "UDP: %t (listen port %d)\n", r.UDP, r.ListenPort)
			var srvs []string
			for s := range r.Reflexive {
				srvs = append(srvs, s)
			}
			slices.Sort(srvs)
			for _, s := range srvs {
				fmt.Fprintf(g.out, "  seen by %s as %s\n", s, r.Reflexive[s])
			}
			fmt.Fprintf(g.out, "mapping varies by destination: %t", r.MappingVariesByDest)
			if r.MappingVariesByDest {
				fmt.Fprint(g.out, " (symmetric NAT: peers behind filtering NATs are reached through the relay)")
			}
			fmt.Fprintf(g.out, "\nrelay: %s on %s\n", dash(r.Relay), dash(r.RelayServer))
			var urls []string
			for u := range r.RelayLatencyMs {
				urls = append(urls, u)
			}
			slices.Sort(urls)
			for _, u := range urls {
				if ms := r.RelayLatencyMs[u]; ms < 0 {
					fmt.Fprintf(g.out, "  %s: no answer\n", u)
				} else {
					fmt.Fprintf(g.out, "  %s: %.2fms\n", u, ms)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", "/var/lib/meshd", "state dir of the local peer")
	addJSONFlag(cmd, g)
	return cmd
}

// ago says how long ago something happened, in its largest whole unit:
// "12s ago", "3m ago", "5h ago", "2d ago".
func ago(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

// parseLANVIPs parses --lan-vip: one virtual IP/LEN, or an IPv4 and an
// IPv6 one separated by a comma. The first is returned as v, an IPv6 one
// given beside an IPv4 one as v6.
func parseLANVIPs(s string) (v, v6 netip.Prefix, err error) {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return v, v6, fmt.Errorf("--lan-vip %q: give at most one IPv4 and one IPv6 address", s)
	}
	var got []netip.Prefix
	for _, part := range parts {
		p, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil || p.Addr().Is4In6() || p.Addr().Zone() != "" || p.Bits() == p.Addr().BitLen() {
			return v, v6, fmt.Errorf("--lan-vip %q is not an address with its LAN prefix length, like 192.168.10.1/24 or fd00:10::1/64", part)
		}
		got = append(got, p)
	}
	if len(got) == 2 {
		if got[0].Addr().Is4() == got[1].Addr().Is4() {
			return v, v6, fmt.Errorf("--lan-vip %q: give one IPv4 and one IPv6 address", s)
		}
		if got[0].Addr().Is6() {
			got[0], got[1] = got[1], got[0]
		}
		return got[0], got[1], nil
	}
	return got[0], v6, nil
}

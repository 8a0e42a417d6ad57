package meshlab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// StartNAT builds the NAT topology of specs (netlab.BuildNAT) and starts
// its coordinators c1..c3, waiting until the cluster answers. It starts no
// peer: create a token with Token and start each with StartPeer. On error
// it tears down what it started.
func StartNAT(ctx context.Context, o Options, specs []netlab.NATHostSpec) (*Lab, error) {
	return startBuilt(ctx, o, func(l *Lab, nl *netlab.Lab) (err error) {
		if l.NAT, err = netlab.BuildNAT(nl, specs); err != nil {
			return err
		}
		for _, c := range l.NAT.Coordinators {
			l.Coordinators = append(l.Coordinators, netlab.Node{Name: c.Name, WAN: c.Addr})
		}
		return nil
	})
}

// StartFirewall6 builds the IPv6 firewall topology of specs
// (netlab.BuildFirewall6), starts its coordinators c1..c3 on their IPv6
// addresses and creates the dual-stack vnet DualStackVNet, which Token's
// tokens then join. It starts no peer. On error it tears down what it
// started.
func StartFirewall6(ctx context.Context, o Options, specs []netlab.Firewall6HostSpec) (*Lab, error) {
	l, err := startBuilt(ctx, o, func(l *Lab, nl *netlab.Lab) (err error) {
		if l.Firewall6, err = netlab.BuildFirewall6(nl, specs); err != nil {
			return err
		}
		for _, c := range l.Firewall6.Coordinators {
			l.Coordinators = append(l.Coordinators, netlab.Node{Name: c.Name, WAN6: c.Addr})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := l.createDualStackVNet(ctx, 30*time.Second); err != nil {
		l.Close()
		return nil, err
	}
	l.VNet = DualStackVNet
	return l, nil
}

// startBuilt makes a lab whose namespaces build lays out (it also names
// the coordinators in l.Coordinators) and starts its coordinators. On
// error it tears down what it started.
func startBuilt(ctx context.Context, o Options, build func(l *Lab, nl *netlab.Lab) error) (_ *Lab, err error) {
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	if o.IfPrefix == "" {
		o.IfPrefix = "wg-"
	}
	nl, err := netlab.New(o.Prefix)
	if err != nil {
		return nil, err
	}
	l := newLab(o, nl, nil)
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if err := build(l, nl); err != nil {
		return nil, err
	}
	if err := l.startCoordinators(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// Token creates a single-use join token for the lab's vnet (VNet, or
// the default vnet).
func (l *Lab) Token() (string, error) {
	args := []string{"token", "create"}
	if l.VNet != "" {
		args = append(args, "--vnet", l.VNet)
	}
	out, err := l.Admin(args...)
	return strings.TrimSpace(out), err
}

// Status is a peer's `meshd status --json`. The status socket is a file
// in the state dir, so this runs outside the peer's namespace.
func (l *Lab) Status(peer string) (*api.LocalStatus, error) {
	out, err := harness.Run(l.Opts.Bin, "status", "--json", "--state-dir", l.StateDir(peer))
	if err != nil {
		return nil, err
	}
	var st api.LocalStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("%s: status --json: %w", peer, err)
	}
	return &st, nil
}

// PeerPath is how one peer's status shows another.
func PeerPath(st *api.LocalStatus, other string) (path, endpoint string) {
	for _, p := range st.Peers {
		if p.Name == other {
			return p.Path, p.Endpoint
		}
	}
	return "", ""
}

// EchoPort is the UDP port of StartEcho's servers.
const EchoPort = 7002

// StartEcho answers every UDP datagram to port EchoPort of an IPv4
// address in namespace ns with its payload, until the returned closer is
// closed.
func (l *Lab) StartEcho(ns string) (io.Closer, error) {
	return l.Net.UDPEcho(ns, fmt.Sprintf(":%d", EchoPort))
}

// StartEcho6 is StartEcho on the IPv6 addresses.
func (l *Lab) StartEcho6(ns string) (io.Closer, error) {
	return l.Net.UDPEchoNet(ns, "udp6", fmt.Sprintf(":%d", EchoPort))
}

// FirstReply sends a datagram from namespace ns to the echo server (see
// StartEcho, StartEcho6) on ip every interval until the first answer comes back, and
// returns when it did; it gives up at deadline. The socket is made before
// the first send and sends to no address in particular, so datagrams go
// wherever the namespace's routes say at that moment: before a peer is up
// they go nowhere.
func (l *Lab) FirstReply(ns, ip string, every time.Duration, deadline time.Time) (time.Time, error) {
	dst, err := netip.ParseAddr(ip)
	if err != nil {
		return time.Time{}, err
	}
	to := netip.AddrPortFrom(dst, EchoPort)
	network := "udp4"
	if dst.Is6() {
		network = "udp6"
	}
	var c *net.UDPConn
	err = l.Net.InNS(ns, func() error {
		var err error
		c, err = net.ListenUDP(network, nil)
		return err
	})
	if err != nil {
		return time.Time{}, err
	}
	defer c.Close()
	token := fmt.Appendf(nil, "%s>%s %d", ns, ip, time.Now().UnixNano())
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		c.WriteToUDPAddrPort(token, to) // fails while there is no route
		rd := time.Now().Add(every)
		if rd.After(deadline) {
			rd = deadline
		}
		c.SetReadDeadline(rd)
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // the interval is over: send again
			}
			if string(buf[:n]) == string(token) {
				return time.Now(), nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%s got no UDP echo from %s within the deadline", ns, to)
}

// PairResult is what CheckNATMatrix found for one pair of hosts.
type PairResult struct {
	A, B string
	// WantDirect: the topology says the pair can get a direct path
	// (netlab's DirectPath of the NAT or IPv6 firewall topology);
	// otherwise it must be relayed.
	WantDirect bool
	// ReachedAB: A got a UDP echo from B's overlay address; ReachedBA
	// the other way.
	ReachedAB, ReachedBA bool
	// PathA and EndpointA are B as A's status shows it; PathB and
	// EndpointB are A as B's shows it.
	PathA, EndpointA, PathB, EndpointB string
	// DirectAfter is how long after the check's reference time both
	// sides first showed direct; 0 if they never did.
	DirectAfter time.Duration
}

// Want is the path both sides must show.
func (p PairResult) Want() string {
	if p.WantDirect {
		return api.PathDirect
	}
	return api.PathRelay
}

// OK reports whether the pair reached each other both ways over the path
// it must have, on both sides.
func (p PairResult) OK() bool {
	return p.ReachedAB && p.ReachedBA && p.PathA == p.Want() && p.PathB == p.Want()
}

func (p PairResult) String() string {
	show := func(path, ep string) string {
		if path == "" {
			path = "no path"
		}
		if ep != "" {
			path += " " + ep
		}
		return path
	}
	s := fmt.Sprintf("%s-%s: want %s; %s shows %s, %s shows %s", p.A, p.B, p.Want(),
		p.A, show(p.PathA, p.EndpointA), p.B, show(p.PathB, p.EndpointB))
	if !p.ReachedAB {
		s += fmt.Sprintf("; %s gets no answer from %s", p.A, p.B)
	}
	if !p.ReachedBA {
		s += fmt.Sprintf("; %s gets no answer from %s", p.B, p.A)
	}
	return s
}

// CheckNATMatrix checks every pair of hosts (peers of the NAT topology
// that are up): each sends UDP datagrams to an echo server on the other's
// overlay address every 100 ms until one comes back or deadline passes,
// and both statuses must show the path the topology wants, polled until
// every pair is right or deadline passes. DirectAfter counts from since.
// It fails only when a status cannot be read or an echo server not
// started.
func (l *Lab) CheckNATMatrix(hosts []string, since, deadline time.Time) ([]PairResult, error) {
	return l.checkPairs(hosts, false, l.NAT.DirectPath, since, deadline)
}

// CheckFirewall6Matrix is CheckNATMatrix for the peers of an IPv6
// firewall topology (StartFirewall6), over their IPv6 overlay addresses:
// the path each pair must have is netlab's Firewall6Topology.DirectPath.
func (l *Lab) CheckFirewall6Matrix(hosts []string, since, deadline time.Time) ([]PairResult, error) {
	return l.checkPairs(hosts, true, l.Firewall6.DirectPath, since, deadline)
}

// checkPairs is CheckNATMatrix over the overlay addresses of one family
// (IPv6 when v6), with direct telling which pairs must be direct.
func (l *Lab) checkPairs(hosts []string, v6 bool, direct func(a, b string) bool, since, deadline time.Time) ([]PairResult, error) {
	ip := map[string]string{}
	for _, h := range hosts {
		st, err := l.Status(h)
		if err != nil {
			return nil, err
		}
		ip[h] = st.Self.OverlayIP
		start := l.StartEcho
		if v6 {
			ip[h], start = st.Self.OverlayIP6, l.StartEcho6
		}
		echo, err := start(h)
		if err != nil {
			return nil, err
		}
		defer echo.Close()
	}
	var res []*PairResult
	for i, a := range hosts {
		for _, b := range hosts[i+1:] {
			res = append(res, &PairResult{A: a, B: b, WantDirect: direct(a, b)})
		}
	}

	// Every ordered pair probes until it gets an answer or the deadline
	// passes.
	var mu sync.Mutex // guards the Reached fields
	var wg sync.WaitGroup
	for _, p := range res {
		for _, dir := range []struct {
			from, to string
			ok       *bool
		}{{p.A, p.B, &p.ReachedAB}, {p.B, p.A, &p.ReachedBA}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := l.FirstReply(dir.from, ip[dir.to], 100*time.Millisecond, deadline); err == nil {
					mu.Lock()
					*dir.ok = true
					mu.Unlock()
				}
			}()
		}
	}

	// Meanwhile the statuses are read until every pair shows what it
	// must (and has been reached both ways).
	for {
		sts, err := l.statuses(hosts)
		if err != nil {
			wg.Wait()
			return nil, err
		}
		now := time.Now()
		mu.Lock()
		done := true
		for _, p := range res {
			p.PathA, p.EndpointA = PeerPath(sts[p.A], p.B)
			p.PathB, p.EndpointB = PeerPath(sts[p.B], p.A)
			if p.DirectAfter == 0 && p.PathA == api.PathDirect && p.PathB == api.PathDirect {
				p.DirectAfter = now.Sub(since)
			}
			done = done && p.OK()
		}
		mu.Unlock()
		if done || now.After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling interval, bounded by the deadline
	}
	wg.Wait()
	out := make([]PairResult, len(res))
	for i, p := range res {
		out[i] = *p
	}
	return out, nil
}

// statuses reads the statuses of hosts, all at once.
func (l *Lab) statuses(hosts []string) (map[string]*api.LocalStatus, error) {
	sts := make([]*api.LocalStatus, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts[i], errs[i] = l.Status(h)
		}()
	}
	wg.Wait()
	out := map[string]*api.LocalStatus{}
	for i, h := range hosts {
		if errs[i] != nil {
			return nil, errs[i]
		}
		out[h] = sts[i]
	}
	return out, nil
}

// MatrixSummary counts a CheckNATMatrix result: ordered pairs that reached
// each other, pairs direct on both sides, pairs that must be direct, and
// pairs that are not as they must be.
type MatrixSummary struct {
	Reached, Ordered   int
	Direct, WantDirect int
	Pairs              int
	Wrong              []PairResult
}

// Summarize counts res.
func Summarize(res []PairResult) MatrixSummary {
	var s MatrixSummary
	for _, p := range res {
		s.Pairs++
		s.Ordered += 2
		if p.ReachedAB {
			s.Reached++
		}
		if p.ReachedBA {
			s.Reached++
		}
		if p.PathA == api.PathDirect && p.PathB == api.PathDirect {
			s.Direct++
		}
		if p.WantDirect {
			s.WantDirect++
		}
		if !p.OK() {
			s.Wrong = append(s.Wrong, p)
		}
	}
	return s
}

// MatrixTable renders res as a table, one pair a line.
func MatrixTable(res []PairResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-7s %-8s %-6s %-28s %-28s\n", "PAIR", "WANT", "REACHED", "OK", "A SHOWS B", "B SHOWS A")
	for _, p := range res {
		reached := map[[2]bool]string{{true, true}: "both", {true, false}: "a->b", {false, true}: "b->a", {false, false}: "none"}[[2]bool{p.ReachedAB, p.ReachedBA}]
		ok := "ok"
		if !p.OK() {
			ok = "WRONG"
		}
		fmt.Fprintf(&b, "%-12s %-7s %-8s %-6s %-28s %-28s\n", p.A+"-"+p.B, p.Want(), reached, ok,
			strings.TrimSpace(p.PathA+" "+p.EndpointA), strings.TrimSpace(p.PathB+" "+p.EndpointB))
	}
	s := Summarize(res)
	fmt.Fprintf(&b, "reached %d/%d ordered pairs; direct on both sides %d/%d pairs (%.0f%%; %d must be direct); wrong %d",
		s.Reached, s.Ordered, s.Direct, s.Pairs, 100*float64(s.Direct)/float64(max(s.Pairs, 1)), s.WantDirect, len(s.Wrong))
	return b.String()
}

// The table of BlockUDP's rules in a router's namespace.
const cutTable = "meshlab_cut"

// BlockUDP makes NAT router drop every UDP packet it would forward to or
// from the address other, and deletes its UDP conntrack entries, so
// mappings and the flows through them start again (as after a NAT
// reboot). UnblockUDP lifts it.
func (l *Lab) BlockUDP(router, other string) error {
	rules := fmt.Sprintf(`table inet %s {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip saddr %s meta l4proto udp counter drop
		ip daddr %s meta l4proto udp counter drop
	}
}
`, cutTable, other, other)
	if _, err := l.Net.ExecStdin(router, rules, "nft", "-f", "-"); err != nil {
		return err
	}
	return l.FlushUDPConntrack(router)
}

// UnblockUDP removes what BlockUDP added to router.
func (l *Lab) UnblockUDP(router string) error {
	_, err := l.Net.Exec(router, "nft", "delete", "table", "inet", cutTable)
	return err
}

// FlushUDPConntrack deletes every UDP conntrack entry in namespace ns
// (conntrack(8)).
func (l *Lab) FlushUDPConntrack(ns string) error {
	out, err := l.Net.Exec(ns, "conntrack", "-D", "-p", "udp")
	if err != nil && !strings.Contains(err.Error(), "0 flow entries") {
		return fmt.Errorf("flush conntrack in %s: %w (%s)", ns, err, out)
	}
	return nil
}

package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/policy"
)

func TestSetElems(t *testing.T) {
	r := func(a, b string) addrRange {
		return addrRange{netip.MustParseAddr(a), netip.MustParseAddr(b)}
	}
	type elem struct {
		key string
		end bool
	}
	decode := func(es []nftablesElem) []elem {
		var out []elem
		for _, e := range es {
			out = append(out, elem{fmt.Sprintf("%x", e.Key), e.IntervalEnd})
		}
		return out
	}
	tests := []struct {
		name string
		got  []nftablesElem
		want []elem
	}{
		{"addresses: a zero end opens the set", addrElems([]addrRange{r("10.0.0.0", "10.0.1.255"), r("10.0.3.1", "10.0.3.1")}),
			[]elem{{"00000000", true}, {"0a000000", false}, {"0a000200", true}, {"0a000301", false}, {"0a000302", true}}},
		{"addresses from zero to the last", addrElems([]addrRange{r("0.0.0.0", "0.255.255.255"), r("255.0.0.0", "255.255.255.255")}),
			[]elem{{"00000000", false}, {"01000000", true}, {"ff000000", false}}},
		{"IPv6", addrElems([]addrRange{r("fd00::", "fd00::ffff")}),
			[]elem{{"00000000000000000000000000000000", true}, {"fd000000000000000000000000000000", false}, {"fd000000000000000000000000010000", true}}},
		{"ports", portElems(policy.PortSet{{First: 22, Last: 22}, {First: 8000, Last: 8080}}),
			[]elem{{"0000", true}, {"0016", false}, {"0017", true}, {"1f40", false}, {"1f91", true}}},
		{"ports from zero to the last", portElems(policy.PortSet{{First: 0, Last: 10}, {First: 1024, Last: 65535}}),
			[]elem{{"0000", false}, {"000b", true}, {"0400", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decode(tt.got); !slices.Equal(got, tt.want) {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestPolicyRulesExprs(t *testing.T) {
	if got := policyRules(nil, 7); len(got) != 1 {
		t.Errorf("no policy: got %d rules; want 1 that passes everything", len(got))
	}
	head := policyRules([]nftRule{}, 7)
	if len(head) != 4 {
		t.Fatalf("policy chain: got %d rules; want reply, generation, jump, drop", len(head))
	}
	// The generation sits in the top byte of the connection mark.
	if cmp, ok := head[1].Exprs[2].(*expr.Cmp); !ok || !bytes.Equal(cmp.Data, native32(7<<24)) {
		t.Errorf("generation match: got %#v; want ct mark & 0xff000000 == 0x07000000", head[1].Exprs[2])
	}
	if v, ok := head[2].Exprs[0].(*expr.Verdict); !ok || v.Kind != expr.VerdictJump || v.Chain != "rules_7" {
		t.Errorf("policy chain: got %#v; want jump rules_7", head[2].Exprs[0])
	}
	rules := nftRules([]policy.AddrRule{
		{Src: pfx("10.0.0.0/24", "10.0.2.0/24", "fd00::/64"), Dst: pfx("100.96.0.1/32", "fd7a::1/128"), Proto: policy.ProtoTCP | policy.ProtoUDP,
			Ports: policy.PortSet{{First: 22, Last: 22}, {First: 443, Last: 443}}},
		{Rule: 1, Src: pfx("10.0.0.7/32"), Dst: pfx("100.96.0.1/32"), Proto: policy.ProtoICMP, Ports: policy.AllPorts},
	})
	got := acceptRules(rules, 7)
	if len(got) != len(rules) {
		t.Fatalf("got %d rules; want %d", len(got), len(rules))
	}
	ids := map[uint32]bool{}
	for i, r := range got {
		last := r.Exprs[len(r.Exprs)-1]
		if v, ok := last.(*expr.Verdict); !ok || v.Kind != expr.VerdictGoto || v.Chain != "admit_7" {
			t.Errorf("rule %d (%s): ends with %#v; want goto admit_7", i, rules[i], last)
		}
		lookups := 0
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Lookup); ok {
				lookups++
				if ids[l.SetID] {
					t.Errorf("rule %d: set id %d used twice", i, l.SetID)
				}
				ids[l.SetID] = true
			}
		}
		if lookups != len(r.sets) {
			t.Errorf("rule %d (%s): %d lookups, %d sets", i, rules[i], lookups, len(r.sets))
		}
	}
	// IPv4 tcp/udp: source set, proto set, port set; IPv6: proto set and
	// port set (one source prefix is a set of one range); ICMP: none.
	for i, want := range []int{3, 3, 0} {
		if n := len(got[i].sets); n != want {
			t.Errorf("rule %d (%s): %d sets; want %d", i, rules[i], n, want)
		}
	}
	mark, ok := admitRules(7)[0].Exprs[1].(*expr.Bitwise)
	if !ok || !bytes.Equal(mark.Mask, native32(0x00ffffff)) || !bytes.Equal(mark.Xor, native32(0x07000000)) {
		t.Errorf("admit: got %#v; want ct mark & 0x00ffffff | 0x07000000", admitRules(7)[0].Exprs[1])
	}
}

// TestNFTFilterNetns runs the filter between two network namespaces: A
// (10.77.0.1, fd77::1) reaches B (10.77.0.2, fd77::2) over a veth pair,
// and B filters what arrives on its end, veb, as the kernel engine does on
// its WireGuard interface. B serves TCP echo on 22 and 443, A on 8080.
func TestNFTFilterNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	lab, err := netlab.New(labPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, ns := range []string{"a", "b"} {
		if err := lab.AddNS(ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := lab.Link("a", "vea", "10.77.0.1/24", "b", "veb", "10.77.0.2/24"); err != nil {
		t.Fatal(err)
	}
	// IPv6 with static neighbours: the policy drops neighbour discovery
	// as it drops any other ICMPv6 but echo requests (a WireGuard
	// interface has none).
	macA, macB := linkMAC(t, lab, "a", "vea"), linkMAC(t, lab, "b", "veb")
	for _, cmd := range [][]string{
		{"a", "ip", "addr", "add", "fd77::1/64", "dev", "vea", "nodad"},
		{"b", "ip", "addr", "add", "fd77::2/64", "dev", "veb", "nodad"},
		{"a", "ip", "neigh", "replace", "fd77::2", "lladdr", macB, "dev", "vea", "nud", "permanent"},
		{"b", "ip", "neigh", "replace", "fd77::1", "lladdr", macA, "dev", "veb", "nud", "permanent"},
	} {
		if out, err := lab.Exec(cmd[0], cmd[1:]...); err != nil {
			t.Fatalf("%v: %v %s", cmd, err, out)
		}
	}
	srv := newEchoServers(t, lab)
	srv.listen("b", ":22")
	srv.listen("b", ":443")
	srv.listen("a", ":8080")

	var f *nftFilter
	if err := lab.InNS("b", func() (err error) {
		f, err = newNFTFilter("veb", slog.New(slog.DiscardHandler))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.close() })
	if tableThere(t, f) {
		t.Fatalf("table inet %s there before the first set", f.table.Name)
	}

	set := func(rules []policy.AddrRule) {
		t.Helper()
		if err := f.set(rules); err != nil {
			t.Fatal(err)
		}
	}
	const (
		b4, b6   = "10.77.0.2", "[fd77::2]"
		ok, fail = true, false
	)
	connect := func(addr string, want bool) net.Conn {
		t.Helper()
		c, err := dialFrom(lab, "a", addr)
		if want && err != nil {
			t.Fatalf("connect A -> %s: %v; want connected", addr, err)
		}
		if !want && err == nil {
			c.Close()
			t.Fatalf("connect A -> %s: connected; want refused by the policy", addr)
		}
		if c != nil {
			srv.track(c)
		}
		return c
	}
	alive := func(c net.Conn, want bool, what string) {
		t.Helper()
		err := roundTrip(c)
		if want && err != nil {
			t.Fatalf("%s: %v; want an echo", what, err)
		}
		if !want && err == nil {
			t.Fatalf("%s: echoed; want the flow cut", what)
		}
	}
	ping := func(dst string, want bool) {
		t.Helper()
		if want {
			if err := lab.Ping("a", dst, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, err := lab.Exec("a", "ping", "-c1", "-W1", "-n", dst); err == nil {
			t.Fatalf("ping A -> %s answered; want dropped", dst)
		}
	}
	tcpFromA := func(rule int, ports ...uint16) policy.AddrRule {
		var ps policy.PortSet
		for _, p := range ports {
			ps = append(ps, policy.PortRange{First: p, Last: p})
		}
		slices.SortFunc(ps, func(a, b policy.PortRange) int { return int(a.First) - int(b.First) })
		return policy.AddrRule{Rule: rule, Src: pfx("10.77.0.1/32", "fd77::1/128"), Dst: pfx("10.77.0.2/32", "fd77::2/128"), Proto: policy.ProtoTCP, Ports: ps}
	}
	pingFromA := policy.AddrRule{Rule: 9, Src: pfx("10.77.0.0/24"), Dst: pfx("10.77.0.2/32"), Proto: policy.ProtoICMP, Ports: policy.AllPorts}

	// No policy: everything passes, and connections are tracked.
	set(nil)
	if !tableThere(t, f) {
		t.Fatalf("no table inet %s after set(nil)", f.table.Name)
	}
	old22, old443 := connect(b4+":22", ok), connect(b4+":443", ok)
	ping(b4, ok)

	// tcp/443 from A: a policy arriving later keeps the flows it admits
	// and cuts the others.
	set([]policy.AddrRule{tcpFromA(0, 443)})
	if n := chainLen(t, f, policyChain); n != 4 {
		t.Errorf("policy chain: got %d rules; want reply, generation, jump, drop", n)
	}
	if n := chainLen(t, f, rulesChain(f.gen)); n != 2 {
		t.Errorf("rules chain: got %d rules; want IPv4 and IPv6", n)
	}
	alive(old443, ok, "flow to 443 opened before the policy")
	alive(old22, fail, "flow to 22 opened before the policy")
	dropped := f.dropped()
	if dropped == 0 {
		t.Errorf("dropped: got 0 after cutting a flow; want more")
	}
	c443 := connect(b4+":443", ok)
	alive(c443, ok, "new flow to 443")
	c443v6 := connect(b6+":443", ok)
	alive(c443v6, ok, "new IPv6 flow to 443")
	connect(b4+":22", fail)
	connect(b6+":22", fail)
	if d := f.dropped(); d <= dropped {
		t.Errorf("dropped: got %d after refused connects; want more than %d", d, dropped)
	}
	ping(b4, fail)
	// B opens a flow to A: A's replies come in through veb.
	fromB, err := dialFrom(lab, "b", "10.77.0.1:8080")
	if err != nil {
		t.Fatalf("connect B -> A:8080: %v", err)
	}
	srv.track(fromB)
	alive(fromB, ok, "flow B opened to A")

	// Allowing 22 (and ping) lets new flows in and keeps the established.
	set([]policy.AddrRule{tcpFromA(0, 443, 22), pingFromA})
	c22 := connect(b4+":22", ok)
	alive(c22, ok, "new flow to 22")
	alive(c443, ok, "flow to 443 across the change")
	alive(c443v6, ok, "IPv6 flow to 443 across the change")
	alive(fromB, ok, "flow B opened to A across the change")
	ping(b4, ok)

	// Changes under traffic: with every version admitting 22 and 443, no
	// packet of an established or a new flow is dropped while the rules
	// are swapped.
	before := f.dropped()
	stop, errc := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				errc <- nil
				return
			default:
			}
			if err := roundTrip(c22); err != nil {
				errc <- err
				return
			}
		}
	}()
	for i := range 50 {
		if i%2 == 0 {
			set([]policy.AddrRule{tcpFromA(0, 22), tcpFromA(1, 443)})
		} else {
			set([]policy.AddrRule{tcpFromA(0, 443, 22)})
		}
		connect(b4+":443", ok)
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("flow to 22 while the rules changed: %v", err)
	}
	alive(c443, ok, "flow to 443 after 50 changes")
	if got, want := chainNames(t, f), []string{"admit_" + fmt.Sprint(f.gen), "forward", "input", "policy", "rules_" + fmt.Sprint(f.gen)}; !slices.Equal(got, want) {
		t.Errorf("chains after 50 changes: got %v; want %v", got, want)
	}
	if d := f.dropped(); d != before {
		t.Errorf("dropped while the rules changed: got %d; want %d", d, before)
	}

	// Taking 443 away cuts its flows at their next packet.
	set([]policy.AddrRule{tcpFromA(0, 22)})
	alive(c443, fail, "flow to 443 after 443 was taken away")
	alive(c22, ok, "flow to 22 after 443 was taken away")
	connect(b4+":443", fail)

	// The table deleted under the filter is built anew.
	if out, err := lab.Exec("b", "nft", "delete", "table", "inet", f.table.Name); err != nil {
		t.Fatalf("nft delete table: %v %s", err, out)
	}
	before = f.dropped()
	set([]policy.AddrRule{tcpFromA(0, 443)})
	connect(b4+":22", fail)
	connect(b4+":443", ok)
	if d := f.dropped(); d <= before {
		t.Errorf("dropped after the table was rebuilt: got %d; want more than %d (the count goes on)", d, before)
	}

	// An empty policy lets nothing new in.
	set([]policy.AddrRule{})
	connect(b4+":443", fail)

	// No policy again: everything passes.
	set(nil)
	if got, want := chainNames(t, f), []string{"forward", "input", "policy"}; !slices.Equal(got, want) {
		t.Errorf("chains with no policy: got %v; want %v", got, want)
	}
	connect(b4+":22", ok)
	connect(b6+":22", ok)
	ping(b4, ok)

	// Close removes the table.
	total := f.dropped()
	if err := f.close(); err != nil {
		t.Fatal(err)
	}
	if tableThere(t, f) {
		t.Errorf("table inet %s still there after close", f.table.Name)
	}
	if d := f.dropped(); d != total {
		t.Errorf("dropped after close: got %d; want %d", d, total)
	}
	if err := f.set(nil); err == nil {
		t.Errorf("set after close: got nil; want an error")
	}
}

type nftablesElem = nftables.SetElement

// linkMAC is the hardware address of link dev in namespace ns.
func linkMAC(t *testing.T, lab *netlab.Lab, ns, dev string) string {
	t.Helper()
	var mac string
	if err := lab.InNS(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// tableThere reads back whether the filter's table is in its namespace.
func tableThere(t *testing.T, f *nftFilter) bool {
	t.Helper()
	c := testConn(t, f)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == f.table.Name })
}

// chainLen reads back the number of rules in a chain of the filter.
func chainLen(t *testing.T, f *nftFilter, chain string) int {
	t.Helper()
	c := testConn(t, f)
	rules, err := c.GetRules(f.table, &nftables.Chain{Name: chain, Table: f.table})
	if err != nil {
		t.Fatal(err)
	}
	return len(rules)
}

// chainNames reads back the names of the filter's chains, sorted.
func chainNames(t *testing.T, f *nftFilter) []string {
	t.Helper()
	c := testConn(t, f)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ch := range chains {
		if ch.Table.Name == f.table.Name {
			names = append(names, ch.Name)
		}
	}
	slices.Sort(names)
	return names
}

func testConn(t *testing.T, f *nftFilter) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromName(labPrefix + "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// labPrefix names the test's namespaces, unique to this process so that
// two runs of the package at once (two checkouts on one machine) do not
// remove each other's namespaces; netlab removes those an earlier, crashed
// run of this process's PID left.
var labPrefix = fmt.Sprintf("mdnft%d-", os.Getpid())

// dialTimeout bounds a connect or an echo: far above a veth's round trip,
// and what a refused connect costs.
const dialTimeout = 700 * time.Millisecond

// dialFrom connects over TCP from namespace ns.
func dialFrom(lab *netlab.Lab, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := lab.InNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, dialTimeout)
		return err
	})
	return c, err
}

// roundTrip sends a few bytes over c and waits for their echo.
func roundTrip(c net.Conn) error {
	msg := []byte("meshd")
	c.SetDeadline(time.Now().Add(dialTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %q; want %q", got, msg)
	}
	return nil
}

// echoServers are TCP echo servers in the lab's namespaces, stopped (with
// their connections) when the test ends.
type echoServers struct {
	t   *testing.T
	lab *netlab.Lab
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns []io.Closer // guarded by mu: listeners and accepted connections
}

func newEchoServers(t *testing.T, lab *netlab.Lab) *echoServers {
	s := &echoServers{t: t, lab: lab}
	t.Cleanup(func() {
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *echoServers) track(c io.Closer) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *echoServers) listen(ns, addr string) {
	s.t.Helper()
	var l net.Listener
	if err := s.lab.InNS(ns, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		s.t.Fatal(err)
	}
	s.track(l)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.t.Errorf("accept on %s in %s: %v", addr, ns, err)
				}
				return
			}
			s.track(c)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				io.Copy(c, c)
			}()
		}
	}()
}

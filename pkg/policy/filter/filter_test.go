package filter

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/meshd/meshd/pkg/policy"
)

// Packet builders. Checksums are left zero: the filter does not read them.

func ip(src, dst string, proto uint8, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	if s.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		b[8], b[9] = 64, proto
		s4, d4 := s.As4(), d.As4()
		copy(b[12:], s4[:])
		copy(b[16:], d4[:])
		copy(b[20:], l4)
		return b
	}
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6], b[7] = proto, 64
	s16, d16 := s.As16(), d.As16()
	copy(b[8:], s16[:])
	copy(b[24:], d16[:])
	copy(b[40:], l4)
	return b
}

func tcp(src, dst string, sport, dport uint16, flags uint8) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	l4[12], l4[13] = 5<<4, flags
	return ip(src, dst, protoTCP, l4)
}

func udp(src, dst string, sport, dport uint16) []byte {
	l4 := make([]byte, 8+32)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	return ip(src, dst, protoUDP, l4)
}

func icmpProto(src string) uint8 {
	if netip.MustParseAddr(src).Is4() {
		return protoICMP
	}
	return protoICMPv6
}

// echo builds an echo request (req true) or reply.
func echo(src, dst string, req bool, id uint16) []byte {
	l4 := make([]byte, 16)
	v6 := !netip.MustParseAddr(src).Is4()
	switch {
	case req && !v6:
		l4[0] = 8
	case !req && !v6:
		l4[0] = 0
	case req:
		l4[0] = 128
	default:
		l4[0] = 129
	}
	binary.BigEndian.PutUint16(l4[4:], id)
	return ip(src, dst, icmpProto(src), l4)
}

// unreachable quotes the first 28 (or 48) bytes of pkt in a destination
// unreachable.
func unreachable(src, dst string, pkt []byte) []byte {
	n := min(len(pkt), 48)
	l4 := make([]byte, 8+n)
	l4[0] = 3 // unreachable (v4); address unreachable is code 3 of type 1 in v6
	if !netip.MustParseAddr(src).Is4() {
		l4[0] = 1
	}
	copy(l4[8:], pkt[:n])
	return ip(src, dst, icmpProto(src), l4)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newFilter(t testing.TB, cfg Config) (*Filter, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	cfg.Now = clk.Now
	return New(cfg), clk
}

var a = netip.MustParseAddr

// The vnet: srv (100.96.0.1, the receiver), web (tag web), cl (no tag), gw
// with the LAN 192.168.1.0/24, and v6 addresses for srv and web.
var peers = []policy.Peer{
	{Name: "srv", Tags: []string{"srv"}, Addrs: []netip.Addr{a("100.96.0.1"), a("fd7a::1")}},
	{Name: "web", Tags: []string{"web"}, Addrs: []netip.Addr{a("100.96.0.2"), a("fd7a::2")}},
	{Name: "cl", Addrs: []netip.Addr{a("100.96.0.3")}},
	{Name: "gw", Tags: []string{"site"}, Addrs: []netip.Addr{a("100.96.0.4")}, Subnets: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}},
}

const testPolicy = `{"acls": [
	{"action": "accept", "src": ["tag:web"], "dst": ["tag:srv:443,8000-8100"], "proto": "tcp"},
	{"action": "accept", "src": ["tag:web"], "dst": ["peer:srv:53"], "proto": "udp"},
	{"action": "accept", "src": ["*"], "dst": ["peer:srv:*", "peer:gw:*"], "proto": "icmp"},
	{"action": "accept", "src": ["192.168.1.0/24"], "dst": ["peer:srv:22"]},
	{"action": "accept", "src": ["tag:web"], "dst": ["192.168.1.128/25:80"]}]}`

func rulesFor(t testing.TB, doc, self string) *Ruleset {
	t.Helper()
	p, err := policy.Validate([]byte(doc), policy.NewDirectory(peers))
	if err != nil {
		t.Fatal(err)
	}
	return ForPeer(p, policy.NewDirectory(peers), self)
}

type step struct {
	name string
	out  bool // Out instead of In
	pkt  []byte
	want Verdict
}

func run(t *testing.T, f *Filter, steps []step) {
	t.Helper()
	for _, s := range steps {
		got := f.In
		if s.out {
			got = f.Out
		}
		if v := got(s.pkt); v != s.want {
			t.Errorf("%s: got %v; want %v", s.name, v, s.want)
		}
	}
}

func TestRulesAndReplies(t *testing.T) {
	f, _ := newFilter(t, Config{})
	f.SetRules(rulesFor(t, testPolicy, "srv"))
	run(t, f, []step{
		{"allowed port", false, tcp("100.96.0.2", "100.96.0.1", 40000, 443, tcpSYN), Accept},
		{"its reply", true, tcp("100.96.0.1", "100.96.0.2", 443, 40000, tcpSYN|tcpACK), Accept},
		{"the rest of the flow", false, tcp("100.96.0.2", "100.96.0.1", 40000, 443, tcpACK), Accept},
		{"port range", false, tcp("100.96.0.2", "100.96.0.1", 40001, 8050, tcpSYN), Accept},
		{"denied port", false, tcp("100.96.0.2", "100.96.0.1", 40002, 22, tcpSYN), Drop},
		{"denied source", false, tcp("100.96.0.3", "100.96.0.1", 40000, 443, tcpSYN), Drop},
		{"tcp rule is not udp", false, udp("100.96.0.2", "100.96.0.1", 40000, 443), Drop},
		{"udp rule", false, udp("100.96.0.2", "100.96.0.1", 40000, 53), Accept},
		{"udp reply", true, udp("100.96.0.1", "100.96.0.2", 53, 40000), Accept},
		{"v6 source of the tag", false, tcp("fd7a::2", "fd7a::1", 40000, 443, tcpSYN), Accept},
		{"v6 denied", false, tcp("fd7a::2", "fd7a::1", 40000, 22, tcpSYN), Drop},
		{"a LAN source by CIDR", false, tcp("192.168.1.7", "100.96.0.1", 40000, 22, tcpSYN), Accept},
		{"a LAN source, other port", false, tcp("192.168.1.7", "100.96.0.1", 40000, 23, tcpSYN), Drop},
		{"not to this peer", false, tcp("100.96.0.2", "100.96.0.9", 40000, 443, tcpSYN), Drop},
		// This side opens a flow the far side could not: its replies pass.
		{"outbound to cl", true, tcp("100.96.0.1", "100.96.0.3", 50000, 22, tcpSYN), Accept},
		{"cl's reply", false, tcp("100.96.0.3", "100.96.0.1", 22, 50000, tcpSYN|tcpACK), Accept},
		{"cl on another port", false, tcp("100.96.0.3", "100.96.0.1", 22, 50001, tcpSYN|tcpACK), Drop},
		{"outbound udp", true, udp("100.96.0.1", "100.96.0.3", 5353, 53), Accept},
		{"udp answer", false, udp("100.96.0.3", "100.96.0.1", 53, 5353), Accept},
		{"other protocols are denied", false, ip("100.96.0.2", "100.96.0.1", 47, make([]byte, 8)), Drop},
		{"other protocols leave", true, ip("100.96.0.1", "100.96.0.2", 47, make([]byte, 8)), Accept},
		{"malformed", false, []byte{0x45, 0, 0}, Drop},
	})
	if got := f.Stats().Dropped; got != 9 {
		t.Errorf("got %d dropped; want 9", got)
	}
}

func TestGatewayFiltersWhatItForwards(t *testing.T) {
	f, _ := newFilter(t, Config{})
	f.SetRules(rulesFor(t, testPolicy, "gw"))
	run(t, f, []step{
		{"into the allowed half of the LAN", false, tcp("100.96.0.2", "192.168.1.200", 40000, 80, tcpSYN), Accept},
		{"the LAN host answers", true, tcp("192.168.1.200", "100.96.0.2", 80, 40000, tcpSYN|tcpACK), Accept},
		{"the other half", false, tcp("100.96.0.2", "192.168.1.20", 40000, 80, tcpSYN), Drop},
		{"another port", false, tcp("100.96.0.2", "192.168.1.200", 40000, 81, tcpSYN), Drop},
		{"to the gateway itself", false, tcp("100.96.0.2", "100.96.0.4", 40000, 80, tcpSYN), Drop},
		{"ping the gateway", false, echo("100.96.0.3", "100.96.0.4", true, 7), Accept},
		{"no ping into the LAN", false, echo("100.96.0.3", "192.168.1.200", true, 7), Drop},
		{"a LAN host opens a flow out", true, udp("192.168.1.5", "100.96.0.3", 5060, 5060), Accept},
		{"and hears back", false, udp("100.96.0.3", "192.168.1.5", 5060, 5060), Accept},
	})
}

func TestICMP(t *testing.T) {
	f, _ := newFilter(t, Config{})
	f.SetRules(rulesFor(t, testPolicy, "srv"))
	sent := udp("100.96.0.1", "100.96.0.3", 6000, 7000)
	run(t, f, []step{
		{"echo request allowed", false, echo("100.96.0.3", "100.96.0.1", true, 1), Accept},
		{"echo reply leaves", true, echo("100.96.0.1", "100.96.0.3", false, 1), Accept},
		{"v6 echo request", false, echo("fd7a::2", "fd7a::1", true, 1), Accept},
		{"an unsolicited echo reply", false, echo("100.96.0.3", "100.96.0.1", false, 9), Drop},
		{"this side pings cl", true, echo("100.96.0.1", "100.96.0.3", true, 42), Accept},
		{"cl's reply", false, echo("100.96.0.3", "100.96.0.1", false, 42), Accept},
		{"other ICMP", false, ip("100.96.0.3", "100.96.0.1", protoICMP, []byte{13, 0, 0, 0, 0, 0, 0, 0}), Drop},
		{"a flow out", true, sent, Accept},
		{"an error about it", false, unreachable("100.96.0.3", "100.96.0.1", sent), Accept},
		{"an error about no flow", false, unreachable("100.96.0.3", "100.96.0.1", udp("100.96.0.1", "100.96.0.3", 6000, 7001)), Drop},
		{"an error quoting a cut short packet", false, unreachable("100.96.0.3", "100.96.0.1", sent[:22]), Drop},
		{"a v6 flow out", true, udp("fd7a::1", "fd7a::2", 6000, 7000), Accept},
		{"a v6 error about it", false, unreachable("fd7a::2", "fd7a::1", udp("fd7a::1", "fd7a::2", 6000, 7000)), Accept},
	})
	// cl pinging srv is a rule's business, not a tracked flow of srv's:
	// the echo request must not ride on srv's own ping to cl.
	g, _ := newFilter(t, Config{})
	g.SetRules(rulesFor(t, `{"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["*:*"]}]}`, "srv"))
	run(t, g, []step{
		{"srv pings cl", true, echo("100.96.0.1", "100.96.0.3", true, 5), Accept},
		{"cl answers", false, echo("100.96.0.3", "100.96.0.1", false, 5), Accept},
		{"cl pings with the same id", false, echo("100.96.0.3", "100.96.0.1", true, 5), Drop},
	})
}

func TestFragments(t *testing.T) {
	f, _ := newFilter(t, Config{})
	f.SetRules(rulesFor(t, testPolicy, "srv"))
	frag := func(pkt []byte, off uint16) []byte {
		b := append([]byte(nil), pkt...)
		binary.BigEndian.PutUint16(b[6:], off)
		return b
	}
	denied := udp("100.96.0.3", "100.96.0.1", 1, 2)
	run(t, f, []step{
		{"a later fragment passes", false, frag(denied, 100), Accept},
		{"a first fragment is judged", false, frag(denied, 0x2000), Drop},
		{"a TCP fragment at offset 8", false, frag(tcp("100.96.0.2", "100.96.0.1", 40000, 443, tcpSYN), 1), Drop},
	})
	// IPv6: a hop-by-hop header, then a fragment header at offset 0 (judged)
	// or later (passed).
	v6 := func(off uint16) []byte {
		l4 := make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], 1)
		binary.BigEndian.PutUint16(l4[2:], 22)
		ext := []byte{44, 0, 0, 0, 0, 0, 0, 0, protoUDP, 0, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(ext[10:], off<<3)
		return ip("fd7a::2", "fd7a::1", 0, append(ext, l4...))
	}
	run(t, f, []step{
		{"v6 first fragment", false, v6(0), Drop},
		{"v6 later fragment", false, v6(10), Accept},
	})
}

func TestNoPolicyPassesAndTracks(t *testing.T) {
	f, _ := newFilter(t, Config{})
	run(t, f, []step{
		{"anything in", false, tcp("100.96.0.3", "100.96.0.1", 40000, 22, tcpSYN), Accept},
		{"other protocols", false, ip("100.96.0.3", "100.96.0.1", 47, make([]byte, 8)), Accept},
		{"malformed", false, []byte{0x45}, Accept},
		{"an unsolicited echo reply", false, echo("100.96.0.3", "100.96.0.1", false, 9), Accept},
	})
	if got := f.Stats().Flows; got != 1 {
		t.Fatalf("got %d flows; want 1", got)
	}
}

func TestExpiry(t *testing.T) {
	f, clk := newFilter(t, Config{UDPTimeout: 30 * time.Second, TCPTimeout: time.Hour, ClosingTimeout: 10 * time.Second})
	f.SetRules(rulesFor(t, testPolicy, "srv"))
	run(t, f, []step{
		{"udp out", true, udp("100.96.0.1", "100.96.0.3", 5000, 53), Accept},
		{"tcp out", true, tcp("100.96.0.1", "100.96.0.3", 5000, 80, tcpSYN), Accept},
		{"udp answer", false, udp("100.96.0.3", "100.96.0.1", 53, 5000), Accept},
	})
	for range 5 {
		// Traffic keeps a flow alive well past its timeout.
		clk.Advance(20 * time.Second)
		run(t, f, []step{{"kept alive", false, udp("100.96.0.3", "100.96.0.1", 53, 5000), Accept}})
	}
	clk.Advance(31 * time.Second)
	run(t, f, []step{
		{"udp idle too long", false, udp("100.96.0.3", "100.96.0.1", 53, 5000), Drop},
		{"tcp still there", false, tcp("100.96.0.3", "100.96.0.1", 80, 5000, tcpACK), Accept},
		{"tcp FIN", true, tcp("100.96.0.1", "100.96.0.3", 5000, 80, tcpFIN|tcpACK), Accept},
	})
	clk.Advance(11 * time.Second)
	run(t, f, []step{
		{"closed tcp", false, tcp("100.96.0.3", "100.96.0.1", 80, 5000, tcpACK), Drop},
	})
	if n := f.Sweep(); n != 2 {
		t.Fatalf("Sweep dropped %d; want 2", n)
	}
	if got := f.Stats().Flows; got != 0 {
		t.Fatalf("got %d flows after Sweep; want 0", got)
	}
}

func TestTableIsBounded(t *testing.T) {
	f, clk := newFilter(t, Config{MaxFlows: 256})
	for i := range 10000 {
		f.Out(udp("100.96.0.1", "100.96.0.3", uint16(1000+i), 53))
		if i%100 == 0 {
			clk.Advance(time.Millisecond * 1500)
		}
	}
	if got := f.Stats().Flows; got > 256 {
		t.Fatalf("got %d flows; want at most %d", got, 256)
	}
	// The newest flows survive the evictions.
	if v := f.In(udp("100.96.0.3", "100.96.0.1", 53, 1000+9999)); v != Accept {
		t.Fatalf("the newest flow: got %v; want accept", v)
	}
}

func TestSetRules(t *testing.T) {
	f, _ := newFilter(t, Config{})
	web443 := tcp("100.96.0.2", "100.96.0.1", 40000, 443, tcpACK)
	web8080 := tcp("100.96.0.2", "100.96.0.1", 40001, 8080, tcpACK)
	reply8080 := tcp("100.96.0.1", "100.96.0.2", 8080, 40001, tcpACK)
	cl22 := tcp("100.96.0.3", "100.96.0.1", 40002, 22, tcpACK)
	toCL := tcp("100.96.0.1", "100.96.0.3", 50000, 9000, tcpACK)
	fromCL := tcp("100.96.0.3", "100.96.0.1", 9000, 50000, tcpACK)
	// Without a policy every flow passes, and is tracked.
	run(t, f, []step{
		{"web 443", false, web443, Accept},
		{"web 8080", false, web8080, Accept},
		{"cl 22", false, cl22, Accept},
		{"to cl", true, toCL, Accept},
	})
	// The first policy keeps what it accepts and cuts the rest.
	f.SetRules(rulesFor(t, `{"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["tag:srv:443,8080"]}]}`, "srv"))
	run(t, f, []step{
		{"web 443 kept", false, web443, Accept},
		{"web 8080 kept", false, web8080, Accept},
		{"cl 22 cut", false, cl22, Drop},
		{"cl 22 stays cut", false, cl22, Drop},
		{"srv's flow to cl is not the policy's", false, fromCL, Accept},
	})
	// A narrower policy cuts 8080 in both directions; a reply from srv
	// does not bring it back.
	f.SetRules(rulesFor(t, `{"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["tag:srv:443"]}]}`, "srv"))
	run(t, f, []step{
		{"reply 8080 cut", true, reply8080, Drop},
		{"web 8080 cut", false, web8080, Drop},
		{"reply 8080 still cut", true, reply8080, Drop},
		{"web 443 kept", false, web443, Accept},
		{"srv's flow still", false, fromCL, Accept},
	})
	// Back to no policy: a flow that was cut opens again.
	f.SetRules(nil)
	run(t, f, []step{
		{"a new flow", false, tcp("100.96.0.3", "100.96.0.1", 40009, 22, tcpSYN), Accept},
	})
	if f.Rules() != nil {
		t.Fatalf("Rules() after SetRules(nil) is not nil")
	}
}

// TestAgreesWithPolicy checks the compiled rules against the policy's own
// evaluation, for flows between every pair of addresses the vnet knows
// (and a few it does not), over each protocol and a spread of ports.
func TestAgreesWithPolicy(t *testing.T) {
	p, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	d := policy.NewDirectory(peers)
	addrs := []netip.Addr{a("192.168.1.5"), a("192.168.1.200"), a("10.9.9.9"), a("fd7a::9")}
	for _, pr := range peers {
		addrs = append(addrs, pr.Addrs...)
	}
	for _, self := range peers {
		rs := ForPeer(p, d, self.Name)
		for _, src := range addrs {
			for _, dst := range addrs {
				// Only what is delivered to self reaches its filter.
				mine := false
				for _, x := range self.Addrs {
					mine = mine || x == dst
				}
				for _, sn := range self.Subnets {
					mine = mine || sn.Contains(dst)
				}
				for _, proto := range []policy.Proto{policy.TCP, policy.UDP, policy.ICMP} {
					for _, port := range []uint16{0, 22, 53, 80, 443, 8000, 8100, 8101} {
						want := mine && p.Allows(d.Identify(src), d.Identify(dst), proto, port)
						if got := rs.Allows(src, dst, proto, port); got != want {
							t.Errorf("%s: %v -> %v %v/%d: got %v; want %v", self.Name, src, dst, proto, port, got, want)
						}
					}
				}
			}
		}
	}
}

// TestConcurrent runs packets through the filter from several goroutines
// while the rules change, for the race detector.
func TestConcurrent(t *testing.T) {
	f, clk := newFilter(t, Config{MaxFlows: 512})
	rs := []*Ruleset{rulesFor(t, testPolicy, "srv"), nil, rulesFor(t, `{"acls": []}`, "srv")}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				port := uint16(1000 + (i*7+g)%700)
				f.In(tcp("100.96.0.2", "100.96.0.1", port, 443, tcpACK))
				f.Out(tcp("100.96.0.1", "100.96.0.2", 443, port, tcpACK))
				f.Out(udp("100.96.0.1", "100.96.0.3", port, 53))
				f.In(udp("100.96.0.3", "100.96.0.1", 53, port))
			}
		})
	}
	for i := range 300 {
		f.SetRules(rs[i%len(rs)])
		clk.Advance(time.Second)
		if i%50 == 0 {
			f.Sweep()
			f.Stats()
		}
	}
	close(stop)
	wg.Wait()
}

func TestShardFillsTwoCacheLines(t *testing.T) {
	if got := unsafe.Sizeof(shard{}); got != 128 {
		t.Fatalf("a shard is %d bytes; want 128, so that goroutines on different shards share no cache line", got)
	}
}

func TestBatch(t *testing.T) {
	f, _ := newFilter(t, Config{})
	f.SetRules(rulesFor(t, testPolicy, "srv"))
	const offset = 16 // room for a header in front, as wireguard-go leaves
	batch := func(pkts ...[]byte) [][]byte {
		out := make([][]byte, len(pkts))
		for i, p := range pkts {
			out[i] = append(make([]byte, offset), p...)
		}
		return out
	}
	verdicts := make([]Verdict, 3)
	f.OutBatch(batch(udp("100.96.0.1", "100.96.0.3", 1, 2), udp("100.96.0.1", "100.96.0.3", 1, 3)), offset, verdicts)
	f.InBatch(batch(
		udp("100.96.0.3", "100.96.0.1", 2, 1),
		udp("100.96.0.3", "100.96.0.1", 4, 1),
		tcp("100.96.0.2", "100.96.0.1", 1, 443, tcpSYN),
	), offset, verdicts)
	if want := []Verdict{Accept, Drop, Accept}; !slices.Equal(verdicts, want) {
		t.Fatalf("got %v; want %v", verdicts, want)
	}
}

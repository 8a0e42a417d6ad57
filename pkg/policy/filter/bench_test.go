package filter

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/pkg/policy"
)

// bench100 is a vnet of 1,000 peers in 100 tagged groups under 100 rules
// (rule g lets group g reach five other groups on one TCP port each), and
// the Ruleset of peer p0, which groups 95 to 99 may reach on port 8001 to
// 8005.
func bench100(b *testing.B) (*Ruleset, []policy.Peer) {
	const n, groups = 1000, 100
	peers := make([]policy.Peer, n)
	for i := range peers {
		peers[i] = policy.Peer{
			Name:  fmt.Sprintf("p%d", i),
			Tags:  []string{fmt.Sprintf("g%d", i%groups)},
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{100, 96, byte(i >> 8), byte(i)})},
		}
	}
	type rule struct {
		Action string   `json:"action"`
		Src    []string `json:"src"`
		Dst    []string `json:"dst"`
		Proto  string   `json:"proto"`
	}
	var rules []rule
	for g := range groups {
		r := rule{Action: "accept", Src: []string{fmt.Sprintf("tag:g%d", g)}, Proto: "tcp"}
		for k := 1; k <= 5; k++ {
			r.Dst = append(r.Dst, fmt.Sprintf("tag:g%d:%d", (g+k)%groups, 8000+k))
		}
		rules = append(rules, r)
	}
	doc, _ := json.Marshal(map[string]any{"acls": rules})
	p, err := policy.Parse(doc)
	if err != nil {
		b.Fatal(err)
	}
	rs := ForPeer(p, policy.NewDirectory(peers), "p0")
	return rs, peers
}

// A full-sized TCP segment from p99 (group 99, which may reach group 0 on
// port 8001) to p0.
func benchPackets(b *testing.B) (in, out []byte) {
	in = tcp("100.96.0.99", "100.96.0.0", 40000, 8001, tcpACK)
	in = append(in, make([]byte, 1400)...)
	setLen(in)
	out = tcp("100.96.0.0", "100.96.0.99", 8001, 40000, tcpACK)
	return in, out
}

func setLen(b []byte) { b[2], b[3] = byte(len(b)>>8), byte(len(b)) }

func BenchmarkInEstablished(b *testing.B) {
	rs, _ := bench100(b)
	f := New(Config{})
	f.SetRules(rs)
	in, _ := benchPackets(b)
	if f.In(in) != Accept {
		b.Fatal("the flow is not accepted")
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if f.In(in) != Accept {
			b.Fatal("dropped")
		}
	}
}

func BenchmarkOutEstablished(b *testing.B) {
	rs, _ := bench100(b)
	f := New(Config{})
	f.SetRules(rs)
	in, out := benchPackets(b)
	f.In(in)
	b.ReportAllocs()
	for b.Loop() {
		if f.Out(out) != Accept {
			b.Fatal("dropped")
		}
	}
}

// BenchmarkInEstablishedParallel is the receive path on every core, each
// goroutine with its own flow.
func BenchmarkInEstablishedParallel(b *testing.B) {
	rs, _ := bench100(b)
	f := New(Config{})
	f.SetRules(rs)
	b.ReportAllocs()
	var next atomic.Uint32
	b.RunParallel(func(pb *testing.PB) {
		in := tcp("100.96.0.99", "100.96.0.0", uint16(40000+next.Add(1)), 8001, tcpACK)
		f.In(in)
		for pb.Next() {
			f.In(in)
		}
	})
}

// BenchmarkInNoPolicy is the same packet with no policy: the filter only
// tracks the flow.
func BenchmarkInNoPolicy(b *testing.B) {
	f := New(Config{})
	in, _ := benchPackets(b)
	f.In(in)
	b.ReportAllocs()
	for b.Loop() {
		f.In(in)
	}
}

// BenchmarkNewFlowDecision is the rule evaluation a new flow pays, over
// the 100 rules, for an admitted and a denied flow.
func BenchmarkNewFlowDecision(b *testing.B) {
	rs, _ := bench100(b)
	src, dst := netip.MustParseAddr("100.96.0.99"), netip.MustParseAddr("100.96.0.0")
	lan := netip.MustParseAddr("192.168.1.1")
	for _, bb := range []struct {
		name string
		src  netip.Addr
		port uint16
		want bool
	}{{"admitted", src, 8001, true}, {"denied port", src, 22, false}, {"unknown source", lan, 8001, false}} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if rs.Allows(bb.src, dst, policy.TCP, bb.port) != bb.want {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}

// BenchmarkInNewFlows opens a new flow with every packet (a port scan, or
// a DNS server's clients), table full and evicting.
func BenchmarkInNewFlows(b *testing.B) {
	rs, _ := bench100(b)
	f := New(Config{MaxFlows: 4096})
	f.SetRules(rs)
	pkts := make([][]byte, 8192)
	for i := range pkts {
		pkts[i] = tcp("100.96.0.99", "100.96.0.0", uint16(10000+i), 8001, tcpSYN)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f.In(pkts[i%len(pkts)])
		i++
	}
}

func BenchmarkCompile100Rules(b *testing.B) {
	const n, groups = 1000, 100
	_, peers := bench100(b)
	doc := []byte(`{"acls": [` + func() string {
		s := ""
		for g := range groups {
			if g > 0 {
				s += ","
			}
			s += fmt.Sprintf(`{"action": "accept", "src": ["tag:g%d"], "dst": ["tag:g%d:8001"]}`, g, (g+1)%groups)
		}
		return s
	}() + `]}`)
	p, err := policy.Parse(doc)
	if err != nil {
		b.Fatal(err)
	}
	d := policy.NewDirectory(peers)
	b.ReportAllocs()
	for b.Loop() {
		ForPeer(p, d, "p1")
	}
}

// BenchmarkInBatchEstablished is BenchmarkInEstablished through InBatch,
// 64 packets a batch: the clock is read once per batch.
func BenchmarkInBatchEstablished(b *testing.B) {
	rs, _ := bench100(b)
	f := New(Config{})
	f.SetRules(rs)
	in, _ := benchPackets(b)
	const n = 64
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = in
	}
	verdicts := make([]Verdict, n)
	f.In(in)
	b.ReportAllocs()
	for b.Loop() {
		f.InBatch(pkts, 0, verdicts)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/packet")
}

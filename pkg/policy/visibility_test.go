package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func seen(v *Visibility, d *Directory, name string) []string {
	i, _ := d.Index(name)
	var out []string
	for j := range v.Peers(i) {
		out = append(out, d.Peer(j).Name)
	}
	return out
}

func TestVisibility(t *testing.T) {
	d := NewDirectory(vnet)
	for _, tt := range []struct {
		name   string
		policy string // "" for no policy
		want   map[string][]string
	}{
		{"no policy: everyone sees everyone", "", map[string][]string{
			"br1": {"br2", "db1", "cl1", "gw1"},
			"gw1": {"br1", "br2", "db1", "cl1"},
		}},
		{"reach and reached by", `{"acls": [{"action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432"]}]}`, map[string][]string{
			"br1": {"db1"}, "br2": {"db1"}, "db1": {"br1", "br2"}, "cl1": nil, "gw1": nil,
		}},
		{"a gateway of an allowed subnet counts", `{"acls": [{"action": "accept", "src": ["peer:cl1"], "dst": ["192.168.10.10:443"]}]}`, map[string][]string{
			"cl1": {"gw1"}, "gw1": {"cl1"}, "br1": nil,
		}},
		{"a wider CIDR covers the gateway too", `{"acls": [{"action": "accept", "src": ["peer:cl1"], "dst": ["192.168.0.0/16:*"]}]}`, map[string][]string{
			"cl1": {"gw1"}, "gw1": {"cl1"},
		}},
		{"a LAN source makes its gateway a source", `{"acls": [{"action": "accept", "src": ["192.168.10.0/25"], "dst": ["peer:db1:*"]}]}`, map[string][]string{
			"gw1": {"db1"}, "db1": {"gw1"}, "cl1": nil,
		}},
		{"an overlay CIDR selects peers", `{"acls": [{"action": "accept", "src": ["100.96.0.4/32"], "dst": ["100.96.0.0/30:*"]}]}`, map[string][]string{
			"cl1": {"br1", "br2", "db1"}, "br1": {"cl1"}, "gw1": nil,
		}},
		{"an unknown tag selects no one", `{"acls": [{"action": "accept", "src": ["tag:gone"], "dst": ["*:*"]}]}`, map[string][]string{
			"br1": nil, "gw1": nil,
		}},
		{"star", `{"acls": [{"action": "accept", "src": ["peer:cl1"], "dst": ["*:22"]}]}`, map[string][]string{
			"cl1": {"br1", "br2", "db1", "gw1"}, "br1": {"cl1"}, "gw1": {"cl1"},
		}},
		{"no rules: no one", `{"acls": []}`, map[string][]string{
			"br1": nil, "cl1": nil,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p *Policy
			if tt.policy != "" {
				p = mustParse(t, tt.policy)
			}
			v := p.Visibility(d)
			for name, want := range tt.want {
				if got := seen(v, d, name); !slices.Equal(got, want) {
					t.Errorf("%s sees %v; want %v", name, got, want)
				}
				i, _ := d.Index(name)
				if v.Count(i) != len(want) {
					t.Errorf("Count(%s) = %d; want %d", name, v.Count(i), len(want))
				}
			}
			for i := range d.Len() {
				for j := range d.Len() {
					if v.Sees(i, j) != v.Sees(j, i) {
						t.Fatalf("Sees(%d, %d) != Sees(%d, %d)", i, j, j, i)
					}
				}
			}
		})
	}
}

// TestVisibilityAgreesWithAllows checks Visibility against its definition:
// i sees j when some address of one may open a flow to some address of
// the other (the gateway's subnet standing for the hosts behind it).
func TestVisibilityAgreesWithAllows(t *testing.T) {
	p := mustParse(t, `{"acls": [
		{"action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432", "192.168.10.0/24:443"]},
		{"action": "accept", "src": ["peer:cl1"], "dst": ["100.96.0.2:22"], "proto": "udp"},
		{"action": "accept", "src": ["192.168.10.0/24"], "dst": ["peer:cl1:*"], "proto": "icmp"}]}`)
	d := NewDirectory(vnet)
	v := p.Visibility(d)
	ends := func(pr Peer) []Identity {
		var out []Identity
		for _, ad := range pr.Addrs {
			out = append(out, d.Identify(ad))
		}
		for _, sn := range pr.Subnets {
			out = append(out, Identity{Addr: sn.Addr().Next()})
		}
		return out
	}
	reaches := func(x, y Peer) bool {
		for _, s := range ends(x) {
			for _, dd := range ends(y) {
				for _, pr := range []Proto{TCP, UDP, ICMP} {
					for _, port := range []uint16{22, 443, 5432} {
						if p.Allows(s, dd, pr, port) {
							return true
						}
					}
				}
			}
		}
		return false
	}
	for i := range d.Len() {
		for j := range d.Len() {
			if i == j {
				continue
			}
			want := reaches(d.Peer(i), d.Peer(j)) || reaches(d.Peer(j), d.Peer(i))
			if got := v.Sees(i, j); got != want {
				t.Errorf("Sees(%s, %s) = %v; want %v", d.Peer(i).Name, d.Peer(j).Name, got, want)
			}
		}
	}
}

func TestReceiverRules(t *testing.T) {
	d := NewDirectory(vnet)
	p := mustParse(t, specPolicy)
	pfx := netip.MustParsePrefix
	for _, tt := range []struct {
		self string
		want []AddrRule
	}{
		{"db1", []AddrRule{{Rule: 0, Src: []netip.Prefix{pfx("100.96.0.1/32"), pfx("100.96.0.2/32"), pfx("fd7a::2/128")},
			Dst: []netip.Prefix{pfx("100.96.0.3/32")}, Proto: ProtoTCP, Ports: PortSet{{5432, 5432}}}}},
		{"gw1", []AddrRule{{Rule: 0, Src: []netip.Prefix{pfx("100.96.0.1/32"), pfx("100.96.0.2/32"), pfx("fd7a::2/128")},
			Dst: []netip.Prefix{pfx("192.168.10.0/24")}, Proto: ProtoTCP, Ports: PortSet{{443, 443}, {8080, 8080}}}}},
		{"cl1", []AddrRule{{Rule: 0, Src: []netip.Prefix{pfx("100.96.0.1/32"), pfx("100.96.0.2/32"), pfx("fd7a::2/128")},
			Dst: []netip.Prefix{pfx("100.96.0.4/32")}, Proto: ProtoTCP, Ports: AllPorts}}},
		{"br1", []AddrRule{}},
		{"nobody", []AddrRule{}},
	} {
		t.Run(tt.self, func(t *testing.T) {
			got := p.ReceiverRules(d, tt.self)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v; want %+v", got, tt.want)
			}
		})
	}
	var none *Policy
	if got := none.ReceiverRules(d, "db1"); got != nil {
		t.Fatalf("no policy: got %+v; want nil", got)
	}
	// A narrower CIDR inside a gateway's subnet is cut to itself; "*"
	// covers the gateway and its subnets; a port list drops ICMP.
	q := mustParse(t, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["192.168.10.128/25:*", "*:80"]}]}`)
	want := []AddrRule{
		{Rule: 0, Src: anyAddr, Dst: []netip.Prefix{pfx("192.168.10.128/25")}, Proto: ProtoAll, Ports: AllPorts},
		{Rule: 0, Src: anyAddr, Dst: []netip.Prefix{pfx("100.96.0.5/32"), pfx("192.168.10.0/24")}, Proto: ProtoTCP | ProtoUDP, Ports: PortSet{{80, 80}}},
	}
	if got := q.ReceiverRules(d, "gw1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v; want %+v", got, want)
	}
}

// benchVNet is n peers in groups of 10% by tag, and a policy of one rule
// per group letting each peer reach its own group: every peer sees 10% of
// the others. A gateway per group announces a subnet that the next group
// reaches by CIDR.
func benchVNet(n int) ([]Peer, *Policy) {
	const groups = 10
	peers := make([]Peer, n)
	for i := range peers {
		g := i % groups
		peers[i] = Peer{
			Name:  fmt.Sprintf("p%d", i),
			Tags:  []string{fmt.Sprintf("g%d", g)},
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{100, 96, byte(i >> 8), byte(i)})},
		}
		if i < groups {
			peers[i].Subnets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}
		}
	}
	type rule struct {
		Action string   `json:"action"`
		Src    []string `json:"src"`
		Dst    []string `json:"dst"`
	}
	var rules []rule
	for g := range groups {
		rules = append(rules, rule{"accept", []string{fmt.Sprintf("tag:g%d", g)},
			[]string{fmt.Sprintf("tag:g%d:443,8000-8100", g), fmt.Sprintf("10.%d.0.0/24:22", g)}})
	}
	doc, _ := json.Marshal(map[string]any{"acls": rules})
	p, err := Parse(doc)
	if err != nil {
		panic(err)
	}
	return peers, p
}

func TestBenchVNetSeesTenPercent(t *testing.T) {
	peers, p := benchVNet(1000)
	d := NewDirectory(peers)
	v := p.Visibility(d)
	if got := v.Count(500); got != 99 {
		t.Fatalf("peer 500 sees %d; want 99", got)
	}
}

func BenchmarkVisibility1000(b *testing.B) {
	peers, p := benchVNet(1000)
	b.ReportAllocs()
	for b.Loop() {
		p.Visibility(NewDirectory(peers))
	}
}

func BenchmarkReceiverRules1000(b *testing.B) {
	peers, p := benchVNet(1000)
	d := NewDirectory(peers)
	b.ReportAllocs()
	for b.Loop() {
		for i := range peers {
			p.ReceiverRules(d, peers[i].Name)
		}
	}
}

// benchVNet100 is n peers in 100 tagged groups and 100 rules, rule g
// letting group g reach the next five groups: every peer sees about 10%
// of the others (those it reaches and those that reach it).
func benchVNet100(n int) ([]Peer, *Policy) {
	const groups = 100
	peers := make([]Peer, n)
	for i := range peers {
		peers[i] = Peer{
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
	p, err := Parse(doc)
	if err != nil {
		panic(err)
	}
	return peers, p
}

func BenchmarkVisibility1000Peers100Rules(b *testing.B) {
	peers, p := benchVNet100(1000)
	if got := p.Visibility(NewDirectory(peers)).Count(0); got != 100 {
		b.Fatalf("peer 0 sees %d; want 100", got)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Visibility(NewDirectory(peers))
	}
}

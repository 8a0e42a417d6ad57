package meshdns

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// testInput is a vnet with an IPv4 and an IPv6 overlay: cl1 (this peer)
// with one address, gwa1 with one of each family, a peer whose name is
// not a DNS label, and cl2 written in upper case.
func testInput() Input {
	return Input{
		Suffix: "mesh", VNet: "default", Self: "cl1", Serial: 42,
		Overlays: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12"), netip.MustParsePrefix("fd7a:115c::/48")},
		Hosts: []Host{
			{Name: "cl1", Addrs: addrs("100.96.0.5")},
			{Name: "gwa1", Addrs: addrs("fd7a:115c::2", "100.96.0.2")},
			{Name: "bad_name", Addrs: addrs("100.96.0.9")},
			{Name: "CL2", Addrs: addrs("100.96.0.6")},
		},
	}
}

// reply is the decoded parts of an answer a test looks at.
type reply struct {
	rcode   int
	aa      bool
	answers []string // "A 100.96.0.5", "PTR cl1.default.mesh.", "SOA mesh."
	owner   string   // of the first answer
	soa     string   // zone of the SOA in the authority section ("" none)
}

func decode(m *dns.Msg) reply {
	r := reply{rcode: m.Rcode, aa: m.Authoritative}
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			r.answers = append(r.answers, "A "+rr.A.String())
		case *dns.AAAA:
			r.answers = append(r.answers, "AAAA "+rr.AAAA.String())
		case *dns.PTR:
			r.answers = append(r.answers, "PTR "+rr.Ptr)
		case *dns.SOA:
			r.answers = append(r.answers, "SOA "+rr.Hdr.Name)
		default:
			r.answers = append(r.answers, rr.String())
		}
		if r.owner == "" {
			r.owner = rr.Header().Name
		}
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			r.soa = soa.Hdr.Name
		}
	}
	return r
}

func TestAnswer(t *testing.T) {
	tab := Build(testInput())
	const (
		ok = dns.RcodeSuccess
		nx = dns.RcodeNameError
		no = dns.RcodeRefused
	)
	for _, tt := range []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		answers []string
		soa     string // zone of the SOA in the authority section
	}{
		{"A", "cl1.default.mesh.", dns.TypeA, ok, []string{"A 100.96.0.5"}, ""},
		{"case-insensitive", "CL1.Default.MESH.", dns.TypeA, ok, []string{"A 100.96.0.5"}, ""},
		{"upper-case peer name", "cl2.default.mesh.", dns.TypeA, ok, []string{"A 100.96.0.6"}, ""},
		{"A of a dual-stack peer", "gwa1.default.mesh.", dns.TypeA, ok, []string{"A 100.96.0.2"}, ""},
		{"AAAA of a dual-stack peer", "gwa1.default.mesh.", dns.TypeAAAA, ok, []string{"AAAA fd7a:115c::2"}, ""},
		{"ANY", "gwa1.default.mesh.", dns.TypeANY, ok, []string{"A 100.96.0.2", "AAAA fd7a:115c::2"}, ""},
		{"AAAA of an IPv4-only peer: no data, not NXDOMAIN", "cl1.default.mesh.", dns.TypeAAAA, ok, nil, "mesh."},
		{"MX: no data", "cl1.default.mesh.", dns.TypeMX, ok, nil, "mesh."},
		{"unknown peer", "nope.default.mesh.", dns.TypeA, nx, nil, "mesh."},
		{"a name below a peer", "www.cl1.default.mesh.", dns.TypeA, nx, nil, "mesh."},
		{"another vnet", "cl1.other.mesh.", dns.TypeA, nx, nil, "mesh."},
		{"a name that is no DNS label", "bad_name.default.mesh.", dns.TypeA, nx, nil, "mesh."},
		{"the vnet's own name", "default.mesh.", dns.TypeA, ok, nil, "mesh."},
		{"the zone's SOA", "mesh.", dns.TypeSOA, ok, []string{"SOA mesh."}, ""},
		{"the zone apex, A", "MESH.", dns.TypeA, ok, nil, "mesh."},
		{"outside the suffix", "example.com.", dns.TypeA, no, nil, ""},
		{"ends like the suffix", "xmesh.", dns.TypeA, no, nil, ""},
		{"the root", ".", dns.TypeNS, no, nil, ""},
		{"PTR", "5.0.96.100.in-addr.arpa.", dns.TypePTR, ok, []string{"PTR cl1.default.mesh."}, ""},
		{"PTR, upper case", "2.0.96.100.IN-ADDR.ARPA.", dns.TypePTR, ok, []string{"PTR gwa1.default.mesh."}, ""},
		{"PTR of an IPv6 overlay address", "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.5.1.1.a.7.d.f.ip6.arpa.", dns.TypePTR, ok, []string{"PTR gwa1.default.mesh."}, ""},
		{"PTR of a free overlay address", "9.9.96.100.in-addr.arpa.", dns.TypePTR, nx, nil, "96.100.in-addr.arpa."},
		{"PTR of the end of the overlay", "1.0.111.100.in-addr.arpa.", dns.TypePTR, nx, nil, "111.100.in-addr.arpa."},
		{"PTR just past the overlay", "1.0.112.100.in-addr.arpa.", dns.TypePTR, no, nil, ""},
		{"PTR of another network", "1.0.0.10.in-addr.arpa.", dns.TypePTR, no, nil, ""},
		{"A under a reverse zone", "5.0.96.100.in-addr.arpa.", dns.TypeA, ok, nil, "96.100.in-addr.arpa."},
		{"a reverse zone's SOA", "96.100.in-addr.arpa.", dns.TypeSOA, ok, []string{"SOA 96.100.in-addr.arpa."}, ""},
		{"a network inside the overlay", "0.96.100.in-addr.arpa.", dns.TypePTR, ok, nil, "96.100.in-addr.arpa."},
		{"a malformed reverse name", "x.96.100.in-addr.arpa.", dns.TypePTR, nx, nil, "96.100.in-addr.arpa."},
		{"a leading zero", "05.0.96.100.in-addr.arpa.", dns.TypePTR, nx, nil, "96.100.in-addr.arpa."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion(tt.qname, tt.qtype)
			got := decode(tab.Answer(req))
			if got.rcode != tt.rcode {
				t.Fatalf("rcode %s; want %s", dns.RcodeToString[got.rcode], dns.RcodeToString[tt.rcode])
			}
			if !slices.Equal(got.answers, tt.answers) {
				t.Errorf("answers %q; want %q", got.answers, tt.answers)
			}
			if got.soa != tt.soa {
				t.Errorf("SOA in the authority section %q; want %q", got.soa, tt.soa)
			}
			if wantAA := tt.rcode != no; got.aa != wantAA {
				t.Errorf("authoritative %t; want %t", got.aa, wantAA)
			}
			if len(tt.answers) > 0 && tt.answers[0][:3] != "SOA" && got.owner != tt.qname {
				t.Errorf("answer owner %q; want the name as asked, %q", got.owner, tt.qname)
			}
		})
	}
}

func TestAnswerSOAFields(t *testing.T) {
	req := new(dns.Msg)
	req.SetQuestion("nope.default.mesh.", dns.TypeA)
	m := Build(testInput()).Answer(req)
	if len(m.Ns) != 1 {
		t.Fatalf("authority section %v; want one SOA", m.Ns)
	}
	soa := m.Ns[0].(*dns.SOA)
	if soa.Ns != "cl1.default.mesh." || soa.Serial != 42 || soa.Minttl != TTL || soa.Hdr.Ttl != TTL {
		t.Fatalf("SOA %v; want primary cl1.default.mesh., serial 42, TTL and minimum %d", soa, TTL)
	}
}

func TestAnswerTTL(t *testing.T) {
	req := new(dns.Msg)
	req.SetQuestion("gwa1.default.mesh.", dns.TypeANY)
	for _, rr := range Build(testInput()).Answer(req).Answer {
		if rr.Header().Ttl != TTL {
			t.Errorf("%v: TTL %d; want %d", rr, rr.Header().Ttl, TTL)
		}
	}
}

func TestAnswerMessageRules(t *testing.T) {
	tab := Build(testInput())
	q := func(f func(m *dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("cl1.default.mesh.", dns.TypeA)
		f(m)
		return m
	}
	for _, tt := range []struct {
		name  string
		tab   *Table
		req   *dns.Msg
		rcode int
		edns  bool // the reply carries an OPT record
	}{
		{"no table yet", nil, q(func(*dns.Msg) {}), dns.RcodeServerFailure, false},
		{"EDNS", tab, q(func(m *dns.Msg) { m.SetEdns0(4096, false) }), dns.RcodeSuccess, true},
		{"EDNS version 1", tab, q(func(m *dns.Msg) { m.SetEdns0(4096, false); m.IsEdns0().SetVersion(1) }), dns.RcodeBadVers, true},
		{"not a query", tab, q(func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), dns.RcodeNotImplemented, false},
		{"two questions", tab, q(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError, false},
		{"class CHAOS", tab, q(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), dns.RcodeRefused, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.tab.Answer(tt.req)
			if m.Rcode != tt.rcode {
				t.Errorf("rcode %s; want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if got := m.IsEdns0() != nil; got != tt.edns {
				t.Errorf("OPT in the reply %t; want %t", got, tt.edns)
			}
			if m.Id != tt.req.Id || !m.Response || m.RecursionAvailable {
				t.Errorf("header id %d response %t ra %t; want id %d, a response, no recursion", m.Id, m.Response, m.RecursionAvailable, tt.req.Id)
			}
			if _, err := m.Pack(); err != nil {
				t.Errorf("the reply does not pack: %v", err)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	t.Run("a name two peers share answers with both", func(t *testing.T) {
		in := Input{Suffix: "mesh", VNet: "v", Hosts: []Host{{Name: "a", Addrs: addrs("100.64.0.2")}, {Name: "A", Addrs: addrs("100.64.0.1", "100.64.0.2")}}}
		tab := Build(in)
		if got, want := tab.names["a.v.mesh."], addrs("100.64.0.1", "100.64.0.2"); !slices.Equal(got, want) {
			t.Fatalf("addresses %v; want %v", got, want)
		}
	})
	t.Run("IPv4 first, mapped addresses unmapped", func(t *testing.T) {
		in := Input{Suffix: "mesh", VNet: "v", Hosts: []Host{{Name: "a", Addrs: addrs("fd00::1", "::ffff:100.64.0.1", "100.64.0.0")}}}
		if got, want := Build(in).names["a.v.mesh."], addrs("100.64.0.0", "100.64.0.1", "fd00::1"); !slices.Equal(got, want) {
			t.Fatalf("addresses %v; want %v", got, want)
		}
	})
	t.Run("an address two peers claim points back to one, always the same", func(t *testing.T) {
		in := Input{Suffix: "mesh", VNet: "v", Hosts: []Host{{Name: "b", Addrs: addrs("100.64.0.1")}, {Name: "a", Addrs: addrs("100.64.0.1")}}}
		if got := Build(in).ptr[netip.MustParseAddr("100.64.0.1")]; got != "a.v.mesh." {
			t.Fatalf("PTR %q; want a.v.mesh.", got)
		}
	})
	t.Run("no valid vnet: no names, the zone still answers", func(t *testing.T) {
		tab := Build(Input{Suffix: "mesh", VNet: "", Hosts: []Host{{Name: "a", Addrs: addrs("100.64.0.1")}}})
		req := new(dns.Msg)
		req.SetQuestion("a.mesh.", dns.TypeA)
		if m := tab.Answer(req); len(tab.names) != 0 || m.Rcode != dns.RcodeNameError {
			t.Fatalf("names %v, rcode %s; want none and NXDOMAIN", tab.names, dns.RcodeToString[m.Rcode])
		}
	})
	t.Run("a longer suffix", func(t *testing.T) {
		tab := Build(Input{Suffix: "mesh.example.com", VNet: "v", Hosts: []Host{{Name: "a", Addrs: addrs("100.64.0.1")}}})
		req := new(dns.Msg)
		req.SetQuestion("a.v.mesh.example.com.", dns.TypeA)
		if got := decode(tab.Answer(req)).answers; !slices.Equal(got, []string{"A 100.64.0.1"}) {
			t.Fatalf("answers %q", got)
		}
	})
}

func TestDomains(t *testing.T) {
	for _, tt := range []struct {
		name     string
		overlays []string
		want     []string
	}{
		{"no overlay", nil, []string{"mesh"}},
		{"a /16", []string{"100.96.0.0/16"}, []string{"mesh", "96.100.in-addr.arpa"}},
		{"a /15: two zones", []string{"100.96.0.0/15"}, []string{"mesh", "96.100.in-addr.arpa", "97.100.in-addr.arpa"}},
		{"a /24", []string{"10.1.2.0/24"}, []string{"mesh", "2.1.10.in-addr.arpa"}},
		{"a /9 would be 128 zones: the covering /8", []string{"10.0.0.0/9"}, []string{"mesh", "10.in-addr.arpa"}},
		{"IPv6 /48", []string{"fd7a:115c::/48"}, []string{"mesh", "0.0.0.0.c.5.1.1.a.7.d.f.ip6.arpa"}},
		{"IPv6 /47", []string{"fd7a:115c::/47"}, []string{"mesh", "0.0.0.0.c.5.1.1.a.7.d.f.ip6.arpa", "1.0.0.0.c.5.1.1.a.7.d.f.ip6.arpa"}},
		{"two overlays, the same zone once", []string{"100.96.0.0/16", "100.96.1.0/24"}, []string{"mesh", "1.96.100.in-addr.arpa", "96.100.in-addr.arpa"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Suffix: "mesh"}
			for _, o := range tt.overlays {
				in.Overlays = append(in.Overlays, netip.MustParsePrefix(o))
			}
			if got := Build(in).Domains(); !slices.Equal(got, tt.want) {
				t.Fatalf("domains %q; want %q", got, tt.want)
			}
		})
	}
	t.Run("a /12: sixteen /16 zones", func(t *testing.T) {
		got := Build(Input{Suffix: "mesh", Overlays: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")}}).Domains()
		if len(got) != 17 || !slices.Contains(got, "96.100.in-addr.arpa") || !slices.Contains(got, "111.100.in-addr.arpa") || slices.Contains(got, "112.100.in-addr.arpa") {
			t.Fatalf("domains %q; want mesh and 96..111.100.in-addr.arpa", got)
		}
	})
}

func TestParseReverse(t *testing.T) {
	for _, tt := range []struct {
		name string
		want string // "" when not a reverse name
	}{
		{"5.0.96.100.in-addr.arpa.", "100.96.0.5/32"},
		{"96.100.in-addr.arpa.", "100.96.0.0/16"},
		{"255.255.255.255.in-addr.arpa.", "255.255.255.255/32"},
		{"1.5.0.96.100.in-addr.arpa.", ""},
		{"256.0.96.100.in-addr.arpa.", ""},
		{"-1.0.96.100.in-addr.arpa.", ""},
		{"b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.", "4321:0:1:2:3:4:567:89ab/128"},
		{"c.5.1.1.a.7.d.f.ip6.arpa.", "fd7a:115c::/32"},
		{"10.c.ip6.arpa.", ""},
		{"example.com.", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := parseReverse(tt.name)
			got := ""
			if ok {
				got = p.String()
			}
			if got != tt.want {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
}

func TestCleanSuffix(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"mesh", "mesh", true},
		{"Mesh.Example.COM.", "mesh.example.com", true},
		{" corp ", "corp", true},
		{"", "", false},
		{".", "", false},
		{"a..b", "", false},
		{"-mesh", "", false},
		{"me_sh", "", false},
		{"in-addr.arpa", "", false},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := CleanSuffix(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("got %q, %v; want %q (ok %t)", got, err, tt.want, tt.ok)
			}
		})
	}
}

// bigInput is a vnet of n peers.
func bigInput(n int) Input {
	in := Input{Suffix: "mesh", VNet: "default", Self: "p0", Overlays: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{100, 96 + byte(i>>16), byte(i >> 8), byte(i)})
		in.Hosts = append(in.Hosts, Host{Name: fmt.Sprintf("p%d", i), Addrs: []netip.Addr{a}})
	}
	return in
}

// BenchmarkBuild10k: what the agent's loop spends on the names of a
// 10,000-peer vnet at each map change.
func BenchmarkBuild10k(b *testing.B) {
	in := bigInput(10000)
	for b.Loop() {
		Build(in)
	}
}

func BenchmarkAnswer(b *testing.B) {
	tab := Build(bigInput(10000))
	req := new(dns.Msg)
	req.SetQuestion("p4242.default.mesh.", dns.TypeA)
	for b.Loop() {
		tab.Answer(req)
	}
}

package engine

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/pkg/policy"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var anyPfx = pfx("0.0.0.0/0", "::/0")

func TestNFTRules(t *testing.T) {
	const (
		tcp  = policy.ProtoTCP
		udp  = policy.ProtoUDP
		icmp = policy.ProtoICMP
		all  = policy.ProtoAll
	)
	ports := func(rs ...policy.PortRange) policy.PortSet { return rs }
	p443 := ports(policy.PortRange{First: 443, Last: 443})
	tests := []struct {
		name  string
		rules []policy.AddrRule
		want  []string // nil: no policy
	}{
		{name: "nil is no policy", rules: nil, want: nil},
		{name: "empty list lets nothing new in", rules: []policy.AddrRule{}, want: []string{}},
		{
			name:  "one port from one address",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: p443}},
			want:  []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
		{
			name: "ports as a list and ranges",
			rules: []policy.AddrRule{{Rule: 3, Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: udp,
				Ports: ports(policy.PortRange{First: 22, Last: 22}, policy.PortRange{First: 443, Last: 443}, policy.PortRange{First: 8000, Last: 8080})}},
			want: []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto udp th dport { 22, 443, 8000-8080 } goto admit comment "acls[3]"`},
		},
		{
			name:  "one range up to the last port",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: ports(policy.PortRange{First: 1024, Last: 65535})}},
			want:  []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto tcp th dport 1024-65535 goto admit comment "acls[0]"`},
		},
		{
			name:  "any port over tcp and udp",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: tcp | udp, Ports: policy.AllPorts}},
			want:  []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto { tcp, udp } goto admit comment "acls[0]"`},
		},
		{
			name:  "every protocol: tcp and udp, and icmp echo requests",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: all, Ports: policy.AllPorts}},
			want: []string{
				`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto { tcp, udp } goto admit comment "acls[0]"`,
				`ip saddr 100.96.0.2 ip daddr 100.96.0.1 icmp type echo-request goto admit comment "acls[0]"`,
			},
		},
		{
			name:  "icmp alone",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: icmp, Ports: policy.AllPorts}},
			want:  []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 icmp type echo-request goto admit comment "acls[0]"`},
		},
		{
			name:  "icmp needs every port",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: icmp | tcp, Ports: p443}},
			want:  []string{`ip saddr 100.96.0.2 ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
		{
			name:  "no ports at all admits no tcp",
			rules: []policy.AddrRule{{Src: pfx("100.96.0.2/32"), Dst: pfx("100.96.0.1/32"), Proto: tcp}},
			want:  []string{},
		},
		{
			name: "IPv4 and IPv6 each get their rules",
			rules: []policy.AddrRule{{Src: pfx("10.0.0.0/24", "fd00:1::/64"), Dst: pfx("100.96.0.1/32", "fd7a::1/128"), Proto: all, Ports: policy.AllPorts},
				{Rule: 1, Src: pfx("fd00:2::5/128"), Dst: pfx("fd7a::1/128"), Proto: tcp, Ports: p443}},
			want: []string{
				`ip saddr 10.0.0.0/24 ip daddr 100.96.0.1 meta l4proto { tcp, udp } goto admit comment "acls[0]"`,
				`ip saddr 10.0.0.0/24 ip daddr 100.96.0.1 icmp type echo-request goto admit comment "acls[0]"`,
				`ip6 saddr fd00:1::/64 ip6 daddr fd7a::1 meta l4proto { tcp, udp } goto admit comment "acls[0]"`,
				`ip6 saddr fd00:1::/64 ip6 daddr fd7a::1 icmpv6 type echo-request goto admit comment "acls[0]"`,
				`ip6 saddr fd00:2::5 ip6 daddr fd7a::1 meta l4proto tcp th dport 443 goto admit comment "acls[1]"`,
			},
		},
		{
			name:  "a family on one side only matches nothing",
			rules: []policy.AddrRule{{Src: pfx("10.0.0.0/24"), Dst: pfx("fd7a::1/128"), Proto: tcp, Ports: p443}},
			want:  []string{},
		},
		{
			name:  "no source at all",
			rules: []policy.AddrRule{{Src: nil, Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: p443}},
			want:  []string{},
		},
		{
			name:  "any source of both families",
			rules: []policy.AddrRule{{Src: anyPfx, Dst: pfx("100.96.0.1/32", "fd7a::1/128"), Proto: tcp, Ports: p443}},
			want: []string{
				`ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`,
				`ip6 daddr fd7a::1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`,
			},
		},
		{
			name:  "a /0 among other prefixes is any",
			rules: []policy.AddrRule{{Src: pfx("10.0.0.0/8", "0.0.0.0/0"), Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: p443}},
			want:  []string{`ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
		{
			name: "prefixes merged: contained, adjacent, overlapping",
			rules: []policy.AddrRule{{Src: pfx("10.1.0.0/24", "10.0.0.128/25", "10.0.0.5/32", "10.0.0.0/25", "10.0.1.0/24", "10.5.2.0/24", "10.5.1.0/24"),
				Dst: pfx("192.168.10.0/24", "192.168.10.7/32", "192.168.20.0/24"), Proto: tcp, Ports: p443}},
			want: []string{`ip saddr { 10.0.0.0/23, 10.1.0.0/24, 10.5.1.0-10.5.2.255 } ip daddr { 192.168.10.0/24, 192.168.20.0/24 } meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
		{
			name:  "prefixes up to the last address",
			rules: []policy.AddrRule{{Src: pfx("255.255.255.0/24", "255.255.254.0/24"), Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: p443}},
			want:  []string{`ip saddr 255.255.254.0/23 ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
		{
			name:  "IPv4-mapped prefixes are IPv4",
			rules: []policy.AddrRule{{Src: pfx("::ffff:10.0.0.0/120"), Dst: pfx("100.96.0.1/32"), Proto: tcp, Ports: p443}},
			want:  []string{`ip saddr 10.0.0.0/24 ip daddr 100.96.0.1 meta l4proto tcp th dport 443 goto admit comment "acls[0]"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nftRules(tt.rules)
			if (got == nil) != (tt.want == nil) {
				t.Fatalf("got nil %v; want nil %v", got == nil, tt.want == nil)
			}
			var gotS []string
			for _, r := range got {
				gotS = append(gotS, r.String())
			}
			if !slices.Equal(gotS, tt.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(gotS, "\n\t"), strings.Join(tt.want, "\n\t"))
			}
		})
	}
}

func TestAddrRanges(t *testing.T) {
	tests := []struct {
		in     []netip.Prefix
		v6     bool
		want   string
		wantOK bool
	}{
		{in: nil, want: "[]", wantOK: false},
		{in: pfx("fd00::/8"), want: "[]", wantOK: false},
		{in: pfx("fd00::/8"), v6: true, want: "[fd00::/8]", wantOK: true},
		{in: pfx("::/0"), v6: true, want: "[]", wantOK: true},
		{in: pfx("10.0.0.1/24"), want: "[10.0.0.0/24]", wantOK: true}, // masked
		{in: pfx("255.255.255.255/32", "255.255.255.254/32"), want: "[255.255.255.254/31]", wantOK: true},
		{in: pfx("10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"), want: "[10.0.0.1-10.0.0.3]", wantOK: true},
		{in: pfx("fd00::1/128", "fd00::3/128"), v6: true, want: "[fd00::1 fd00::3]", wantOK: true},
	}
	for _, tt := range tests {
		got, ok := addrRanges(tt.in, tt.v6)
		s := "["
		for i, r := range got {
			if i > 0 {
				s += " "
			}
			s += r.String()
		}
		s += "]"
		if s != tt.want || ok != tt.wantOK {
			t.Errorf("addrRanges(%v, v6 %v): got %s, %v; want %s, %v", tt.in, tt.v6, s, ok, tt.want, tt.wantOK)
		}
	}
}

func TestPolicyTableName(t *testing.T) {
	// nftables names hold up to 255 bytes (31 on kernels before 4.13);
	// interface names 15.
	if n := PolicyTableName("abcdefghijklmno"); len(n) > 31 {
		t.Errorf("got %q (%d bytes); want at most 31", n, len(n))
	}
}

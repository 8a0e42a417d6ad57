package policy

import (
	"net/netip"
	"reflect"
	"testing"
)

// dualVNet is a dual-stack vnet: every peer has an IPv4 and an IPv6
// overlay address; gw6 carries the IPv6 site fd00:10::/64 and the IPv4
// site 10.6.1.0/24.
var dualVNet = []Peer{
	{Name: "cl6", Tags: []string{"laptop"}, Addrs: []netip.Addr{a("100.70.0.3"), a("fd7a:115c:a1e0::3")}},
	{Name: "db6", Tags: []string{"db"}, Addrs: []netip.Addr{a("100.70.0.4"), a("fd7a:115c:a1e0::4")}},
	{Name: "gw6", Tags: []string{"site"}, Addrs: []netip.Addr{a("100.70.0.1"), a("fd7a:115c:a1e0::1")},
		Subnets: []netip.Prefix{netip.MustParsePrefix("fd00:10::/64"), netip.MustParsePrefix("10.6.1.0/24")}},
}

const dualPolicy = `{"acls": [
	{"action": "accept", "src": ["tag:laptop"], "dst": ["tag:db:5432", "[fd00:10::/64]:443"], "proto": "tcp"},
	{"action": "accept", "src": ["fd7a:115c:a1e0::4"], "dst": ["peer:cl6:*"]}
]}`

// TestIPv6Selectors: tags, peers and CIDRs select IPv6 addresses as they
// do IPv4 ones, whichever family a flow uses.
func TestIPv6Selectors(t *testing.T) {
	d := NewDirectory(dualVNet)
	p := mustParse(t, dualPolicy)
	for _, tt := range []struct {
		name, src, dst string
		proto          Proto
		ok             bool
	}{
		{"tag to tag over ipv6", "fd7a:115c:a1e0::3", "[fd7a:115c:a1e0::4]:5432", TCP, true},
		{"tag to tag over ipv4", "100.70.0.3", "100.70.0.4:5432", TCP, true},
		{"the wrong port over ipv6", "fd7a:115c:a1e0::3", "[fd7a:115c:a1e0::4]:22", TCP, false},
		{"an ipv6 site host by CIDR", "tag:laptop", "[fd00:10::20]:443", TCP, true},
		{"an ipv6 site host outside the CIDR", "tag:laptop", "[fd00:11::20]:443", TCP, false},
		{"the ipv4 site is not in the ipv6 rule", "tag:laptop", "10.6.1.20:443", TCP, false},
		{"an ipv6 source CIDR selects its peer only over ipv6", "fd7a:115c:a1e0::4", "[fd7a:115c:a1e0::3]:9000", UDP, true},
		{"the same peer over ipv4 is not selected", "100.70.0.4", "100.70.0.3:9000", UDP, false},
		{"peer selector over ipv6 icmp", "fd7a:115c:a1e0::4", "peer:cl6", ICMPv6, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ok, err := p.Query(d, tt.src, tt.dst, tt.proto)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.ok {
				t.Fatalf("got %v; want %v", ok, tt.ok)
			}
		})
	}
	pfx := netip.MustParsePrefix
	for _, tt := range []struct {
		self string
		want []AddrRule
	}{
		{"db6", []AddrRule{{Rule: 0, Src: []netip.Prefix{pfx("100.70.0.3/32"), pfx("fd7a:115c:a1e0::3/128")},
			Dst: []netip.Prefix{pfx("100.70.0.4/32"), pfx("fd7a:115c:a1e0::4/128")}, Proto: ProtoTCP, Ports: PortSet{{5432, 5432}}}}},
		{"gw6", []AddrRule{{Rule: 0, Src: []netip.Prefix{pfx("100.70.0.3/32"), pfx("fd7a:115c:a1e0::3/128")},
			Dst: []netip.Prefix{pfx("fd00:10::/64")}, Proto: ProtoTCP, Ports: PortSet{{443, 443}}}}},
	} {
		t.Run("receiver "+tt.self, func(t *testing.T) {
			if got := p.ReceiverRules(d, tt.self); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v; want %+v", got, tt.want)
			}
		})
	}
}

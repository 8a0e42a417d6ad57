package peer

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/pkg/api"
)

// TestComputeDualStack: in a dual-stack vnet every peer is reached at
// both of its addresses (/32 and /128), the interface holds both of this
// peer's, both overlays and IPv6 site routes go through the tunnel, and a
// gateway that announces an IPv6 route turns IPv6 forwarding on. The fake
// router records the IPv6 addresses and routes with their IPv6 source.
func TestComputeDualStack(t *testing.T) {
	self := api.MapPeer{ID: "self", Name: "cl6", Role: api.RoleClient, PublicKey: testKey(t), OverlayIP: "100.70.0.3", OverlayIP6: "fd7a:115c:a1e0::3"}
	gwSelf := api.MapPeer{ID: "g61", Name: "gw61", Role: api.RoleGateway, PublicKey: testKey(t), OverlayIP: "100.70.0.1", OverlayIP6: "fd7a:115c:a1e0::1",
		Routes: []api.Route{{Prefix: "fd00:10::/64", Priority: 200}}}
	gw2 := api.MapPeer{ID: "g62", Name: "gw62", Role: api.RoleGateway, PublicKey: testKey(t), OverlayIP: "100.70.0.2", OverlayIP6: "fd7a:115c:a1e0::2",
		Routes: []api.Route{{Prefix: "fd00:10::/64", Priority: 100}}}
	old := api.MapPeer{ID: "o1", Name: "old", Role: api.RoleClient, PublicKey: testKey(t), OverlayIP: "100.70.0.4"} // no IPv6 address (yet)
	for _, tt := range []struct {
		name    string
		self    api.MapPeer
		peers   []api.MapPeer
		allowed map[string][]string
		addrs   []string
		routes  []string
		fwd6    bool
		ops     []string
	}{
		{
			name: "client", self: self, peers: []api.MapPeer{gwSelf, gw2, old},
			allowed: map[string][]string{
				"gw61": {"100.70.0.1/32", "fd00:10::/64", "fd7a:115c:a1e0::1/128"},
				"gw62": {"100.70.0.2/32", "fd7a:115c:a1e0::2/128"},
				"old":  {"100.70.0.4/32"},
			},
			addrs:  []string{"100.70.0.3/32", "fd7a:115c:a1e0::3/128"},
			routes: []string{"100.70.0.0/16", "fd00:10::/64", "fd7a:115c:a1e0::/48"},
			ops: []string{"link set meshd0 mtu 1380", "addr add 100.70.0.3/32 dev meshd0", "addr add fd7a:115c:a1e0::3/128 dev meshd0",
				"route add 100.70.0.0/16 dev meshd0 src 100.70.0.3", "route add fd00:10::/64 dev meshd0 src fd7a:115c:a1e0::3",
				"route add fd7a:115c:a1e0::/48 dev meshd0 src fd7a:115c:a1e0::3"},
		},
		{
			name: "active gateway of an ipv6 route", self: gwSelf, peers: []api.MapPeer{self, gw2},
			allowed: map[string][]string{
				"cl6":  {"100.70.0.3/32", "fd7a:115c:a1e0::3/128"},
				"gw62": {"100.70.0.2/32", "fd7a:115c:a1e0::2/128"},
			},
			addrs:  []string{"100.70.0.1/32", "fd7a:115c:a1e0::1/128"},
			routes: []string{"100.70.0.0/16", "fd7a:115c:a1e0::/48"},
			fwd6:   true,
			ops: []string{"link set meshd0 mtu 1380", "addr add 100.70.0.1/32 dev meshd0", "addr add fd7a:115c:a1e0::1/128 dev meshd0",
				"route add 100.70.0.0/16 dev meshd0 src 100.70.0.1", "route add fd7a:115c:a1e0::/48 dev meshd0 src fd7a:115c:a1e0::1",
				"forwarding on", "ipv6 forwarding on", "mss clamp on"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m netMap
			s := tt.self
			m.apply(&api.MapUpdate{Index: 5, Full: true, VNet: "ds", Overlay: "100.70.0.0/16", Overlay6: "fd7a:115c:a1e0::/48", Self: &s, Peers: tt.peers})
			d := compute(&m, buildOptions{listenPort: 51820, mtu: 1380})
			allowed := map[string][]string{}
			for _, p := range d.wg.Peers {
				for _, a := range p.AllowedIPs {
					allowed[d.names[p.PublicKey]] = append(allowed[d.names[p.PublicKey]], a.String())
				}
			}
			for name, want := range tt.allowed {
				slices.Sort(allowed[name])
				if !slices.Equal(allowed[name], want) {
					t.Errorf("%s allowed IPs: got %v; want %v", name, allowed[name], want)
				}
			}
			addrs, routes := fmt.Sprint(sortedStrings(d.router.Addrs)), fmt.Sprint(sortedStrings(d.router.Routes))
			if addrs != fmt.Sprint(tt.addrs) || routes != fmt.Sprint(tt.routes) || d.router.Forward6 != tt.fwd6 {
				t.Fatalf("router: addrs %s, routes %s, forward6 %v; want %v, %v, %v", addrs, routes, d.router.Forward6, tt.addrs, tt.routes, tt.fwd6)
			}
			f := router.NewFake("meshd0")
			if err := f.Set(d.router); err != nil {
				t.Fatal(err)
			}
			if got := f.Ops(); !slices.Equal(got, tt.ops) {
				t.Fatalf("fake router did %q; want %q", got, tt.ops)
			}
		})
	}
}

func sortedStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

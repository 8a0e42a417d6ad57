package netmap

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// dualStore adds to testStore a dual-stack vnet "ds" with an IPv6 HA pair
// (gw61 200, gw62 100) for fd00:10::/64, an IPv4 route on gw61 and a
// client.
func dualStore(t *testing.T) *state.Store {
	t.Helper()
	s := testStore(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateVNetIPv6("ds", []string{"100.70.0.0/16", "fd7a:115c:a1e0::/48"}, t0))
	must(s.CreateToken(state.TokenSpec{ID: "t6", SecretHash: hash('d'), VNet: "ds", Uses: 10, Expires: t0.Add(time.Hour), AllowRoutes: []string{"fd00:10::/48", "10.6.0.0/16"}}, t0))
	for _, j := range []state.JoinSpec{
		{PeerID: "g61", Name: "gw61", Routes: []api.Route{{Prefix: "fd00:10::/64", Priority: 200}, {Prefix: "10.6.1.0/24", Priority: 200}}},
		{PeerID: "g62", Name: "gw62", Routes: []api.Route{{Prefix: "fd00:10::/64", Priority: 100}}},
		{PeerID: "c6", Name: "cl6"},
	} {
		j.TokenID, j.SecretHash, j.PublicKey, j.CredHash = "t6", hash('d'), key(), hash('c')
		if _, err := s.Join(j, t0); err != nil {
			t.Fatalf("join %s: %v", j.Name, err)
		}
	}
	return s
}

// TestMapBothFamilies: a dual-stack vnet's maps carry both overlays and
// both addresses of every peer; an IPv4 vnet's maps carry neither new
// field (agents that predate them see what they always saw).
func TestMapBothFamilies(t *testing.T) {
	s := dualStore(t)
	s.Read(func(tb *state.Tables, idx uint64) {
		for _, tt := range []struct {
			name, self        string
			overlay, overlay6 string
			selfIP, selfIP6   string
			peers             map[string][2]string // name -> ipv4, ipv6
		}{
			{name: "dual-stack vnet", self: "c6", overlay: "100.70.0.0/16", overlay6: "fd7a:115c:a1e0::/48", selfIP: "100.70.0.3", selfIP6: "fd7a:115c:a1e0::3",
				peers: map[string][2]string{"gw61": {"100.70.0.1", "fd7a:115c:a1e0::1"}, "gw62": {"100.70.0.2", "fd7a:115c:a1e0::2"}}},
			{name: "ipv4 vnet", self: "c1", overlay: api.DefaultOverlay, selfIP: "100.96.0.4",
				peers: map[string][2]string{"gwa1": {"100.96.0.1", ""}, "gwa2": {"100.96.0.2", ""}, "gwb1": {"100.96.0.3", ""}}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				u := Full(tb, idx, tt.self)
				if u.Overlay != tt.overlay || u.Overlay6 != tt.overlay6 || u.Self.OverlayIP != tt.selfIP || u.Self.OverlayIP6 != tt.selfIP6 {
					t.Fatalf("got overlays %q %q, self %q %q; want %q %q, %q %q", u.Overlay, u.Overlay6, u.Self.OverlayIP, u.Self.OverlayIP6, tt.overlay, tt.overlay6, tt.selfIP, tt.selfIP6)
				}
				if len(u.Peers) != len(tt.peers) {
					t.Fatalf("got %d peers; want %d", len(u.Peers), len(tt.peers))
				}
				for _, p := range u.Peers {
					if want := tt.peers[p.Name]; p.OverlayIP != want[0] || p.OverlayIP6 != want[1] {
						t.Fatalf("peer %s: got %q %q; want %q %q", p.Name, p.OverlayIP, p.OverlayIP6, want[0], want[1])
					}
				}
			})
		}
	})
}

// TestLookupIPv6: IPv6 routes are looked up by longest prefix match and
// fail over like IPv4 ones.
func TestLookupIPv6(t *testing.T) {
	s := dualStore(t)
	s.Read(func(tb *state.Tables, _ uint64) {
		for _, tt := range []struct {
			name, ip       string
			healthy        Healthy
			prefix, active string
		}{
			{"highest priority wins", "fd00:10::7", healthyExcept(), "fd00:10::/64", "gw61"},
			{"standby takes over", "fd00:10::7", healthyExcept("gw61"), "fd00:10::/64", "gw62"},
			{"ipv4 route of the same vnet", "10.6.1.9", healthyExcept(), "10.6.1.0/24", "gw61"},
			{"no ipv6 route", "fd00:11::1", healthyExcept(), "", ""},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := Lookup(tb, "ds", netip.MustParseAddr(tt.ip), tt.healthy)
				prefix := ""
				if r.Prefix != nil {
					prefix = *r.Prefix
				}
				if prefix != tt.prefix || r.ActiveGateway != tt.active {
					t.Fatalf("got %s via %q; want %s via %q", prefix, r.ActiveGateway, tt.prefix, tt.active)
				}
			})
		}
	})
}

// TestOverlapsIPv6: IPv6 routes overlap by prefix like IPv4 ones, and
// never across families.
func TestOverlapsIPv6(t *testing.T) {
	s := dualStore(t)
	j := state.JoinSpec{TokenID: "t6", SecretHash: hash('d'), PeerID: "g63", Name: "gw63", PublicKey: key(), CredHash: hash('c'),
		Routes: []api.Route{{Prefix: "fd00:10::80/121", Priority: 100}, {Prefix: "10.6.0.0/16", Priority: 100}}}
	if _, err := s.Join(j, t0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, _ uint64) {
		var got []string
		for _, o := range Overlaps(tb) {
			if o.A.VNet == "ds" {
				got = append(got, o.A.Prefix+" "+o.B.Prefix+" "+o.MoreSpecific)
			}
		}
		want := []string{"10.6.0.0/16 10.6.1.0/24 b", "fd00:10::/64 fd00:10::80/121 b"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("overlaps in ds: got %q; want %q", got, want)
		}
	})
}

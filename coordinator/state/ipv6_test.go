package state

import (
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

func TestCreateVNetIPv6(t *testing.T) {
	for _, tt := range []struct {
		name      string
		overlays  []string
		ipv6      bool
		code      string
		want      string // Overlay
		want6     string // Overlay6
		wantFirst string
	}{
		{name: "dual-stack", overlays: []string{"100.70.0.0/16", "fd7a:115c:a1e0::/48"}, ipv6: true, want: "100.70.0.0/16", want6: "fd7a:115c:a1e0::/48", wantFirst: "100.70.0.1"},
		{name: "dual-stack given ipv6 first", overlays: []string{"fd7a:115c:a1e0::/48", "100.70.0.0/16"}, ipv6: true, want: "100.70.0.0/16", want6: "fd7a:115c:a1e0::/48", wantFirst: "100.70.0.1"},
		{name: "ipv6 only", overlays: []string{"fd7a:115c:a1e0::/48"}, ipv6: true, want: "fd7a:115c:a1e0::/48", want6: "invalid Prefix", wantFirst: "fd7a:115c:a1e0::1"},
		{name: "ipv4 only through the ipv6 command", overlays: []string{"100.70.0.0/16"}, ipv6: true, want: "100.70.0.0/16", want6: "invalid Prefix", wantFirst: "100.70.0.1"},
		{name: "the old command refuses ipv6 as it always did", overlays: []string{"fd7a:115c:a1e0::/48"}, code: api.CodeInvalidCIDR},
		{name: "two ipv6 overlays", overlays: []string{"fd7a:115c:a1e0::/48", "fd7b::/48"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "two ipv4 overlays", overlays: []string{"100.70.0.0/16", "100.71.0.0/16"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "three overlays", overlays: []string{"100.70.0.0/16", "fd7a::/48", "fd7b::/48"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "link-local", overlays: []string{"fe80::/64"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "ipv4-mapped", overlays: []string{"::ffff:100.70.0.0/112"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "too short", overlays: []string{"fd00::/8"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "too long", overlays: []string{"fd7a::/124"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "host bits", overlays: []string{"fd7a::1/48"}, ipv6: true, code: api.CodeInvalidCIDR},
		{name: "overlaps the other vnet's ipv6 overlay", overlays: []string{"100.70.0.0/16", "fd7a:115c:a1e0:1::/64"}, ipv6: true, code: api.CodeOverlap},
		{name: "overlaps the default overlay", overlays: []string{"100.96.0.0/16", "fd7b::/48"}, ipv6: true, code: api.CodeOverlap},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := setup(t)
			if strings.HasPrefix(tt.name, "overlaps") {
				if err := s.CreateVNetIPv6("other", []string{"fd7a:115c:a1e0::/48", "100.80.0.0/16"}, t0); err != nil {
					t.Fatal(err)
				}
			}
			before := s.Dump()
			var err error
			if tt.ipv6 {
				err = s.CreateVNetIPv6("v6", tt.overlays, t0)
			} else {
				err = s.CreateVNet("v6", tt.overlays[0], t0)
			}
			if tt.code != "" {
				if !api.IsCode(err, tt.code) {
					t.Fatalf("got %v; want code %s", err, tt.code)
				}
				if string(s.Dump()) != string(before) {
					t.Fatal("a refused vnet changed the state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var v VNet
			s.Read(func(t *Tables, _ uint64) { v = *t.VNets["v6"] })
			if v.Overlay.String() != tt.want || v.Overlay6.String() != tt.want6 || v.NextIP.String() != tt.wantFirst {
				t.Fatalf("got overlay %v, overlay6 %v, next %v; want %s, %s, %s", v.Overlay, v.Overlay6, v.NextIP, tt.want, tt.want6, tt.wantFirst)
			}
		})
	}
}

// TestJoinDualStack: a peer of a dual-stack vnet gets one address per
// family, both indexed and freed on removal; routes of either family may
// not overlap either overlay; a snapshot keeps both.
func TestJoinDualStack(t *testing.T) {
	s := setup(t)
	if err := s.CreateVNetIPv6("ds", []string{"100.70.0.0/30", "fd7a:115c:a1e0::/120"}, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(TokenSpec{ID: "tok6", SecretHash: hash('e'), VNet: "ds", Uses: 10, Expires: t0.Add(time.Hour),
		AllowRoutes: []string{"10.1.0.0/16", "fd00:10::/56"}}, t0); err != nil {
		t.Fatal(err)
	}
	err := s.CreateToken(TokenSpec{ID: "bad", SecretHash: hash('e'), VNet: "ds", Uses: 1, Expires: t0.Add(time.Hour), AllowRoutes: []string{"fd7a:115c:a1e0::/64"}}, t0)
	if !api.IsCode(err, api.CodeOverlap) {
		t.Fatalf("allowed route inside the ipv6 overlay: got %v; want %s", err, api.CodeOverlap)
	}
	join := func(id, name string, routes ...api.Route) (*Peer, error) {
		return s.Join(JoinSpec{TokenID: "tok6", SecretHash: hash('e'), PeerID: id, Name: name, PublicKey: key(), CredHash: hash('c'), Routes: routes}, t0)
	}
	gw, err := join("p1", "gw1", api.Route{Prefix: "fd00:10::/64", Priority: 10}, api.Route{Prefix: "10.1.2.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if gw.OverlayIP.String() != "100.70.0.1" || gw.OverlayIP6.String() != "fd7a:115c:a1e0::1" || gw.Role != api.RoleGateway {
		t.Fatalf("got %v %v %s; want 100.70.0.1 fd7a:115c:a1e0::1 gateway", gw.OverlayIP, gw.OverlayIP6, gw.Role)
	}
	if _, err := join("px", "cx", api.Route{Prefix: "fd00:11::/64"}); !api.IsCode(err, api.CodeRouteNotAllowed) {
		t.Fatalf("ipv6 route outside the token's: got %v; want %s", err, api.CodeRouteNotAllowed)
	}
	c2, err := join("p2", "cl2")
	if err != nil {
		t.Fatal(err)
	}
	if c2.OverlayIP.String() != "100.70.0.2" || c2.OverlayIP6.String() != "fd7a:115c:a1e0::2" {
		t.Fatalf("got %v %v; want the second address of each family", c2.OverlayIP, c2.OverlayIP6)
	}
	// The IPv4 /30 is full: the join is refused whole.
	before := s.Dump()
	if _, err := join("p3", "cl3"); !api.IsCode(err, api.CodeExhausted) || !strings.Contains(err.Error(), "100.70.0.0/30") {
		t.Fatalf("got %v; want %s naming the ipv4 pool", err, api.CodeExhausted)
	}
	if string(s.Dump()) != string(before) {
		t.Fatal("a refused join changed the state")
	}
	// Removing a peer frees both of its addresses.
	if err := s.RemovePeer("p2", t0, nil); err != nil {
		t.Fatal(err)
	}
	c3, err := join("p3", "cl3")
	if err != nil {
		t.Fatal(err)
	}
	if c3.OverlayIP.String() != "100.70.0.2" || c3.OverlayIP6.String() != "fd7a:115c:a1e0::3" {
		t.Fatalf("got %v %v; want 100.70.0.2 (freed) and fd7a:115c:a1e0::3 (next)", c3.OverlayIP, c3.OverlayIP6)
	}
	r := roundTrip(t, s)
	r.mu.RLock()
	id := r.byIP["ds"][c3.OverlayIP6]
	r.mu.RUnlock()
	if id != "p3" {
		t.Fatalf("restored index: %s -> %q; want p3", c3.OverlayIP6, id)
	}
	// A vnet without IPv6 encodes as it did: no new fields.
	if d := string(s.Dump()); strings.Count(d, "overlay6") != 1 || strings.Count(d, "overlay_ip6") != 2 {
		t.Fatalf("dump: got %d overlay6 and %d overlay_ip6 fields; want 1 and 2 (the dual-stack vnet and its peers only)", strings.Count(d, "overlay6"), strings.Count(d, "overlay_ip6"))
	}
}

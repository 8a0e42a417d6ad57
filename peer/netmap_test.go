package peer

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

func testKey(t *testing.T) string {
	t.Helper()
	k, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

func TestComputeRoutesAndPeers(t *testing.T) {
	gw1, gw2, gwb, cl := testKey(t), testKey(t), testKey(t), testKey(t)
	self := api.MapPeer{ID: "self", Name: "laptop", Role: api.RoleClient, PublicKey: testKey(t), OverlayIP: "100.96.0.9"}
	peers := []api.MapPeer{
		{ID: "a1", Name: "gwa1", Role: api.RoleGateway, PublicKey: gw1, OverlayIP: "100.96.0.1", Endpoints: []string{"203.0.113.1:51820", "10.99.0.21:51820"}, Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 200}}},
		{ID: "a2", Name: "gwa2", Role: api.RoleGateway, PublicKey: gw2, OverlayIP: "100.96.0.2", Endpoints: []string{"10.99.0.22:51820"}, Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}},
		{ID: "b1", Name: "gwb1", Role: api.RoleGateway, PublicKey: gwb, OverlayIP: "100.96.0.3", Routes: []api.Route{{Prefix: "192.168.20.0/24", Priority: 100}}},
		{ID: "c2", Name: "phone", Role: api.RoleClient, PublicKey: cl, OverlayIP: "100.96.0.4"},
	}
	var m netMap
	m.apply(&api.MapUpdate{Index: 5, Full: true, VNet: "default", Overlay: "100.96.0.0/12", Self: &self, Peers: peers})
	local := []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}
	d := compute(&m, buildOptions{listenPort: 51820, mtu: 1420, localNets: local})

	allowed := map[string][]string{}
	endpoint := map[string]string{}
	for _, p := range d.wg.Peers {
		for _, a := range p.AllowedIPs {
			allowed[d.names[p.PublicKey]] = append(allowed[d.names[p.PublicKey]], a.String())
		}
		if p.Endpoint.IsValid() {
			endpoint[d.names[p.PublicKey]] = p.Endpoint.String()
		}
		if p.PersistentKeepalive != KeepaliveSeconds {
			t.Errorf("keepalive %d; want %d", p.PersistentKeepalive, KeepaliveSeconds)
		}
	}
	for name, want := range map[string][]string{
		"gwa1":  {"100.96.0.1/32", "192.168.10.0/24"},
		"gwa2":  {"100.96.0.2/32"},
		"gwb1":  {"100.96.0.3/32", "192.168.20.0/24"},
		"phone": {"100.96.0.4/32"},
	} {
		slices.Sort(allowed[name])
		slices.Sort(want)
		if !slices.Equal(allowed[name], want) {
			t.Errorf("%s allowed IPs: got %v; want %v", name, allowed[name], want)
		}
	}
	if got := endpoint["gwa1"]; got != "10.99.0.21:51820" {
		t.Errorf("gwa1 endpoint: got %s; want the one on the shared LAN 10.99.0.21:51820", got)
	}
	if _, ok := endpoint["gwb1"]; ok {
		t.Errorf("gwb1 reported no endpoint but got %s", endpoint["gwb1"])
	}
	var routes []string
	for _, r := range d.router.Routes {
		routes = append(routes, r.String())
	}
	if want := []string{"100.96.0.0/12", "192.168.10.0/24", "192.168.20.0/24"}; !slices.Equal(routes, want) {
		t.Errorf("routes: got %v; want %v", routes, want)
	}
	if len(d.router.Addrs) != 1 || d.router.Addrs[0].String() != "100.96.0.9/32" {
		t.Errorf("addrs: got %v; want [100.96.0.9/32]", d.router.Addrs)
	}
	if d.router.Forward || d.router.SNAT {
		t.Errorf("a client forwards or masquerades: %+v", d.router)
	}

	// The same map again computes the same configuration.
	if again := compute(&m, buildOptions{listenPort: 51820, mtu: 1420, localNets: local}); !again.wg.Equal(d.wg) {
		t.Error("the same map computed a different WireGuard config")
	}

	// gwa1 goes unhealthy: the route moves to gwa2.
	d = compute(&m, buildOptions{listenPort: 51820, localNets: local, healthy: func(id string) bool { return id != "a1" }})
	for _, r := range d.routes {
		if r.Prefix == "192.168.10.0/24" && r.ActiveGateway != "gwa2" {
			t.Errorf("with gwa1 unhealthy the route is at %s; want gwa2", r.ActiveGateway)
		}
	}

	// A delta removes a peer and moves it out of the config.
	m.apply(&api.MapUpdate{Index: 6, Removed: []string{"c2"}})
	d = compute(&m, buildOptions{listenPort: 51820, localNets: local})
	for _, p := range d.wg.Peers {
		if d.names[p.PublicKey] == "phone" {
			t.Error("removed peer still configured")
		}
	}
	if m.index != 6 {
		t.Errorf("index %d; want 6", m.index)
	}
}

func TestComputeGatewayKeepsItsOwnLAN(t *testing.T) {
	self := api.MapPeer{ID: "a2", Name: "gwa2", Role: api.RoleGateway, PublicKey: testKey(t), OverlayIP: "100.96.0.2", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}}
	peers := []api.MapPeer{
		{ID: "a1", Name: "gwa1", Role: api.RoleGateway, PublicKey: testKey(t), OverlayIP: "100.96.0.1", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 200}}},
	}
	var m netMap
	m.apply(&api.MapUpdate{Index: 1, Full: true, Overlay: "100.96.0.0/12", Self: &self, Peers: peers})
	d := compute(&m, buildOptions{snat: true})
	if len(d.wg.Peers) != 1 || len(d.wg.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("the standby gateway routes its own LAN into the tunnel: %+v", d.wg.Peers)
	}
	for _, r := range d.router.Routes {
		if r.String() == "192.168.10.0/24" {
			t.Fatal("the standby gateway routes its own LAN through the mesh interface")
		}
	}
	if !d.router.Forward || !d.router.ClampMSS || !d.router.SNAT {
		t.Fatalf("a gateway must forward and clamp MSS (and masquerade when asked): %+v", d.router)
	}
}

func TestPickEndpoint(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
	for _, tt := range []struct {
		name   string
		eps    []string
		offset int
		want   string
	}{
		{"none", nil, 0, "invalid AddrPort"},
		{"same lan first", []string{"198.51.100.7:51820", "192.168.1.5:51820"}, 0, "192.168.1.5:51820"},
		{"public before private", []string{"10.0.0.5:51820", "198.51.100.7:51820"}, 0, "198.51.100.7:51820"},
		{"rotation", []string{"10.0.0.5:51820", "198.51.100.7:51820"}, 1, "10.0.0.5:51820"},
		{"garbage skipped", []string{"nonsense", "10.0.0.5:51820"}, 0, "10.0.0.5:51820"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := pickEndpoint(tt.eps, lan, tt.offset).String(); got != tt.want {
				t.Fatalf("got %s; want %s", got, tt.want)
			}
		})
	}
}

// TestActiveGatewaysFeedsTheSharedRule checks what the agent hands to
// gateway.Choose: its own health and drained flag for itself, the gossip
// view and the map's drained flags for the others. The rule itself is
// tested in pkg/gateway.
func TestActiveGatewaysFeedsTheSharedRule(t *testing.T) {
	site := []api.Route{{Prefix: "192.168.10.0/24", Priority: 200}}
	standby := []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}
	for _, tt := range []struct {
		name         string
		selfDrained  bool
		selfHealthy  bool
		otherDrained bool
		otherHealthy bool
		want         string // "" for none
	}{
		{"self preferred", false, true, false, true, "gwa1"},
		{"self unhealthy", false, false, false, true, "gwa2"},
		{"self drained", true, true, false, true, "gwa2"},
		{"self drained, standby unhealthy", true, true, false, false, "gwa1"},
		{"self drained, standby drained too", true, true, true, true, "gwa1"},
		{"self unhealthy, standby drained", false, false, true, true, "gwa2"},
		{"both unhealthy", false, false, false, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m netMap
			m.apply(&api.MapUpdate{Index: 1, Full: true,
				Self:  &api.MapPeer{ID: "a1", Name: "gwa1", Routes: site, Drained: tt.selfDrained},
				Peers: []api.MapPeer{{ID: "a2", Name: "gwa2", Routes: standby, Drained: tt.otherDrained}},
			})
			active := activeGateways(&m, func(string) bool { return tt.otherHealthy }, tt.selfHealthy, nil)
			g, ok := active[netip.MustParsePrefix("192.168.10.0/24")]
			got := ""
			if ok {
				got = g.name
				if g.why == "" {
					t.Errorf("got no reason for %s", g.name)
				}
			}
			if got != tt.want {
				t.Fatalf("got %q (%s); want %q", got, g.why, tt.want)
			}
		})
	}
}

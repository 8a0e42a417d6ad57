package netmap

import (
	"crypto/rand"
	"encoding/base64"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/gateway"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func hash(c byte) string { return strings.Repeat(string(c), 64) }

func key() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// testStore holds two vnets: default with an HA pair (gwa1 200, gwa2 100)
// for 192.168.10.0/24, a more specific 192.168.10.128/25 on gwb1, and a
// client; branch with its own 192.168.10.0/24 on gwx.
func testStore(t *testing.T) *state.Store {
	t.Helper()
	s := state.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Bootstrap(t0, make([]byte, 32)))
	must(s.CreateVNet("branch", "100.112.0.0/16", t0))
	must(s.CreateToken(state.TokenSpec{ID: "td", SecretHash: hash('a'), VNet: "default", Uses: 10, Expires: t0.Add(time.Hour), AllowRoutes: []string{"192.168.0.0/16"}}, t0))
	must(s.CreateToken(state.TokenSpec{ID: "tb", SecretHash: hash('b'), VNet: "branch", Uses: 10, Expires: t0.Add(time.Hour), AllowRoutes: []string{"192.168.0.0/16"}}, t0))
	for _, j := range []state.JoinSpec{
		{TokenID: "td", SecretHash: hash('a'), PeerID: "a1", Name: "gwa1", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 200}}},
		{TokenID: "td", SecretHash: hash('a'), PeerID: "a2", Name: "gwa2", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}},
		{TokenID: "td", SecretHash: hash('a'), PeerID: "b1", Name: "gwb1", Routes: []api.Route{{Prefix: "192.168.10.128/25", Priority: 100}}},
		{TokenID: "td", SecretHash: hash('a'), PeerID: "c1", Name: "laptop"},
		{TokenID: "tb", SecretHash: hash('b'), PeerID: "x1", Name: "gwx", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}},
	} {
		j.PublicKey, j.CredHash = key(), hash('c')
		if _, err := s.Join(j, t0); err != nil {
			t.Fatalf("join %s: %v", j.Name, err)
		}
	}
	return s
}

func healthyExcept(names ...string) Healthy {
	return func(p *state.Peer) bool {
		for _, n := range names {
			if p.Name == n {
				return false
			}
		}
		return true
	}
}

func TestFullAndDelta(t *testing.T) {
	s := testStore(t)
	s.Read(func(tb *state.Tables, idx uint64) {
		u := Full(tb, idx, "c1")
		if u == nil || !u.Full || u.VNet != "default" || u.Overlay != api.DefaultOverlay || u.Self.Name != "laptop" {
			t.Fatalf("got %+v; want laptop's full map of default", u)
		}
		var names []string
		for _, p := range u.Peers {
			names = append(names, p.Name)
		}
		if got, want := strings.Join(names, ","), "gwa1,gwa2,gwb1"; got != want {
			t.Fatalf("peers %s; want %s (sorted, without self, without other vnets)", got, want)
		}
		if Full(tb, idx, "nobody") != nil {
			t.Fatal("a map for an unknown peer")
		}
		for _, tt := range []struct {
			name    string
			changed []string
			global  bool
			want    string // peers+removed, or "nil"
		}{
			{"nothing of mine", []string{"x1"}, false, "nil"},
			{"a peer in my vnet", []string{"a2"}, false, "gwa2"},
			{"a removed peer", []string{"gone"}, false, "-gone"},
			{"global only", nil, true, ""},
		} {
			t.Run(tt.name, func(t *testing.T) {
				d := Delta(tb, idx, "c1", tt.changed, tt.global)
				if tt.want == "nil" {
					if d != nil {
						t.Fatalf("got %+v; want no update", d)
					}
					return
				}
				var got []string
				for _, p := range d.Peers {
					got = append(got, p.Name)
				}
				for _, r := range d.Removed {
					got = append(got, "-"+r)
				}
				if strings.Join(got, ",") != tt.want || tt.global != (len(d.Coordinators) > 0 || d.GossipKeys != nil) {
					t.Fatalf("got %v (global %v); want %s", got, d.GossipKeys != nil, tt.want)
				}
			})
		}
		if d := Delta(tb, idx, "nobody", nil, false); d == nil || !d.SelfRemoved {
			t.Fatalf("got %+v; want SelfRemoved for a peer that is gone", d)
		}
	})
}

func TestLookupAndRoutes(t *testing.T) {
	s := testStore(t)
	s.Read(func(tb *state.Tables, _ uint64) {
		for _, tt := range []struct {
			name, vnet, ip string
			healthy        Healthy
			prefix, active string
		}{
			{"highest priority wins", "default", "192.168.10.7", healthyExcept(), "192.168.10.0/24", "gwa1"},
			{"standby takes over", "default", "192.168.10.7", healthyExcept("gwa1"), "192.168.10.0/24", "gwa2"},
			{"none healthy", "default", "192.168.10.7", healthyExcept("gwa1", "gwa2"), "192.168.10.0/24", ""},
			{"longest prefix", "default", "192.168.10.200", healthyExcept(), "192.168.10.128/25", "gwb1"},
			{"other vnet keeps its own", "branch", "192.168.10.200", healthyExcept(), "192.168.10.0/24", "gwx"},
			{"no route", "default", "10.9.9.9", healthyExcept(), "", ""},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := Lookup(tb, tt.vnet, netip.MustParseAddr(tt.ip), tt.healthy)
				prefix := ""
				if r.Prefix != nil {
					prefix = *r.Prefix
				}
				if prefix != tt.prefix || r.ActiveGateway != tt.active {
					t.Fatalf("got %s via %q; want %s via %q", prefix, r.ActiveGateway, tt.prefix, tt.active)
				}
			})
		}
		all := Routes(tb, "", healthyExcept())
		if len(all) != 3 || all[0].VNet != "branch" || all[1].Prefix != "192.168.10.0/24" || len(all[1].Gateways) != 2 || all[1].Gateways[0].Name != "gwa1" {
			t.Fatalf("routes %+v; want branch's, then default's /24 (gwa1 first) and /25", all)
		}
		if got := Routes(tb, "branch", healthyExcept()); len(got) != 1 {
			t.Fatalf("branch routes %+v; want 1", got)
		}
	})
}

// TestLookupDrained checks the coordinators' route views follow the rule
// the peers apply (gateway.Choose): drained gwa1 carries the route only
// while gwa2 cannot.
func TestLookupDrained(t *testing.T) {
	s := testStore(t)
	drained := true
	if err := s.UpdatePeer(state.PeerUpdate{PeerID: "a1", Drained: &drained}); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, _ uint64) {
		for _, tt := range []struct {
			name    string
			healthy Healthy
			active  string
			first   api.Gateway
		}{
			{"standby takes over", healthyExcept(), "gwa2", api.Gateway{Name: "gwa2", Priority: 100, Healthy: true,
				State: "active", Reason: "highest-priority healthy gateway"}},
			{"drained alone carries it", healthyExcept("gwa2"), "gwa1", api.Gateway{Name: "gwa1", Priority: 200, Healthy: true, Drained: true,
				State: "active", Reason: "drained, but no undrained gateway is healthy"}},
			{"drained and unhealthy does not", healthyExcept("gwa1", "gwa2"), "", api.Gateway{Name: "gwa1", Priority: 200, Drained: true,
				State: "offline", Reason: "not connected (and drained)"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := Lookup(tb, "default", netip.MustParseAddr("192.168.10.7"), tt.healthy)
				if r.ActiveGateway != tt.active || len(r.Gateways) != 2 || r.Gateways[0] != tt.first {
					t.Fatalf("got %q %+v; want %q with %+v first", r.ActiveGateway, r.Gateways, tt.active, tt.first)
				}
				// The one word for the second gateway: drained while the
				// standby carries it, offline when it is not connected.
				want := map[string]string{"standby takes over": "drained", "drained alone carries it": "offline", "drained and unhealthy does not": "offline"}[tt.name]
				if r.Gateways[1].State != want {
					t.Fatalf("second gateway %+v; want state %s", r.Gateways[1], want)
				}
				for _, ri := range Routes(tb, "default", tt.healthy) {
					if ri.Prefix == "192.168.10.0/24" && ri.ActiveGateway != r.ActiveGateway {
						t.Fatalf("route list says %q; lookup says %q", ri.ActiveGateway, r.ActiveGateway)
					}
				}
			})
		}
	})
}

func TestOverlaps(t *testing.T) {
	s := testStore(t)
	s.Read(func(tb *state.Tables, _ uint64) {
		got := Overlaps(tb)
		var same, cross int
		for _, o := range got {
			if o.SameVNet {
				same++
			} else {
				cross++
			}
		}
		// default: /24 vs /25; across: branch /24 vs default /24 and /25.
		if same != 1 || cross != 2 {
			t.Fatalf("got %+v; want 1 overlap inside default and 2 across vnets", got)
		}
	})
}

// TestOverlapsMoreSpecific: inside a vnet, an overlap says which prefix
// is the more specific and whether each of its gateways has it listed
// exactly by its join token; one that took it from another gateway on a
// wider allowance is flagged.
func TestOverlapsMoreSpecific(t *testing.T) {
	s := testStore(t)
	if err := s.CreateToken(state.TokenSpec{ID: "te", SecretHash: hash('e'), VNet: "default", Uses: 1, Expires: t0.Add(time.Hour), AllowRoutes: []string{"192.168.10.128/25"}}, t0); err != nil {
		t.Fatal(err)
	}
	// gwb1 (in testStore) announces the /25 on its token's /16; gwe has
	// the /25 listed exactly.
	if _, err := s.Join(state.JoinSpec{TokenID: "te", SecretHash: hash('e'), PeerID: "e1", Name: "gwe", PublicKey: key(), CredHash: hash('c'), Routes: []api.Route{{Prefix: "192.168.10.128/25", Priority: 100}}, RouteAuthority: true}, t0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, _ uint64) {
		var got []api.Overlap
		for _, o := range Overlaps(tb) {
			if o.SameVNet {
				got = append(got, o)
			} else if o.MoreSpecific != "" || o.Unauthorized || o.SpecificGateways != nil {
				t.Errorf("overlap across vnets %+v says which is more specific; the vnets keep them apart", o)
			}
		}
		want := []api.OverlapGateway{{Name: "gwb1"}, {Name: "gwe", AllowedExactly: true}}
		if len(got) != 1 || got[0].A.Prefix != "192.168.10.0/24" || got[0].MoreSpecific != "b" || !got[0].Unauthorized || !slices.Equal(got[0].SpecificGateways, want) {
			t.Fatalf("got %+v; want the /25 (b) more specific, announced by gwb1 (not allowed exactly) and gwe (allowed exactly), flagged", got)
		}
	})
}

// TestGatewayStates: peer list's one word per gateway, across its routes;
// none for a peer without routes.
func TestGatewayStates(t *testing.T) {
	s := testStore(t)
	for _, tt := range []struct {
		name    string
		drain   bool
		healthy Healthy
		want    map[string]gateway.State
	}{
		{"all connected", false, healthyExcept(), map[string]gateway.State{"a1": gateway.Active, "a2": gateway.Standby, "b1": gateway.Active, "x1": gateway.Active}},
		{"the active one offline", false, healthyExcept("gwa1"), map[string]gateway.State{"a1": gateway.Offline, "a2": gateway.Active, "b1": gateway.Active, "x1": gateway.Active}},
		{"the active one drained", true, healthyExcept(), map[string]gateway.State{"a1": gateway.Drained, "a2": gateway.Active, "b1": gateway.Active, "x1": gateway.Active}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.drain
			if err := s.UpdatePeer(state.PeerUpdate{PeerID: "a1", Drained: &d}); err != nil {
				t.Fatal(err)
			}
			s.Read(func(tb *state.Tables, _ uint64) {
				if got := GatewayStates(tb, tt.healthy); !maps.Equal(got, tt.want) {
					t.Fatalf("got %v; want %v", got, tt.want)
				}
			})
		})
	}
}

// TestLookupPrefix: the one lookup rule for an address or a CIDR: the
// longest covering route answers, with its active gateway and why; for a
// CIDR the routes inside it are listed; LookupAll keeps the vnets with a
// match.
func TestLookupPrefix(t *testing.T) {
	s := testStore(t)
	s.Read(func(tb *state.Tables, _ uint64) {
		for _, tt := range []struct {
			name, vnet, q  string
			healthy        Healthy
			prefix, active string
			why            string
			covering       []string
			inside         []string
		}{
			{"an address", "default", "192.168.10.7", healthyExcept(), "192.168.10.0/24", "gwa1",
				"active: highest-priority healthy gateway", []string{"192.168.10.0/24"}, nil},
			{"an address in both routes", "default", "192.168.10.200", healthyExcept(), "192.168.10.128/25", "gwb1",
				"active: highest-priority healthy gateway", []string{"192.168.10.128/25", "192.168.10.0/24"}, nil},
			{"a CIDR inside a route, not masked", "default", "192.168.10.1/28", healthyExcept("gwa1"), "192.168.10.0/24", "gwa2",
				"active: highest-priority healthy gateway", []string{"192.168.10.0/24"}, nil},
			{"the route itself", "default", "192.168.10.0/24", healthyExcept(), "192.168.10.0/24", "gwa1",
				"active: highest-priority healthy gateway", []string{"192.168.10.0/24"}, []string{"192.168.10.128/25"}},
			{"a CIDR wider than every route", "default", "192.168.0.0/16", healthyExcept(), "", "",
				"no route covers all of it; routes inside it are listed", nil, []string{"192.168.10.0/24", "192.168.10.128/25"}},
			{"no healthy gateway", "default", "192.168.10.7", healthyExcept("gwa1", "gwa2"), "192.168.10.0/24", "",
				"no healthy gateway", []string{"192.168.10.0/24"}, nil},
			{"nothing", "default", "10.0.0.0/8", healthyExcept(), "", "", "no route", nil, nil},
			{"another family", "default", "::/0", healthyExcept(), "", "", "no route", nil, nil},
		} {
			t.Run(tt.name, func(t *testing.T) {
				q, err := netip.ParsePrefix(tt.q)
				if err != nil {
					a := netip.MustParseAddr(tt.q)
					q = netip.PrefixFrom(a, a.BitLen())
				}
				r := LookupPrefix(tb, tt.vnet, q, tt.q, tt.healthy)
				prefix := ""
				if r.Prefix != nil {
					prefix = *r.Prefix
				}
				var cov, in []string
				for _, c := range r.Covering {
					cov = append(cov, c.Prefix)
				}
				for _, c := range r.Inside {
					in = append(in, c.Prefix)
				}
				if r.IP != tt.q || prefix != tt.prefix || r.ActiveGateway != tt.active || r.Why != tt.why || !slices.Equal(cov, tt.covering) || !slices.Equal(in, tt.inside) {
					t.Fatalf("got %+v; want prefix %q via %q (%s), covering %v, inside %v", r, tt.prefix, tt.active, tt.why, tt.covering, tt.inside)
				}
				if single := q.IsSingleIP(); single != (r.Network == "") {
					t.Fatalf("network %q for %s", r.Network, tt.q)
				}
			})
		}
		all := LookupAll(tb, netip.MustParsePrefix("192.168.10.64/26"), "192.168.10.64/26", healthyExcept())
		if len(all) != 2 || all[0].VNet != "branch" || all[0].ActiveGateway != "gwx" || all[1].VNet != "default" || all[1].ActiveGateway != "gwa1" {
			t.Fatalf("LookupAll %+v; want branch via gwx, default via gwa1", all)
		}
		if none := LookupAll(tb, netip.MustParsePrefix("10.0.0.0/8"), "10.0.0.0/8", healthyExcept()); none == nil || len(none) != 0 {
			t.Fatalf("LookupAll with no match %+v; want an empty list", none)
		}
	})
}

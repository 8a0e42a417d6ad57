package netmap

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

// Peers of default in testStore: gwa1 and gwa2 (192.168.10.0/24), gwb1
// (192.168.10.128/25), laptop (no routes, no tags).
const labPolicy = `{"acls": [
  {"action": "accept", "src": ["peer:laptop"], "dst": ["192.168.10.0/25:443"]},
  {"action": "accept", "src": ["peer:gwa1"], "dst": ["peer:gwa2:*"]}
]}`

func names(ps []api.MapPeer) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return strings.Join(out, ",")
}

func TestDirectoryFromState(t *testing.T) {
	s := testStore(t)
	if err := s.CreateToken(state.TokenSpec{ID: "tt", SecretHash: hash('t'), VNet: "default", Uses: 1, Expires: t0.Add(1e12), Tags: []string{"branch"}}, t0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, _ uint64) {
		d, ids := Directory(tb, "default")
		if d.Len() != 4 || !slices.Equal(ids, []string{"a1", "a2", "b1", "c1"}) {
			t.Fatalf("got %d peers %v; want default's 4 in name order", d.Len(), ids)
		}
		gw := d.Peer(0)
		want := tb.Peers["a1"]
		if gw.Name != "gwa1" || !slices.Equal(gw.Addrs, []netip.Addr{want.OverlayIP}) || !slices.Equal(gw.Subnets, []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24")}) {
			t.Fatalf("got %+v; want gwa1 with its overlay address and subnet", gw)
		}
		// A token's tag is known before any peer carries it.
		if _, err := d.Resolve("tag:branch"); err != nil {
			t.Fatalf("tag of a join token: %v", err)
		}
	})
}

func TestFullAndDeltaUnderPolicy(t *testing.T) {
	s := testStore(t)
	if _, err := s.SetPolicy("default", []byte(labPolicy), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, idx uint64) {
		v := NewView(tb, idx, "default")
		for _, tt := range []struct{ self, want string }{
			// The laptop reaches 192.168.10.0/25: gwa1 and gwa2 announce
			// the /24 around it; gwb1's /25 is the other half.
			{"c1", "gwa1,gwa2"},
			{"a1", "gwa2,laptop"},
			{"a2", "gwa1,laptop"},
			{"b1", ""},
		} {
			u := Full(tb, idx, tt.self)
			if got := names(u.Peers); got != tt.want || u.Self == nil || u.Self.ID != tt.self {
				t.Errorf("%s's full map: %q; want %q", tt.self, got, tt.want)
			}
			// The map carries the policy, for the peer to enforce.
			if p, err := policy.Decode(u.Policy); err != nil || len(p.Rules) != len(tb.Policy("default").Rules) {
				t.Errorf("%s's full map carries policy %s (%v); want the vnet's", tt.self, u.Policy, err)
			}
			if got := names(FullIn(tb, idx, tt.self, v).Peers); got != tt.want {
				t.Errorf("%s's full map with a view: %q; want %q", tt.self, got, tt.want)
			}
		}
		if NewView(tb, idx, "branch") != nil {
			t.Fatal("a vnet without a policy has a view")
		}
		// A resuming watcher gets the changed peers it sees; those it does
		// not see come as removed; its own change brings a full map.
		d := DeltaIn(tb, idx, "c1", []string{"a1", "b1", "gone"}, false, v)
		if names(d.Peers) != "gwa1" || !slices.Equal(d.Removed, []string{"gone", "b1"}) {
			t.Fatalf("got peers %q removed %v; want gwa1, and gone and b1 removed", names(d.Peers), d.Removed)
		}
		if d := DeltaIn(tb, idx, "c1", []string{"c1"}, false, v); !d.Full || names(d.Peers) != "gwa1,gwa2" {
			t.Fatalf("own change: got %+v; want the full map", d)
		}
	})
	// Without the policy, every peer sees every other again.
	if _, err := s.DeletePolicy("default", "admin", t0, 1); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, idx uint64) {
		if u := Full(tb, idx, "b1"); names(u.Peers) != "gwa1,gwa2,laptop" || u.Policy != nil {
			t.Fatalf("got %q with policy %s; want everyone and no policy", names(u.Peers), u.Policy)
		}
	})
}

// TestHAPairSeesEachOther: the gateways of one subnet see each other even
// when no rule lets them talk: they watch each other and hand it over.
func TestHAPairSeesEachOther(t *testing.T) {
	s := testStore(t)
	doc := `{"acls": [{"action": "accept", "src": ["peer:laptop"], "dst": ["192.168.10.0/25:443"]}]}`
	if _, err := s.SetPolicy("default", []byte(doc), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *state.Tables, idx uint64) {
		if got := names(Full(tb, idx, "a1").Peers); got != "gwa2,laptop" {
			t.Fatalf("gwa1 sees %q; want its partner gwa2 and the laptop", got)
		}
		if got := names(Full(tb, idx, "b1").Peers); got != "" {
			t.Fatalf("gwb1, whose /25 lies inside the pair's /24, sees %q; want no one", got)
		}
	})
}

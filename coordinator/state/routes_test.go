package state

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

func ptr[T any](v T) *T { return &v }

// TestTokenMaxPriority: a join token may cap the priority its gateways
// claim; a join announcing more is refused, at the cap it is admitted.
func TestTokenMaxPriority(t *testing.T) {
	s := setup(t)
	for _, tt := range []struct {
		name string
		max  int
	}{{"negative", -1}, {"too high", MaxPriority + 1}} {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateToken(TokenSpec{ID: "bad", SecretHash: hash('b'), VNet: api.DefaultVNet, Uses: 1, Expires: t0.Add(time.Hour), MaxPriority: ptr(tt.max)}, t0)
			if !api.IsCode(err, api.CodeInvalidArgument) {
				t.Fatalf("got %v; want %s", err, api.CodeInvalidArgument)
			}
		})
	}
	if err := s.CreateToken(TokenSpec{ID: "capped", SecretHash: hash('p'), VNet: api.DefaultVNet, Uses: 3, Expires: t0.Add(time.Hour), AllowRoutes: []string{"10.9.0.0/16"}, MaxPriority: ptr(100)}, t0); err != nil {
		t.Fatal(err)
	}
	join := func(name string, prio int) (*Peer, error) {
		return s.Join(JoinSpec{TokenID: "capped", SecretHash: hash('p'), PeerID: name, Name: name, PublicKey: key(), CredHash: hash('c'),
			Routes: []api.Route{{Prefix: "10.9.0.0/16", Priority: prio}}, StrictRetry: true, RouteAuthority: true}, t0)
	}
	before := s.Dump()
	if _, err := join("greedy", 101); !api.IsCode(err, api.CodeRouteNotAllowed) {
		t.Fatalf("priority 101 with a cap of 100: got %v; want %s", err, api.CodeRouteNotAllowed)
	}
	if string(s.Dump()) != string(before) {
		t.Fatal("a refused join changed the state")
	}
	p, err := join("modest", 100)
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxPriority == nil || *p.MaxPriority != 100 {
		t.Fatalf("peer's cap %v; want 100, copied from its token", p.MaxPriority)
	}
	// The caps survive a snapshot.
	r := roundTrip(t, s)
	r.Read(func(tb *Tables, _ uint64) {
		if mp := tb.Tokens["capped"].MaxPriority; mp == nil || *mp != 100 {
			t.Fatalf("token cap %v; want 100", mp)
		}
		if mp := tb.Peers["modest"].MaxPriority; mp == nil || *mp != 100 {
			t.Fatalf("peer cap %v; want 100", mp)
		}
	})
}

// TestRouteAuthority: a gateway cannot announce a prefix strictly inside
// another gateway's route in its vnet unless its token lists that exact
// prefix; a token that allows a /16 does not let its holder take a /24
// inside it from the gateway that announces the /16.
func TestRouteAuthority(t *testing.T) {
	s := setup(t)
	mk := func(id string, allow ...string) {
		t.Helper()
		if err := s.CreateToken(TokenSpec{ID: id, SecretHash: hash(id[0]), VNet: api.DefaultVNet, Uses: 10, Expires: t0.Add(time.Hour), AllowRoutes: allow}, t0); err != nil {
			t.Fatal(err)
		}
	}
	mk("site", "10.1.0.0/16")
	mk("wide", "10.0.0.0/8")
	mk("exact", "10.1.2.0/24")
	if _, err := s.Join(JoinSpec{TokenID: "site", SecretHash: hash('s'), PeerID: "real", Name: "real", PublicKey: key(), CredHash: hash('c'), Routes: []api.Route{{Prefix: "10.1.0.0/16", Priority: 100}}, RouteAuthority: true}, t0); err != nil {
		t.Fatal(err)
	}
	n := 0
	join := func(tok string, authority bool, prefixes ...string) error {
		n++
		j := JoinSpec{TokenID: tok, SecretHash: hash(tok[0]), PeerID: fmt.Sprintf("p%d", n), Name: fmt.Sprintf("gw%d", n), PublicKey: key(), CredHash: hash('c'), RouteAuthority: authority}
		for _, p := range prefixes {
			j.Routes = append(j.Routes, api.Route{Prefix: p, Priority: 10})
		}
		_, err := s.Join(j, t0)
		return err
	}
	for _, tt := range []struct {
		name      string
		token     string
		authority bool
		prefixes  []string
		code      string
	}{
		{"inside another's route", "site", true, []string{"10.1.2.0/24"}, api.CodeRouteNotAllowed},
		{"inside, wider token", "wide", true, []string{"10.1.200.0/25"}, api.CodeRouteNotAllowed},
		{"inside, one of several", "wide", true, []string{"10.7.0.0/16", "10.1.3.0/24"}, api.CodeRouteNotAllowed},
		{"inside, listed exactly", "exact", true, []string{"10.1.2.0/24"}, ""},
		{"same prefix: an HA pair", "site", true, []string{"10.1.0.0/16"}, ""},
		{"disjoint", "wide", true, []string{"10.2.0.0/16"}, ""},
		{"nested in its own route only", "wide", true, []string{"10.3.0.0/16", "10.3.1.0/24"}, ""},
		// A join logged before the rule replays as it applied then.
		{"logged before the rule", "site", false, []string{"10.1.9.0/24"}, ""},
		{"wider prefix", "wide", true, []string{"10.0.0.0/8"}, ""},
		// Now every /16 in 10/8 is inside gw-wide's route.
		{"inside the new wider route", "wide", true, []string{"10.4.0.0/16"}, api.CodeRouteNotAllowed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Dump()
			err := join(tt.token, tt.authority, tt.prefixes...)
			if tt.code == "" {
				if err != nil {
					t.Fatalf("got %v; want the join admitted", err)
				}
				return
			}
			if !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want %s", err, tt.code)
			}
			if string(s.Dump()) != string(before) {
				t.Fatal("a refused join changed the state")
			}
		})
	}
}

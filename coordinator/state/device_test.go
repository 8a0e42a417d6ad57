package state

import (
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// TestLeavePeer: leaving removes the peer; the token gets its use back
// only when the peer never came up (no watch) and left within the retry
// window, and never beyond the token's uses.
func TestLeavePeer(t *testing.T) {
	for _, tt := range []struct {
		name     string
		watched  bool
		after    time.Duration
		usedUp   bool // the token's uses were raised meanwhile, none spent
		refund   bool
		usesLeft int
	}{
		{name: "never came up", after: time.Second, refund: true, usesLeft: 2},
		{name: "had come up", watched: true, after: time.Second, usesLeft: 1},
		{name: "left after the retry window", after: JoinRetryWindow, usesLeft: 1},
		{name: "never beyond the token's uses", after: time.Second, usedUp: true, usesLeft: 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := setup(t)
			if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "laptop", PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
				t.Fatal(err)
			}
			if tt.watched {
				s.MarkWatches("c1", []string{"p1"}, nil)
			}
			if tt.usedUp {
				s.t.Tokens["tok1"].UsesLeft = 2 // as if an admin had refilled it
			}
			refunded, err := s.LeavePeer("p1", t0.Add(tt.after), nil)
			if err != nil {
				t.Fatal(err)
			}
			var left, peers int
			s.Read(func(tb *Tables, _ uint64) { left, peers = tb.Tokens["tok1"].UsesLeft, len(tb.Peers) })
			if refunded != tt.refund || left != tt.usesLeft || peers != 0 {
				t.Fatalf("refunded %v, uses left %d, %d peers; want %v, %d, 0", refunded, left, peers, tt.refund, tt.usesLeft)
			}
			if _, ok := s.PeerIDByName(api.DefaultVNet, "laptop"); ok {
				t.Fatal("name still indexed")
			}
			if _, err := s.LeavePeer("p1", t0, nil); !api.IsCode(err, api.CodeNotFound) {
				t.Fatalf("second leave: %v; want %s", err, api.CodeNotFound)
			}
		})
	}
}

func TestAddDevice(t *testing.T) {
	s := setup(t)
	k := key()
	p, err := s.AddDevice(DeviceSpec{PeerID: "d1", Name: "phone", VNet: api.DefaultVNet, PublicKey: k, Tags: []string{"mobile"}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if p.Role != api.RoleDevice || p.OverlayIP.String() != "100.96.0.1" || p.CredHash != "" || len(p.Routes) != 0 || p.Tags[0] != "mobile" {
		t.Fatalf("got %+v; want a device at 100.96.0.1 with no credential and no routes", p)
	}
	before := s.Dump()
	for _, tt := range []struct {
		name string
		spec DeviceSpec
		code string
	}{
		{"name taken", DeviceSpec{PeerID: "d2", Name: "phone", VNet: api.DefaultVNet, PublicKey: key()}, api.CodeConflict},
		{"key taken", DeviceSpec{PeerID: "d2", Name: "tablet", VNet: api.DefaultVNet, PublicKey: k}, api.CodeConflict},
		{"id taken", DeviceSpec{PeerID: "d1", Name: "tablet", VNet: api.DefaultVNet, PublicKey: key()}, api.CodeConflict},
		{"no vnet", DeviceSpec{PeerID: "d2", Name: "tablet", VNet: "nope", PublicKey: key()}, api.CodeNotFound},
		{"bad name", DeviceSpec{PeerID: "d2", Name: "Tablet", VNet: api.DefaultVNet, PublicKey: key()}, api.CodeInvalidName},
		{"bad key", DeviceSpec{PeerID: "d2", Name: "tablet", VNet: api.DefaultVNet, PublicKey: "AAAA"}, api.CodeInvalidKey},
		{"bad tag", DeviceSpec{PeerID: "d2", Name: "tablet", VNet: api.DefaultVNet, PublicKey: key(), Tags: []string{"A B"}}, api.CodeInvalidArgument},
		{"no id", DeviceSpec{Name: "tablet", VNet: api.DefaultVNet, PublicKey: key()}, api.CodeInvalidArgument},
	} {
		if _, err := s.AddDevice(tt.spec, t0); !api.IsCode(err, tt.code) {
			t.Errorf("%s: got %v; want %s", tt.name, err, tt.code)
		}
	}
	if string(s.Dump()) != string(before) {
		t.Fatal("a refused device changed the state")
	}
	// A device survives a snapshot round trip like any peer.
	r := roundTrip(t, s)
	if id, ok := r.PeerIDByKey(k); !ok || id != "d1" {
		t.Fatalf("restored: %q %v", id, ok)
	}
}

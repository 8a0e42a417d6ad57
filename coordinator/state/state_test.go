package state

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func key() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func hash(c byte) string { return strings.Repeat(string(c), 64) }

func setup(t *testing.T) *Store {
	t.Helper()
	s := New()
	s.SetIndex(1)
	if err := s.Bootstrap(t0, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(TokenSpec{ID: "tok1", SecretHash: hash('a'), VNet: api.DefaultVNet, Uses: 2, Expires: t0.Add(time.Hour), AllowRoutes: []string{"10.1.0.0/16"}}, t0); err != nil {
		t.Fatal(err)
	}
	s.Applied(1)
	return s
}

// roundTrip restores a snapshot of s into a new store and fails t unless
// the restored store dumps as s does; it returns the restored store.
func roundTrip(t *testing.T, s *Store) *Store {
	t.Helper()
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if got, want := r.Dump(), s.Dump(); !bytes.Equal(got, want) {
		t.Fatalf("restore changed the state:\n got %s\nwant %s", got, want)
	}
	return r
}

func TestJoin(t *testing.T) {
	s := setup(t)
	k1 := key()
	p, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "gw1", PublicKey: k1, CredHash: hash('c'), Routes: []api.Route{{Prefix: "10.1.2.0/24", Priority: 10}}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if p.OverlayIP.String() != "100.96.0.1" || p.Role != api.RoleGateway {
		t.Fatalf("got %v %v; want 100.96.0.1 gateway", p.OverlayIP, p.Role)
	}
	for _, tt := range []struct {
		name string
		spec JoinSpec
		now  time.Time
		code string
	}{
		{"wrong secret", JoinSpec{TokenID: "tok1", SecretHash: hash('b'), PeerID: "x", Name: "a", PublicKey: key(), CredHash: hash('c')}, t0, api.CodeTokenUnknown},
		{"unknown token", JoinSpec{TokenID: "nope", SecretHash: hash('a'), PeerID: "x", Name: "a", PublicKey: key(), CredHash: hash('c')}, t0, api.CodeTokenUnknown},
		{"expired", JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "x", Name: "a", PublicKey: key(), CredHash: hash('c')}, t0.Add(2 * time.Hour), api.CodeTokenExpired},
		{"duplicate name", JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "x", Name: "gw1", PublicKey: key(), CredHash: hash('c')}, t0, api.CodeConflict},
		{"bad key", JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "x", Name: "a", PublicKey: "AAAA", CredHash: hash('c')}, t0, api.CodeInvalidKey},
		{"route not allowed", JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "x", Name: "a", PublicKey: key(), CredHash: hash('c'), Routes: []api.Route{{Prefix: "10.2.0.0/24"}}}, t0, api.CodeRouteNotAllowed},
		{"bad name", JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "x", Name: "-A", PublicKey: key(), CredHash: hash('c')}, t0, api.CodeInvalidName},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Dump()
			_, err := s.Join(tt.spec, tt.now)
			if !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want code %s", err, tt.code)
			}
			if string(s.Dump()) != string(before) {
				t.Fatalf("a refused join changed the state")
			}
		})
	}
	if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p2", Name: "c2", PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
		t.Fatal(err)
	}
	_, err = s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p3", Name: "c3", PublicKey: key(), CredHash: hash('c')}, t0)
	if !api.IsCode(err, api.CodeTokenUsedUp) {
		t.Fatalf("got %v; want %s", err, api.CodeTokenUsedUp)
	}
	// A lost-answer retry of the first join gets the same identity.
	again, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p9", Name: "gw1", PublicKey: k1, CredHash: hash('d')}, t0.Add(time.Second))
	if err != nil || again.ID != "p1" {
		t.Fatalf("retry: got %v, %v; want p1", again, err)
	}
	ids, _, ok := s.ChangesSince(api.DefaultVNet, 0)
	if !ok || len(ids) == 0 {
		t.Fatalf("got changes %v ok=%v; want some", ids, ok)
	}
}

func TestSnapshotRoundTripEveryTable(t *testing.T) {
	s := setup(t)
	if err := s.CreateVNet("site", "100.112.0.0/16", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "gw1", PublicKey: key(), CredHash: hash('c'), Endpoints: []string{"192.0.2.1:51820"}}, t0); err != nil {
		t.Fatal(err)
	}
	relay := "198.51.100.7:49170"
	if err := s.UpdatePeer(PeerUpdate{PeerID: "p1", Relay: &relay}); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterCoordinator(Coordinator{Name: "c1", RaftAddr: "127.0.0.1:1", APIURL: "https://127.0.0.1:2",
		STUNAddr: "127.0.0.1:3478", RelayIP: "127.0.0.1", RelayTLSAddr: "127.0.0.1:5349"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RotateGossipKey(make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	r := roundTrip(t, s)
	if id, ok := r.PeerIDByName(api.DefaultVNet, "gw1"); !ok || id != "p1" {
		t.Fatalf("indexes not rebuilt: got %q %v", id, ok)
	}
	var got Peer
	var c Coordinator
	r.Read(func(t *Tables, _ uint64) { got, c = *t.Peers["p1"], *t.Coordinators["c1"] })
	if got.Relay != relay || c.RelayIP != "127.0.0.1" || c.RelayTLSAddr != "127.0.0.1:5349" {
		t.Fatalf("restored relay %q, coordinator %+v; want %s and the relay addresses", got.Relay, c, relay)
	}
}

// TestUpdatePeerRelay: a peer's relayed address is set, kept, cleared and
// validated like its endpoints; only a real change reaches the map.
func TestUpdatePeerRelay(t *testing.T) {
	s := setup(t)
	if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "p1", PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
		t.Fatal(err)
	}
	str := func(s string) *string { return &s }
	for _, tt := range []struct {
		name    string
		relay   *string
		code    string
		want    string
		changed bool
	}{
		{"set", str("192.0.2.10:50000"), "", "192.0.2.10:50000", true},
		{"unchanged", str("192.0.2.10:50000"), "", "192.0.2.10:50000", false},
		{"absent leaves it", nil, "", "192.0.2.10:50000", false},
		{"ipv6", str("[2001:db8::1]:3479"), "", "[2001:db8::1]:3479", true},
		{"no port", str("192.0.2.10"), api.CodeInvalidArgument, "[2001:db8::1]:3479", false},
		{"port zero", str("192.0.2.10:0"), api.CodeInvalidArgument, "[2001:db8::1]:3479", false},
		{"unspecified", str("0.0.0.0:50000"), api.CodeInvalidArgument, "[2001:db8::1]:3479", false},
		{"host name", str("relay.example.net:3478"), api.CodeInvalidArgument, "[2001:db8::1]:3479", false},
		{"cleared", str(""), "", "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, dump := s.MapChanges(), s.Dump()
			err := s.UpdatePeer(PeerUpdate{PeerID: "p1", Relay: tt.relay})
			if tt.code != "" {
				if !api.IsCode(err, tt.code) {
					t.Fatalf("got %v; want code %s", err, tt.code)
				}
				if string(s.Dump()) != string(dump) {
					t.Fatal("a refused update changed the state")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			var got string
			s.Read(func(tb *Tables, _ uint64) { got = tb.Peers["p1"].Relay })
			if got != tt.want {
				t.Fatalf("got relay %q; want %q", got, tt.want)
			}
			if changed := s.MapChanges() != before; changed != tt.changed {
				t.Fatalf("map changed %v; want %v", changed, tt.changed)
			}
		})
	}
}

// TestReapEphemeralSparesWatchedPeers: an ephemeral peer offline past the
// grace goes; one whose watch a coordinator holds stays, however old its
// LastSeen (it is written when a watch ends, not while one is open).
func TestReapEphemeralSparesWatchedPeers(t *testing.T) {
	s := setup(t)
	if err := s.CreateToken(TokenSpec{ID: "eph", SecretHash: hash('e'), VNet: api.DefaultVNet, Uses: 2, Expires: t0.Add(time.Hour), Ephemeral: true}, t0); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"gone", "watched"} {
		if _, err := s.Join(JoinSpec{TokenID: "eph", SecretHash: hash('e'), PeerID: id, Name: id, PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
			t.Fatal(err)
		}
	}
	s.MarkWatches("c1", []string{"watched"}, nil)
	if got := s.ReapEphemeral(t0.Add(time.Hour), 10*time.Minute, nil); !slices.Equal(got, []string{"gone"}) {
		t.Fatalf("reaped %v; want [gone]", got)
	}
	// The watch ends at t0+50m, carrying that time: the peer is offline
	// from then, and goes only once the grace has passed after it.
	s.MarkWatches("c1", nil, map[string]time.Time{"watched": t0.Add(50 * time.Minute)})
	if got := s.ReapEphemeral(t0.Add(55*time.Minute), 10*time.Minute, nil); len(got) != 0 {
		t.Fatalf("reaped %v 5 minutes after its watch ended; want none within the 10-minute grace", got)
	}
	if got := s.ReapEphemeral(t0.Add(61*time.Minute), 10*time.Minute, nil); !slices.Equal(got, []string{"watched"}) {
		t.Fatalf("reaped %v 11 minutes after its watch ended; want [watched]", got)
	}
}

// TestMarkWatches: a coordinator marks the watches it holds and clears only
// its own marks; a release carries the time the watch ended.
func TestMarkWatches(t *testing.T) {
	ended := t0.Add(time.Minute)
	for _, tt := range []struct {
		name         string
		marks        func(s *Store)
		wantBy       string
		wantWatcher  bool
		wantLastSeen time.Time
	}{
		{"never watched", func(s *Store) {}, "", false, t0},
		{"held", func(s *Store) { s.MarkWatches("c1", []string{"p1"}, nil) }, "c1", true, t0},
		{"held then released", func(s *Store) {
			s.MarkWatches("c1", []string{"p1"}, nil)
			s.MarkWatches("c1", nil, map[string]time.Time{"p1": ended})
		}, "", true, ended},
		{"moved: the old holder's release leaves the new mark", func(s *Store) {
			s.MarkWatches("c1", []string{"p1"}, nil)
			s.MarkWatches("c2", []string{"p1"}, nil)
			s.MarkWatches("c1", nil, map[string]time.Time{"p1": ended})
		}, "c2", true, ended},
		{"an older end time does not move last seen back", func(s *Store) {
			s.MarkWatches("c1", nil, map[string]time.Time{"p1": t0.Add(-time.Hour)})
		}, "", false, t0},
		{"unknown peers are skipped", func(s *Store) {
			s.MarkWatches("c1", []string{"nope"}, map[string]time.Time{"gone": ended})
		}, "", false, t0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := setup(t)
			if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "p1", PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
				t.Fatal(err)
			}
			before := s.MapChanges()
			tt.marks(s)
			var p Peer
			s.Read(func(tb *Tables, _ uint64) { p = *tb.Peers["p1"] })
			if p.WatchedBy != tt.wantBy || p.Watcher != tt.wantWatcher || !p.LastSeen.Equal(tt.wantLastSeen) {
				t.Fatalf("got watched_by %q watcher %v last_seen %v; want %q %v %v", p.WatchedBy, p.Watcher, p.LastSeen, tt.wantBy, tt.wantWatcher, tt.wantLastSeen)
			}
			if got := s.MapChanges(); got != before {
				t.Fatalf("map changes went from %d to %d; want none (marks are not in any map)", before, got)
			}
		})
	}
}

// TestJoinRetry is the attack of a join that repeats a victim's name and
// public key (both visible to every peer of the vnet) with the token the
// victim joined with: only the holder of the victim's credential, or a
// fresh use of a token that is still valid, gets the identity back.
func TestJoinRetry(t *testing.T) {
	for _, tt := range []struct {
		name    string
		spoil   func(s *Store) // what happened to the token since the first join
		at      time.Duration  // retry this long after the first join
		cred    byte           // the retry's credential hash
		code    string         // "" for admitted
		newCred bool           // the retry replaced the credential
	}{
		{name: "same credential", cred: 'c', at: time.Second},
		{name: "same credential, token revoked", spoil: revoke, cred: 'c', at: time.Second},
		{name: "same credential, token used up", spoil: useUp, cred: 'c', at: time.Second},
		{name: "same credential, token expired", cred: 'c', at: 90 * time.Second},
		{name: "new credential, token still valid", cred: 'd', at: time.Second, newCred: true},
		{name: "new credential, token revoked", spoil: revoke, cred: 'd', at: time.Second, code: api.CodeTokenRevoked},
		{name: "new credential, token used up", spoil: useUp, cred: 'd', at: time.Second, code: api.CodeTokenUsedUp},
		{name: "new credential, token expired", cred: 'd', at: 90 * time.Second, code: api.CodeTokenExpired},
		{name: "after the retry window", cred: 'c', at: JoinRetryWindow + time.Second, code: api.CodeTokenExpired},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			s.SetIndex(1)
			if err := s.Bootstrap(t0, make([]byte, 32)); err != nil {
				t.Fatal(err)
			}
			if err := s.CreateToken(TokenSpec{ID: "tok1", SecretHash: hash('a'), VNet: api.DefaultVNet, Uses: 3, Expires: t0.Add(time.Minute)}, t0); err != nil {
				t.Fatal(err)
			}
			victim := key()
			if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "victim", PublicKey: victim, CredHash: hash('c'), StrictRetry: true}, t0); err != nil {
				t.Fatal(err)
			}
			if tt.spoil != nil {
				tt.spoil(s)
			}
			before := s.Dump()
			usesBefore := s.t.Tokens["tok1"].UsesLeft
			p, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p2", Name: "victim", PublicKey: victim, CredHash: hash(tt.cred), StrictRetry: true}, t0.Add(tt.at))
			if tt.code != "" {
				if !api.IsCode(err, tt.code) {
					t.Fatalf("got %v, %v; want code %s", p, err, tt.code)
				}
				if string(s.Dump()) != string(before) {
					t.Fatal("a refused retry changed the state")
				}
				return
			}
			if err != nil || p.ID != "p1" {
				t.Fatalf("got %v, %v; want the identity p1 back", p, err)
			}
			wantCred, wantUses := hash('c'), usesBefore
			if tt.newCred {
				wantCred, wantUses = hash(tt.cred), usesBefore-1
			}
			if got := s.t.Peers["p1"].CredHash; got != wantCred {
				t.Fatalf("credential hash %s; want %s", got[:4], wantCred[:4])
			}
			if got := s.t.Tokens["tok1"].UsesLeft; got != wantUses {
				t.Fatalf("token has %d uses left; want %d", got, wantUses)
			}
		})
	}
}

func revoke(s *Store) {
	if err := s.RevokeToken("tok1", t0); err != nil {
		panic(err)
	}
}

func useUp(s *Store) { s.t.Tokens["tok1"].UsesLeft = 0 }

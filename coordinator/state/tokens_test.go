package state

import (
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

func TestTokenDeadFor(t *testing.T) {
	day := 24 * time.Hour
	for _, tt := range []struct {
		name    string
		tok     Token
		at      time.Duration // after t0
		dead    bool
		deadFor time.Duration
	}{
		{"valid", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(day)}, time.Hour, false, 0},
		{"expired", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(time.Hour)}, 3 * time.Hour, true, 2 * time.Hour},
		{"expired at this instant", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(time.Hour)}, time.Hour, true, 0},
		{"revoked", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(day), Revoked: true, RevokedAt: t0.Add(time.Hour)}, 4 * time.Hour, true, 3 * time.Hour},
		{"revoked by a version that kept no time", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(day), Revoked: true, CreatedAt: t0}, 4 * time.Hour, true, 4 * time.Hour},
		{"used up", Token{Uses: 2, UsesLeft: 0, Expires: t0.Add(2 * day), LastUsed: t0.Add(time.Hour)}, 5 * time.Hour, true, 4 * time.Hour},
		{"used up within the retry window", Token{Uses: 1, UsesLeft: 0, Expires: t0.Add(day), LastUsed: t0.Add(time.Hour)}, time.Hour + JoinRetryWindow - time.Second, false, 0},
		{"used up, the window just over", Token{Uses: 1, UsesLeft: 0, Expires: t0.Add(day), LastUsed: t0.Add(time.Hour)}, time.Hour + JoinRetryWindow, true, JoinRetryWindow},
		{"used up by a version that kept no time", Token{Uses: 1, UsesLeft: 0, Expires: t0.Add(2 * day), CreatedAt: t0}, day, true, day},
		{"revoked, then expired: dead since the earlier", Token{Uses: 1, UsesLeft: 1, Expires: t0.Add(2 * time.Hour), Revoked: true, RevokedAt: t0.Add(time.Hour)}, 5 * time.Hour, true, 4 * time.Hour},
		{"used up and expired: the expiry counts though the use is recent", Token{Uses: 1, UsesLeft: 0, Expires: t0.Add(time.Hour), LastUsed: t0.Add(2 * time.Hour)}, 2*time.Hour + time.Second, true, time.Hour + time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, dead := tt.tok.deadFor(t0.Add(tt.at))
			if dead != tt.dead || got != tt.deadFor {
				t.Fatalf("deadFor = %s, %v; want %s, %v", got, dead, tt.deadFor, tt.dead)
			}
		})
	}
}

// TestPruneTokens: revoking twice is refused; DeadTokens picks by age,
// PruneTokens deletes only what is still dead, and the result survives a
// snapshot round trip.
func TestPruneTokens(t *testing.T) {
	s := setup(t)
	mk := func(id string, uses int, ttl time.Duration) {
		t.Helper()
		if err := s.CreateToken(TokenSpec{ID: id, SecretHash: hash(id[0]), VNet: api.DefaultVNet, Uses: uses, Expires: t0.Add(ttl)}, t0); err != nil {
			t.Fatal(err)
		}
	}
	mk("valid", 1, 48*time.Hour)
	mk("expired", 1, time.Hour)
	mk("revoked", 1, 48*time.Hour)
	mk("used", 1, 48*time.Hour)
	mk("usedlate", 1, 48*time.Hour)
	if err := s.RevokeToken("revoked", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken("revoked", t0.Add(2*time.Minute)); !api.IsCode(err, api.CodeAlreadyRevoked) {
		t.Fatalf("second revoke: got %v; want %s", err, api.CodeAlreadyRevoked)
	}
	if err := s.RevokeToken("nope", t0); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("revoke unknown: got %v; want %s", err, api.CodeNotFound)
	}
	if _, err := s.Join(JoinSpec{TokenID: "used", SecretHash: hash('u'), PeerID: "p1", Name: "p1", PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(2 * time.Hour)
	if _, err := s.Join(JoinSpec{TokenID: "usedlate", SecretHash: hash('u'), PeerID: "p2", Name: "p2", PublicKey: key(), CredHash: hash('c')}, now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	var dead, old []string
	s.Read(func(tb *Tables, _ uint64) {
		dead = tb.DeadTokens(now, 0)
		old = tb.DeadTokens(now, 90*time.Minute)
		if got := tb.Tokens["revoked"].RevokedAt; !got.Equal(t0.Add(time.Minute)) {
			t.Errorf("RevokedAt %s; want the first revocation's time", got)
		}
		if got := tb.Tokens["usedlate"].LastUsed; !got.Equal(now.Add(-time.Minute)) {
			t.Errorf("LastUsed %s; want the join's time", got)
		}
	})
	// setup's tok1 expired at t0+1h too.
	if want := []string{"expired", "revoked", "tok1", "used"}; !slices.Equal(dead, want) {
		t.Fatalf("DeadTokens(0) = %v; want %v (usedlate is within the retry window)", dead, want)
	}
	if want := []string{"revoked", "used"}; !slices.Equal(old, want) {
		t.Fatalf("DeadTokens(90m) = %v; want %v (expired 1h ago)", old, want)
	}
	// A token the writer chose that is alive again by the time the
	// command applies (or is gone, or was never dead) stays.
	got := s.PruneTokens(append(dead, "valid", "nope", "expired"), now)
	if want := []string{"expired", "revoked", "tok1", "used"}; !slices.Equal(got, want) {
		t.Fatalf("PruneTokens = %v; want %v", got, want)
	}
	r := roundTrip(t, s)
	r.Read(func(tb *Tables, _ uint64) {
		var ids []string
		for id := range tb.Tokens {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		if want := []string{"usedlate", "valid"}; !slices.Equal(ids, want) {
			t.Fatalf("tokens after prune and restore %v; want %v", ids, want)
		}
		if !tb.Tokens["usedlate"].LastUsed.Equal(now.Add(-time.Minute)) {
			t.Fatal("LastUsed lost in the snapshot")
		}
	})
}

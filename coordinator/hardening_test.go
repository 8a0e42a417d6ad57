package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// The tests in this file are the attacks of issue 13's hardening findings,
// run against one coordinator through its public API.

func randomSecret() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// TestJoinRetryCannotStealIdentity: a join that repeats a victim's name
// and public key (every peer of the vnet sees both) with the token the
// victim joined with must not re-issue the victim's credential once that
// token is revoked, expired or used up. The victim's own repeat (the same
// credential secret, as after a lost answer) still gets its identity back.
func TestJoinRetryCannotStealIdentity(t *testing.T) {
	var skew atomic.Int64 // the coordinator's clock runs this far ahead
	srv, admin, _ := startSingleWith(t, func(c *Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		uses  int
		spoil func(t *testing.T, tok api.CreateTokenResponse)
		code  string
	}{
		{name: "revoked", uses: 5, code: api.CodeTokenRevoked, spoil: func(t *testing.T, tok api.CreateTokenResponse) {
			if err := admin.Do(ctx, http.MethodPost, "/v1/tokens/"+tok.ID+"/revoke", nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "used up", uses: 1, code: api.CodeTokenUsedUp},
		{name: "expired", uses: 5, code: api.CodeTokenExpired, spoil: func(*testing.T, api.CreateTokenResponse) {
			skew.Add(int64(61 * time.Second)) // past the token's 1m, within the retry window
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tok api.CreateTokenResponse
			if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: tt.uses, TTL: "1m"}, &tok); err != nil {
				t.Fatal(err)
			}
			name := "victim-" + tt.name[:4]
			victimReq := api.JoinRequest{Name: name, PublicKey: wgKey(), CredentialSecret: randomSecret()}
			victim, err := apiclient.Join(ctx, tok.Token, victimReq)
			if err != nil {
				t.Fatal(err)
			}
			if tt.spoil != nil {
				tt.spoil(t, tok)
			}
			before := srv.Store().Dump()
			// The attacker holds the token and read name and key from the map.
			stolen, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: victimReq.PublicKey})
			if !api.IsCode(err, tt.code) {
				t.Fatalf("attacker's join: got %+v, %v; want code %s", stolen, err, tt.code)
			}
			stolen, err = apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: victimReq.PublicKey, CredentialSecret: randomSecret()})
			if !api.IsCode(err, tt.code) {
				t.Fatalf("attacker's join with a secret of its own: got %+v, %v; want code %s", stolen, err, tt.code)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("a refused join changed the state")
			}
			vc := apiclient.New(admin.URLs(), srv.Pin(), victim.Credential)
			if err := vc.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{}, nil); err != nil {
				t.Fatalf("the victim's credential after the attack: %v; want it accepted", err)
			}
			// The victim's repeat of its own join (its answer lost) proves
			// the credential and gets the same identity.
			again, err := apiclient.Join(ctx, tok.Token, victimReq)
			if err != nil {
				t.Fatalf("the victim's repeated join: %v", err)
			}
			if again.PeerID != victim.PeerID || again.Credential != victim.Credential || again.OverlayIP != victim.OverlayIP {
				t.Fatalf("repeated join gave %s %s; want %s %s and the same credential", again.PeerID, again.OverlayIP, victim.PeerID, victim.OverlayIP)
			}
		})
	}

	t.Run("still valid token", func(t *testing.T) {
		// A repeat without the credential that takes a fresh use of a
		// valid token replaces the credential (peers that pick none).
		var tok api.CreateTokenResponse
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 2}, &tok); err != nil {
			t.Fatal(err)
		}
		req := api.JoinRequest{Name: "old-agent", PublicKey: wgKey()}
		first, err := apiclient.Join(ctx, tok.Token, req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := apiclient.Join(ctx, tok.Token, req)
		if err != nil || again.PeerID != first.PeerID {
			t.Fatalf("got %+v, %v; want the identity %s again", again, err, first.PeerID)
		}
		var toks []api.Token
		if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
			t.Fatal(err)
		}
		for _, x := range toks {
			if x.ID == tok.ID && x.UsesLeft != 0 {
				t.Fatalf("token has %d uses left; want 0 (the repeat took one)", x.UsesLeft)
			}
		}
	})
}

package coordinator

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// TestTokenRevokePrune: revoking twice answers 409 already_revoked;
// POST /v1/tokens/prune removes the revoked token and keeps the valid one;
// the leader removes by itself what has been dead for a day.
func TestTokenRevokePrune(t *testing.T) {
	var skew atomic.Int64 // the coordinator's clock runs this far ahead
	_, admin, _ := startSingleWith(t, func(c *Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	ctx := context.Background()
	create := func(ttl string) string {
		t.Helper()
		var tok api.CreateTokenResponse
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{TTL: ttl}, &tok); err != nil {
			t.Fatal(err)
		}
		return tok.ID
	}
	list := func() map[string]api.Token {
		t.Helper()
		var out []api.Token
		if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &out); err != nil {
			t.Fatal(err)
		}
		m := map[string]api.Token{}
		for _, tk := range out {
			m[tk.ID] = tk
		}
		return m
	}
	revoke := func(id string) error {
		return admin.Do(ctx, http.MethodPost, "/v1/tokens/"+id+"/revoke", nil, nil)
	}
	valid, gone := create("72h"), create("72h")
	if err := revoke(gone); err != nil {
		t.Fatal(err)
	}
	err := revoke(gone)
	var ae *api.Error
	if !api.IsCode(err, api.CodeAlreadyRevoked) || !errors.As(err, &ae) || ae.Status() != http.StatusConflict {
		t.Fatalf("second revoke: got %v; want %s (409)", err, api.CodeAlreadyRevoked)
	}
	var res api.PruneTokensResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens/prune", nil, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Pruned) != 1 || res.Pruned[0].ID != gone || !res.Pruned[0].Revoked {
		t.Fatalf("prune: %+v; want the revoked %s alone", res.Pruned, gone)
	}
	if m := list(); len(m) != 1 || m[valid].ID != valid {
		t.Fatalf("tokens after prune %v; want %s alone", m, valid)
	}

	// Revoked now, dead for a day by the coordinator's clock later: the
	// leader prunes it; the valid one (expiring in 72h) stays.
	old := create("72h")
	if err := revoke(old); err != nil {
		t.Fatal(err)
	}
	if _, ok := list()[old]; !ok {
		t.Fatal("revoked token pruned before it had been dead for a day")
	}
	skew.Store(int64(25 * time.Hour))
	waitFor(t, 15*time.Second, "the leader to prune the token revoked a day ago", func() bool {
		_, ok := list()[old]
		return !ok
	})
	if _, ok := list()[valid]; !ok {
		t.Fatal("the leader pruned a valid token")
	}
}

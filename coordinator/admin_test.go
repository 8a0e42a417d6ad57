package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// createAdmin makes a named admin credential through admin and returns it.
func createAdmin(t *testing.T, admin *apiclient.Client, name string, readOnly bool) string {
	t.Helper()
	var res api.CreateAdminTokenResponse
	if err := admin.Do(context.Background(), http.MethodPost, "/v1/admin/tokens", api.CreateAdminTokenRequest{Name: name, ReadOnly: readOnly}, &res); err != nil {
		t.Fatalf("create admin token %s: %v", name, err)
	}
	if res.Name != name || res.ReadOnly != readOnly || res.ID == "" || res.Token == "" {
		t.Fatalf("got %+v; want %s (read-only %t) with an id and a token", res, name, readOnly)
	}
	return res.Token
}

// TestAdminReadOnly: a read-only admin credential gets 403 on every admin
// call that changes something (and changes nothing), and 200 on every one
// that reads.
func TestAdminReadOnly(t *testing.T) {
	srv, admin := startSingle(t)
	ro := createAdmin(t, admin, "grafana", true)
	policy := []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	for _, tt := range []struct {
		method, path string
		body         []byte
		want         int
	}{
		{http.MethodGet, "/v1/cluster/status", nil, http.StatusOK},
		{http.MethodGet, "/v1/vnets", nil, http.StatusOK},
		{http.MethodGet, "/v1/vnets/default/policy", nil, http.StatusOK},
		{http.MethodGet, "/v1/vnets/default/policy/test?src=100.96.0.1&dst=100.96.0.2:443", nil, http.StatusOK},
		{http.MethodGet, "/v1/tokens", nil, http.StatusOK},
		{http.MethodGet, "/v1/admin/tokens", nil, http.StatusOK},
		{http.MethodGet, "/v1/peers", nil, http.StatusOK},
		{http.MethodGet, "/v1/routes", nil, http.StatusOK},
		{http.MethodGet, "/v1/routes/lookup?ip=10.0.0.1", nil, http.StatusOK},
		{http.MethodGet, "/v1/routes/overlaps", nil, http.StatusOK},
		{http.MethodPost, "/v1/vnets", []byte(`{"name":"x","overlay":"100.112.0.0/16"}`), http.StatusForbidden},
		{http.MethodDelete, "/v1/vnets/default", nil, http.StatusForbidden},
		{http.MethodPut, "/v1/vnets/default/policy", policy, http.StatusForbidden},
		{http.MethodDelete, "/v1/vnets/default/policy", nil, http.StatusForbidden},
		{http.MethodPost, "/v1/tokens", []byte(`{}`), http.StatusForbidden},
		{http.MethodPost, "/v1/tokens/x/revoke", nil, http.StatusForbidden},
		{http.MethodPost, "/v1/admin/tokens", []byte(`{"name":"sneaky"}`), http.StatusForbidden},
		{http.MethodPost, "/v1/admin/tokens/grafana/revoke", nil, http.StatusForbidden},
		{http.MethodDelete, "/v1/peers/default/x", nil, http.StatusForbidden},
		{http.MethodPost, "/v1/peers/default/x/drain", nil, http.StatusForbidden},
		{http.MethodPost, "/v1/peers/default/x/undrain", nil, http.StatusForbidden},
		{http.MethodPost, "/v1/gossip/rotate-key", nil, http.StatusForbidden},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			before := srv.Store().Dump()
			code, aerr := rawCall(t, srv, tt.method, tt.path, tt.body, ro)
			if code != tt.want {
				t.Fatalf("got %d %v; want %d", code, aerr, tt.want)
			}
			if tt.want == http.StatusForbidden && (aerr == nil || aerr.Code != api.CodeForbidden || !strings.Contains(aerr.Message, "read-only")) {
				t.Fatalf("got %+v; want a forbidden error that says the credential is read-only", aerr)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("the call changed the state")
			}
		})
	}
}

// TestAdminCredentialNames: writes record the name of the admin credential
// that made them; the bootstrap credential is "admin".
func TestAdminCredentialNames(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	ops := apiclient.New(admin.URLs(), srv.Pin(), createAdmin(t, admin, "ops", false))
	if _, err := setPolicy(ops, api.DefaultVNet, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`); err != nil {
		t.Fatal(err)
	}
	if _, err := setPolicy(admin, api.DefaultVNet, `{"acls": []}`); err != nil {
		t.Fatal(err)
	}
	var pol api.Policy
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy", nil, &pol); err != nil {
		t.Fatal(err)
	}
	if len(pol.History) != 2 || pol.History[0].SetBy != "admin" || pol.History[1].SetBy != "ops" {
		t.Fatalf("history %+v; want version 2 by admin, version 1 by ops", pol.History)
	}
	var tok api.CreateTokenResponse
	if err := ops.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	var toks []api.Token
	if err := ops.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].ID != tok.ID || toks[0].CreatedBy != "ops" {
		t.Fatalf("tokens %+v; want %s created by ops", toks, tok.ID)
	}
	var list []api.AdminToken
	if err := ops.Do(ctx, http.MethodGet, "/v1/admin/tokens", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "admin" || !list[0].Bootstrap || list[1].Name != "ops" || list[1].CreatedBy != "admin" {
		t.Fatalf("admin tokens %+v; want the bootstrap admin, then ops created by admin", list)
	}
}

// TestBootstrapAdminRevocable: the bootstrap credential of DATA_DIR/admin.token
// cannot be revoked while it is the only full admin credential; once another
// exists it can, and is refused from then on; the last full credential can
// never be revoked.
func TestBootstrapAdminRevocable(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	revoke := func(c *apiclient.Client, ref string) error {
		return c.Do(ctx, http.MethodPost, "/v1/admin/tokens/"+ref+"/revoke", nil, nil)
	}
	if err := revoke(admin, "admin"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the only admin credential: got %v; want %s", err, api.CodeConflict)
	}
	ro := createAdmin(t, admin, "grafana", true)
	if err := revoke(admin, "admin"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the only full admin credential: got %v; want %s", err, api.CodeConflict)
	}
	opsTok := createAdmin(t, admin, "ops", false)
	ops := apiclient.New(admin.URLs(), srv.Pin(), opsTok)
	if err := revoke(admin, "admin"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets", nil, nil); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("bootstrap credential after its revocation: got %v; want %s", err, api.CodeUnauthorized)
	}
	path := filepath.Join(srv.cfg.DataDir, "admin.token")
	waitFor(t, 5*time.Second, "admin.token to be removed", func() bool {
		_, err := os.Stat(path)
		return errors.Is(err, os.ErrNotExist)
	})
	if err := revoke(ops, "ops"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the last full admin credential: got %v; want %s", err, api.CodeConflict)
	}
	// The list shows who is what, never a secret.
	var raw json.RawMessage
	if err := apiclient.New(admin.URLs(), srv.Pin(), ro).Do(ctx, http.MethodGet, "/v1/admin/tokens", nil, &raw); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{opsTok, ro, "secret", "hash"} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("admin token list %s shows %q", raw, secret)
		}
	}
	var list []api.AdminToken
	json.Unmarshal(raw, &list)
	if len(list) != 3 || list[0].Name != "admin" || !list[0].Revoked || list[0].RevokedBy != "admin" || list[1].Name != "grafana" || list[1].Revoked || list[2].Name != "ops" {
		t.Fatalf("admin tokens %+v; want admin revoked by admin, grafana and ops valid", list)
	}
	var st []api.AdminToken
	srv.Store().Read(func(tb *state.Tables, _ uint64) {
		for _, a := range tb.SortedAdminTokens() {
			st = append(st, adminTokenView(a))
		}
	})
	if len(st) != len(list) {
		t.Fatalf("the replica holds %d admin credentials; the list shows %d", len(st), len(list))
	}
}

// TestAdminRevokeEveryCoordinator: once a revocation returns, every
// coordinator of the cluster refuses the credential, a follower included;
// one cut off from the leader refuses it too (it cannot tell whether it is
// current) until it has caught up, and then says it is revoked.
func TestAdminRevokeEveryCoordinator(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	boot := c.admin(leader)
	as := func(n *testNode, tok string) *apiclient.Client {
		return apiclient.New([]string{n.srv.APIURL()}, n.srv.Pin(), tok)
	}
	ops := createAdmin(t, boot, "ops", false)
	ci := createAdmin(t, boot, "ci", false)
	for _, n := range c.nodes {
		if err := as(n, ops).Do(ctx, http.MethodGet, "/v1/vnets", nil, nil); err != nil {
			t.Fatalf("ops on %s: %v", n.name, err)
		}
	}
	// Revoke through a follower; the other nodes refuse at once.
	if err := as(c.followers()[0], ops).Do(ctx, http.MethodPost, "/v1/admin/tokens/ops/revoke", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		if err := as(n, ops).Do(ctx, http.MethodGet, "/v1/vnets", nil, nil); !api.IsCode(err, api.CodeUnauthorized) {
			t.Fatalf("revoked credential on %s right after the revocation: got %v; want %s", n.name, err, api.CodeUnauthorized)
		}
	}
	// Cut one follower off from Raft (its API stays reachable) and revoke
	// ci: the follower has not applied the revocation, and must not take
	// ci on its stale state.
	lost := c.followers()[0]
	lost.trans.DisconnectAll()
	for _, n := range c.nodes {
		if n != lost {
			n.trans.Disconnect(lost.trans.LocalAddr())
		}
	}
	var majority []*testNode
	for _, n := range c.nodes {
		if n != lost {
			majority = append(majority, n)
		}
	}
	if err := c.admin(majority...).Do(ctx, http.MethodPost, "/v1/admin/tokens/ci/revoke", nil, nil); err != nil {
		t.Fatal(err)
	}
	lost.srv.Store().Read(func(tb *state.Tables, _ uint64) {
		if a, ok := tb.AdminTokenByRef("ci"); !ok || a.Revoked {
			t.Fatal("the cut-off follower already has the revocation; the test proves nothing")
		}
	})
	for _, n := range c.nodes {
		err := as(n, ci).Do(ctx, http.MethodGet, "/v1/vnets", nil, nil)
		if n == lost && !api.IsCode(err, api.CodeUnavailable) && !api.IsCode(err, api.CodeUnauthorized) {
			t.Fatalf("revoked credential on the cut-off %s: got %v; want it refused", n.name, err)
		}
		if n != lost && !api.IsCode(err, api.CodeUnauthorized) {
			t.Fatalf("revoked credential on %s: got %v; want %s", n.name, err, api.CodeUnauthorized)
		}
	}
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	waitFor(t, 15*time.Second, "the healed follower to refuse the revoked credential as revoked", func() bool {
		return api.IsCode(as(lost, ci).Do(ctx, http.MethodGet, "/v1/vnets", nil, nil), api.CodeUnauthorized)
	})
}

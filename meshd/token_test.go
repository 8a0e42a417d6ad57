package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshd/meshd/pkg/api"
)

// meshdErr runs one command line through execute and returns its exit
// code, stdout and stderr.
func meshdErr(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestTokenCommands: create prints the token alone on stdout and its id
// on stderr, --json both; values out of range are refused, not changed;
// a second revoke fails with already_revoked; prune removes the revoked.
func TestTokenCommands(t *testing.T) {
	startCoordinator(t)
	code, out, errOut := meshdErr(t, "token", "create", "--uses", "2")
	tok := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(tok, "meshdj_") || strings.Contains(tok, "\n") {
		t.Fatalf("create: exit %d, stdout %q; want the token alone", code, out)
	}
	code, out, _ = meshdErr(t, "token", "create", "--json", "--vnet", "default", "--ttl", "7d")
	var created struct {
		api.CreateTokenResponse
		VNet string `json:"vnet"`
		Uses int    `json:"uses"`
	}
	if err := json.Unmarshal([]byte(out), &created); code != 0 || err != nil || created.ID == "" || !strings.HasPrefix(created.Token, "meshdj_") || created.VNet != "default" || created.Uses != 1 {
		t.Fatalf("create --json: exit %d, %q (%v); want {token, id, vnet, uses, expires}", code, out, err)
	}
	var list []api.Token
	_, out, _ = meshdErr(t, "token", "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("list --json %q (%v); want 2 tokens", out, err)
	}
	first := list[0].ID
	if list[1].ID != created.ID || !strings.Contains(errOut, "join token "+first+" ") || !strings.Contains(errOut, "meshd token revoke "+first) || !strings.Contains(errOut, "2 uses") {
		t.Fatalf("create stderr %q; want the id %s, its uses and how to revoke it", errOut, first)
	}

	for _, bad := range [][]string{
		{"--uses", "0"}, {"--uses", "-3"}, {"--uses", "1000001"},
		{"--ttl", "-1h"}, {"--ttl", "0"}, {"--ttl", ""}, {"--ttl", "0d"}, {"--ttl", "400d"}, {"--ttl", "soon"},
		{"--max-priority", "-1"}, {"--max-priority", "1000001"},
		{"--allow-routes", "10.1.0.1/16"}, {"--allow-routes", "nope"},
	} {
		code, out, errOut := meshdErr(t, append([]string{"token", "create"}, bad...)...)
		if code != 1 || out != "" || !strings.Contains(errOut, bad[0]) {
			t.Errorf("create %v: exit %d, stdout %q, stderr %q; want exit 1 naming %s", bad, code, out, errOut, bad[0])
		}
	}
	_, out, _ = meshdErr(t, "token", "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("refused creates made tokens: %q", out)
	}

	if code, out, _ := meshdErr(t, "token", "revoke", first); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: exit %d %q", code, out)
	}
	code, _, errOut = meshdErr(t, "token", "revoke", first)
	if code != 1 || !strings.Contains(errOut, "("+api.CodeAlreadyRevoked+")") {
		t.Fatalf("second revoke: exit %d, stderr %q; want exit 1 with %s", code, errOut, api.CodeAlreadyRevoked)
	}
	code, out, _ = meshdErr(t, "token", "prune", "--json")
	var pr api.PruneTokensResponse
	if err := json.Unmarshal([]byte(out), &pr); code != 0 || err != nil || len(pr.Pruned) != 1 || pr.Pruned[0].ID != first {
		t.Fatalf("prune --json: exit %d, %q (%v); want %s pruned", code, out, err, first)
	}
	if code, out, _ := meshdErr(t, "token", "prune"); code != 0 || !strings.Contains(out, "no token to prune") {
		t.Fatalf("second prune: exit %d %q", code, out)
	}
	_, out, _ = meshdErr(t, "token", "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].ID != created.ID {
		t.Fatalf("list after prune %q (%v); want %s alone", out, err, created.ID)
	}
}

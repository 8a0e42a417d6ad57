package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/meshd/meshd/pkg/api"
)

func TestAdminTokenCommands(t *testing.T) {
	startCoordinator(t)
	boot := os.Getenv("MESHD_ADMIN_TOKEN")
	out, err := meshd(t, "admin", "token", "create", "grafana", "--read-only", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ro api.CreateAdminTokenResponse
	if err := json.Unmarshal([]byte(out), &ro); err != nil || ro.ID == "" || ro.Name != "grafana" || !ro.ReadOnly || !strings.HasPrefix(ro.Token, "meshda_") {
		t.Fatalf("create --json printed %q (%v); want {id, name: grafana, read_only: true, token}", out, err)
	}
	full, err := meshd(t, "admin", "token", "create", "ops")
	if err != nil {
		t.Fatal(err)
	}
	full = strings.TrimSpace(full)
	if !strings.HasPrefix(full, "meshda_") || strings.Contains(full, "\n") {
		t.Fatalf("create printed %q; want the credential alone", full)
	}
	// The read-only credential reads and may not write.
	t.Setenv("MESHD_ADMIN_TOKEN", ro.Token)
	if _, err := meshd(t, "vnet", "list"); err != nil {
		t.Fatalf("read-only vnet list: %v", err)
	}
	if _, err := meshd(t, "vnet", "create", "x", "--overlay", "100.112.0.0/16"); !api.IsCode(err, api.CodeForbidden) {
		t.Fatalf("read-only vnet create: got %v; want %s", err, api.CodeForbidden)
	}
	// The new full credential revokes the bootstrap one; the list shows it,
	// and no secret.
	t.Setenv("MESHD_ADMIN_TOKEN", full)
	if out, err := meshd(t, "admin", "token", "revoke", "admin"); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke admin: %q, %v", out, err)
	}
	out, err = meshd(t, "admin", "token", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"admin", "revoked by ops", "grafana", "read-only", "ops", "full"} {
		if !strings.Contains(out, want) {
			t.Errorf("list %q lacks %q", out, want)
		}
	}
	for _, secret := range []string{full, ro.Token, boot} {
		if strings.Contains(out, secret) {
			t.Errorf("list shows a secret: %q", out)
		}
	}
	out, err = meshd(t, "admin", "token", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []api.AdminToken
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 3 || !list[0].Revoked || list[1].ID != ro.ID {
		t.Fatalf("list --json %q (%v); want admin (revoked), grafana, ops", out, err)
	}
	t.Setenv("MESHD_ADMIN_TOKEN", boot)
	if _, err := meshd(t, "vnet", "list"); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("revoked bootstrap credential: got %v; want %s", err, api.CodeUnauthorized)
	}
	t.Setenv("MESHD_ADMIN_TOKEN", full)
	if _, err := meshd(t, "admin", "token", "revoke", "ops"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the last full credential: got %v; want %s", err, api.CodeConflict)
	}
}

func TestTokenCreateMaxPriority(t *testing.T) {
	startCoordinator(t)
	out, err := meshd(t, "token", "create", "--allow-routes", "10.1.0.0/16", "--max-priority", "100", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var tok api.CreateTokenResponse
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.ID == "" || tok.Token == "" {
		t.Fatalf("create --json printed %q (%v); want {token, id, expires}", out, err)
	}
	if _, err := meshd(t, "token", "create", "--max-priority", "-1"); err == nil {
		t.Fatal("--max-priority -1 accepted")
	}
	out, err = meshd(t, "token", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var toks []api.Token
	if err := json.Unmarshal([]byte(out), &toks); err != nil || len(toks) != 1 || toks[0].ID != tok.ID || toks[0].MaxPriority == nil || *toks[0].MaxPriority != 100 {
		t.Fatalf("list --json %q (%v); want the token with max_priority 100", out, err)
	}
	if out, err := meshd(t, "token", "list"); err != nil || !strings.Contains(out, "MAX PRIORITY") || !strings.Contains(out, "100") {
		t.Fatalf("list %q, %v; want a MAX PRIORITY column showing 100", out, err)
	}
}

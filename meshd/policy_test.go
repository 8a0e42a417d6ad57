package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/api"
)

// startCoordinator runs a one-node cluster and points the admin commands
// at it (MESHD_ADMIN_TOKEN).
func startCoordinator(t *testing.T) {
	t.Helper()
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := coordinator.New(coordinator.Config{Name: "c1", DataDir: dir, ClusterKey: key, APIListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "admin.token")); err == nil && len(b) > 0 {
			t.Setenv("MESHD_ADMIN_TOKEN", strings.TrimSpace(string(b)))
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("admin.token not written within 10s")
		}
		select { // the token file is written after the last state change
		case <-srv.Store().WatchCh():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// meshd runs one command line and returns what it printed.
func meshd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestPolicyCommands(t *testing.T) {
	startCoordinator(t)
	if _, err := meshd(t, "token", "create", "--tag", "branch"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", `{"acls": [{"name": "web", "action": "accept", "src": ["tag:branch"], "dst": ["192.168.10.0/24:443"], "proto": "tcp"}],
		"tests": [{"src": "tag:branch", "accept": ["192.168.10.10:443"], "deny": ["192.168.10.10:22"]}]}`)
	failing := write("failing.json", `{"acls": [{"action": "accept", "src": ["tag:branch"], "dst": ["192.168.10.0/24:*"]}],
		"tests": [{"src": "tag:branch", "deny": ["192.168.10.10:22"]}]}`)
	broken := write("broken.json", `{"acls": [`)

	out, err := meshd(t, "policy", "get", "--vnet", "default")
	if err != nil || !strings.Contains(out, "has no policy") {
		t.Fatalf("get before set: %q, %v", out, err)
	}
	if _, err := meshd(t, "policy", "set", "--vnet", "default", failing); !api.IsCode(err, api.CodePolicyTestFailed) || !strings.Contains(err.Error(), `tests[0] deny "192.168.10.10:22"`) {
		t.Fatalf("failing tests: got %v; want %s naming the test", err, api.CodePolicyTestFailed)
	}
	if _, err := meshd(t, "policy", "set", "--vnet", "default", broken); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Fatalf("broken file: got %v; want it refused as not JSON", err)
	}
	if out, err := meshd(t, "policy", "set", "--vnet", "default", good); err != nil || !strings.Contains(out, "version 1") {
		t.Fatalf("set: %q, %v", out, err)
	}
	out, err = meshd(t, "policy", "get", "--vnet", "default", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var p api.Policy
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.Version != 1 || p.SetBy != "admin" || len(p.History) != 1 {
		t.Fatalf("get --json: %+v, %v; want version 1 by admin", p, err)
	}
	out, err = meshd(t, "policy", "test", "--vnet", "default", "tag:branch", "192.168.10.10:443", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var res api.PolicyTestResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Allowed || res.Rule == nil || *res.Rule != 0 || res.RuleName != "web" {
		t.Fatalf("test --json: %+v, %v; want allowed by acls[0] (web)", res, err)
	}
	if out, err := meshd(t, "policy", "test", "--vnet", "default", "tag:branch", "192.168.10.10:22"); err != nil || !strings.HasPrefix(out, "deny:") {
		t.Fatalf("test: %q, %v; want deny", out, err)
	}
	if out, err := meshd(t, "policy", "delete", "--vnet", "default"); err != nil || !strings.Contains(out, "version 2") {
		t.Fatalf("delete: %q, %v", out, err)
	}
	if out, err := meshd(t, "policy", "get", "--vnet", "default"); err != nil || !strings.Contains(out, "version 2 removed it") {
		t.Fatalf("get after delete: %q, %v", out, err)
	}
}

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/backup"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// These tests change the coordinator cluster with the meshd binary, as an
// operator would: replace a coordinator whose disk died, and bring the
// mesh back from a snapshot after losing the cluster.

// cli runs the meshd binary with the admin credential adminTok and
// returns what it printed on standard output.
func cli(t *testing.T, bin, adminTok string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "MESHD_ADMIN_TOKEN="+adminTok, "MESHD_COORDINATOR=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("meshd %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// clusterStatus runs meshd cluster status --json against url.
func clusterStatus(t *testing.T, bin, adminTok, url string) (api.ClusterStatus, map[string]api.Member) {
	t.Helper()
	out, err := cli(t, bin, adminTok, "--coordinator", url, "cluster", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st api.ClusterStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	ms := map[string]api.Member{}
	for _, m := range st.Members {
		ms[m.Name] = m
	}
	return st, ms
}

func nodeByName(c *harness.Cluster, name string) *harness.Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// TestReplaceWipedCoordinator: a follower's process dies and its data dir
// is lost. The operator removes it, starts it again empty with --join and
// runs `meshd cluster add`: it catches up, is promoted, and ends level with
// the others, which kept every write.
func TestReplaceWipedCoordinator(t *testing.T) {
	c := startProcCluster(t)
	ctx := context.Background()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	adminTok, _ := c.AdminToken()
	for range 20 {
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	leader, err := c.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var victim *harness.Node
	for _, n := range c.Nodes {
		if n != leader {
			victim = n
		}
	}
	victim.Proc.Kill()
	if err := os.RemoveAll(victim.DataDir); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, c.Bin, adminTok, "--coordinator", leader.URL(), "cluster", "remove", victim.Name); err != nil {
		t.Fatal(err)
	}
	// Adding it back under its name and address before it is removed is
	// refused; so is another name at its address.
	if _, err := cli(t, c.Bin, adminTok, "--coordinator", leader.URL(), "cluster", "add", leader.Name, "127.0.0.1:1"); err == nil {
		t.Fatal("adding a name already in the cluster was accepted")
	}
	victim.Join = leader.URL()
	if err := c.Start(victim); err != nil {
		t.Fatal(err)
	}
	out, err := cli(t, c.Bin, adminTok, "--coordinator", leader.URL(), "cluster", "add", victim.Name, victim.RaftAddr, "--json", "--wait", "60s")
	if err != nil {
		t.Fatal(err)
	}
	var m api.Member
	if err := json.Unmarshal(out, &m); err != nil || m.Name != victim.Name || m.Role != "follower" {
		t.Fatalf("cluster add printed %s (%v); want %s as a follower", out, err, victim.Name)
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	want := tokenIDs(admin)
	waitUntil(t, 20*time.Second, "the replacement level with the leader", func() bool {
		_, ms := clusterStatus(t, c.Bin, adminTok, leader.URL())
		if len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if m.Role == "nonvoter" || m.Reachable == nil || !*m.Reachable || m.Lag == nil || *m.Lag != 0 {
				return false
			}
		}
		return true
	})
	cl, err := c.Admin(victim.URL())
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the replacement to list every token", func() bool { return slices.Equal(tokenIDs(cl), want) })
	if len(want) != 21 {
		t.Fatalf("%d tokens; want 21", len(want))
	}
}

// snapshotTables reads the tables of a snapshot file.
func snapshotTables(t *testing.T, path string) (*backup.Header, state.Tables) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, body, err := backup.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	st := state.New()
	if err := st.Restore(body); err != nil {
		t.Fatal(err)
	}
	var tb state.Tables
	if err := json.Unmarshal(st.Dump(), &tb); err != nil {
		t.Fatal(err)
	}
	return h, tb
}

// TestDisasterRecovery: a snapshot is saved through a follower; two of the
// three coordinators are SIGKILLed (the status shows the first as
// unreachable, its last contact growing) and their data dirs deleted, and
// the third is stopped for good. A new cluster is restored from the
// snapshot onto fresh data dirs: one node at the survivor's address, two at
// new ones (one restored, one started empty with --join). Two agents that
// knew only the old coordinators reconnect on their own, get a map again
// (without the peer that joined after the snapshot) that names the new
// coordinators, and follow changes on the new cluster. Every table is as
// the snapshot had it, and the old credentials work.
func TestDisasterRecovery(t *testing.T) {
	c := startProcCluster(t)
	ctx := context.Background()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	adminTok, _ := c.AdminToken()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 5, Tags: []string{"site"}, AllowRoutes: []string{"192.168.10.0/24"}}, &tok); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	gw := startAgent(t, filepath.Join(root, "gw"), "gw", tok.Token, []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}, "10.99.0.21:51820")
	cl := startAgent(t, filepath.Join(root, "cl"), "cl", tok.Token, nil, "10.99.0.41:51820")
	waitUntil(t, 15*time.Second, "gw and cl to configure each other", func() bool { return len(gw.peers()) == 1 && len(cl.peers()) == 1 })
	var ops api.CreateAdminTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/admin/tokens", api.CreateAdminTokenRequest{Name: "ops"}, &ops); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodPut, "/v1/vnets/default/policy", json.RawMessage(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/gossip/rotate-key", map[string]string{}, nil); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var fols []*harness.Node
	for _, n := range c.Nodes {
		if n != leader {
			fols = append(fols, n)
		}
	}

	// The backup, through a follower.
	file := filepath.Join(root, "backup.snap")
	out, err := cli(t, c.Bin, adminTok, "--coordinator", fols[0].URL(), "cluster", "snapshot", "save", file, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var saved backup.Header
	if err := json.Unmarshal(out, &saved); err != nil || saved.TakenBy != fols[0].Name || saved.Index == 0 {
		t.Fatalf("snapshot save printed %s (%v); want a header from %s", out, err, fols[0].Name)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v, %v; want mode 0600", fi, err)
	}
	if out, err := cli(t, c.Bin, adminTok, "cluster", "snapshot", "inspect", file, "--json"); err != nil || !bytes.Contains(out, []byte(saved.SHA256)) {
		t.Fatalf("inspect: %s, %v", out, err)
	}
	snapHeader, before := snapshotTables(t, file)

	// A peer joins after the backup: the agents see it.
	late, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "late", PublicKey: randomKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the agents to see the late peer", func() bool { return len(gw.peers()) == 2 && len(cl.peers()) == 2 })

	// A follower is SIGKILLed: the status shows it unreachable, its last
	// contact growing, with no applied index.
	fols[1].Proc.Kill()
	var first int64 = -1
	waitUntil(t, 10*time.Second, fols[1].Name+" unreachable with a growing last contact", func() bool {
		_, ms := clusterStatus(t, c.Bin, adminTok, leader.URL())
		m := ms[fols[1].Name]
		if m.Reachable == nil || *m.Reachable || m.LastContactMS == nil || m.AppliedIndex != nil || m.Error == "" {
			return false
		}
		if first < 0 {
			first = *m.LastContactMS
		}
		return *m.LastContactMS >= first+500
	})

	// The disaster: the other follower dies too, both data dirs are lost,
	// and the survivor, alone, is stopped to be replaced.
	fols[0].Proc.Kill()
	for _, n := range fols {
		if err := os.RemoveAll(n.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	leader.Proc.Stop(10 * time.Second)

	// The new cluster: c1 at the survivor's addresses, c4 and c5 at new
	// ones. A damaged copy is refused first.
	ports, err := harness.FreePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	nc := &harness.Cluster{Bin: c.Bin, Dir: filepath.Join(root, "new"), Key: c.Key, Nodes: []*harness.Node{
		{Name: "c1", DataDir: filepath.Join(root, "new", "c1"), APIAddr: leader.APIAddr, RaftAddr: leader.RaftAddr},
		{Name: "c4", DataDir: filepath.Join(root, "new", "c4"), APIAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), RaftAddr: fmt.Sprintf("127.0.0.1:%d", ports[1])},
		{Name: "c5", DataDir: filepath.Join(root, "new", "c5"), APIAddr: fmt.Sprintf("127.0.0.1:%d", ports[2]), RaftAddr: fmt.Sprintf("127.0.0.1:%d", ports[3])},
	}}
	t.Cleanup(func() {
		nc.Close()
		if t.Failed() {
			for _, n := range nc.Nodes {
				if n.Proc != nil {
					t.Logf("--- new %s log:\n%s", n.Name, n.Proc.Log())
				}
			}
		}
	})
	var initial []string
	for _, n := range nc.Nodes {
		initial = append(initial, n.Name+"="+n.RaftAddr)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0x01
	damaged := filepath.Join(root, "damaged.snap")
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, c.Bin, "", "coordinator", "restore", "--data-dir", nc.Nodes[0].DataDir, "--name", "c1", "--initial-cluster", strings.Join(initial, ","), damaged); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("restoring a damaged file: %v; want a checksum refusal", err)
	}
	if _, err := os.Stat(nc.Nodes[0].DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused restore left %s behind (%v)", nc.Nodes[0].DataDir, err)
	}
	for _, n := range nc.Nodes[:2] {
		if _, err := cli(t, c.Bin, "", "coordinator", "restore", "--data-dir", n.DataDir, "--name", n.Name,
			"--initial-cluster", strings.Join(initial, ","), "--cluster-key-file", c.Key, file); err != nil {
			t.Fatal(err)
		}
	}
	nc.Nodes[2].Join = nc.Nodes[0].URL()
	restartedAt := time.Now()
	if err := nc.StartAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.WaitLeader(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nc.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// The agents knew c1, c2, c3: they reconnect through c1's address,
	// get a full map (the late peer is gone) naming c1, c4, c5, and keep it.
	wantCoords := nc.URLs()
	took := waitUntil(t, 30*time.Second, "the agents to take the new cluster's map", func() bool {
		for _, a := range []*testAgent{gw, cl} {
			id, err := controlclient.LoadIdentity(a.dir)
			if err != nil || !slices.Equal(id.Coordinators, wantCoords) || len(a.peers()) != 1 {
				return false
			}
		}
		return true
	})
	t.Logf("agents on the restored cluster %s after its processes started (%s after every coordinator answered)", time.Since(restartedAt), took)
	if _, ok := gw.peers()[cl.agent.PublicKey()]; !ok {
		t.Fatal("gw lost cl")
	}

	// Every table is as the snapshot had it; the old credentials work.
	newAdmin := apiclient.New(wantCoords, mustPin(t, adminTok), ops.Token)
	var toks []api.Token
	if err := newAdmin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatalf("the named admin credential on the new cluster: %v", err)
	}
	after := filepath.Join(root, "after.snap")
	if _, err := cli(t, c.Bin, ops.Token, "--coordinator", nc.Nodes[2].URL(), "cluster", "snapshot", "save", after); err != nil {
		t.Fatal(err)
	}
	afterHeader, now := snapshotTables(t, after)
	if afterHeader.Index <= snapHeader.Index || len(afterHeader.Members) != 3 {
		t.Fatalf("new cluster at index %d with %d members; want past %d with 3", afterHeader.Index, len(afterHeader.Members), snapHeader.Index)
	}
	for _, tt := range []struct {
		table     string
		was, is   any
		different bool
	}{
		{"vnets", before.VNets, now.VNets, false},
		{"tokens", before.Tokens, now.Tokens, false},
		{"admin tokens", before.AdminTokens, now.AdminTokens, false},
		{"policies", before.Policies, now.Policies, false},
		{"gossip rings", before.GossipRings, now.GossipRings, false},
		{"coordinators", before.Coordinators, now.Coordinators, true},
	} {
		if same := toJSON(tt.was) == toJSON(tt.is); same == tt.different {
			t.Errorf("%s: before %s, after %s", tt.table, toJSON(tt.was), toJSON(tt.is))
		}
	}
	if len(now.Peers) != len(before.Peers) || now.Peers[late.PeerID] != nil {
		t.Fatalf("peers after the restore: %d (late one present: %v); want the %d of the snapshot", len(now.Peers), now.Peers[late.PeerID] != nil, len(before.Peers))
	}
	for id, p := range before.Peers {
		q := now.Peers[id]
		if q == nil || q.CredHash != p.CredHash || q.PublicKey != p.PublicKey || q.OverlayIP != p.OverlayIP || toJSON(q.Routes) != toJSON(p.Routes) {
			t.Fatalf("peer %s: %+v after the restore; want %+v", p.Name, q, p)
		}
	}
	var names []string
	for n := range now.Coordinators {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"c1", "c4", "c5"}) {
		t.Fatalf("the new cluster lists coordinators %v; want c1 c4 c5", names)
	}

	// The agents follow changes on the new cluster.
	var tok2 api.CreateTokenResponse
	if err := newAdmin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok2); err != nil {
		t.Fatal(err)
	}
	if _, err := apiclient.Join(ctx, tok2.Token, api.JoinRequest{Name: "fresh", PublicKey: randomKey(t)}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the agents to see a peer that joined the new cluster", func() bool { return len(gw.peers()) == 2 && len(cl.peers()) == 2 })
}

func mustPin(t *testing.T, adminTok string) [32]byte {
	t.Helper()
	_, tk, err := apiclient.FromToken(adminTok)
	if err != nil {
		t.Fatal(err)
	}
	return tk.Pin
}

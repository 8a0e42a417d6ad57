package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/backup"
	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
)

// fetchSnapshot saves a snapshot through cl (the coordinators it knows, in
// order) and returns the whole file.
func fetchSnapshot(t *testing.T, cl *apiclient.Client) []byte {
	t.Helper()
	resp, err := cl.Stream(context.Background(), "/v1/cluster/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	file, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return file
}

// TestSnapshotOnFollowerIsConsistent: a snapshot saved through a follower
// while writes go on is the state at one index of the log, exactly what
// applying the leader's log up to that index gives, and no older than what
// the leader had applied when it was asked for.
func TestSnapshotOnFollowerIsConsistent(t *testing.T) {
	c := startCluster(t, 3)
	leader, fol := c.leader(), c.followers()[0]
	// The snapshot holds the gossip keys: a read-only credential may not
	// take one.
	ro := createAdmin(t, c.admin(leader), "grafana", true)
	if _, err := apiclient.New([]string{fol.srv.APIURL()}, fol.srv.Pin(), ro).Stream(context.Background(), "/v1/cluster/snapshot"); !api.IsCode(err, api.CodeForbidden) {
		t.Fatalf("snapshot with a read-only credential: %v; want %s", err, api.CodeForbidden)
	}
	w := startWrites(c.admin(leader))
	w.waitMore(t, 30, "before the snapshot")
	before := leader.srv.Store().Index()
	file := fetchSnapshot(t, c.admin(fol))
	w.waitMore(t, 10, "after the snapshot")
	w.finish()

	h, body, err := backup.Read(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if h.TakenBy != fol.name || h.Leader != leader.name || len(h.Members) != 3 || h.Tables["tokens"] < 30 {
		t.Fatalf("header %+v; want taken by %s with leader %s, 3 members and the tokens", h, fol.name, leader.name)
	}
	if h.Index < before {
		t.Fatalf("snapshot at index %d; the leader had applied %d before it was asked for", h.Index, before)
	}
	got := state.New()
	if err := got.Restore(body); err != nil {
		t.Fatal(err)
	}
	// Replay the leader's log up to the snapshot's index.
	want := state.New()
	replay := fsm.New(want, logging.New(io.Discard, 0))
	first, _ := leader.logs.FirstIndex()
	if first != 1 {
		t.Fatalf("the leader's log starts at %d; the test needs all of it", first)
	}
	for i := uint64(1); i <= h.Index; i++ {
		var l raft.Log
		if err := leader.logs.GetLog(i, &l); err != nil {
			t.Fatalf("log %d: %v", i, err)
		}
		replay.Apply(&l)
	}
	if want.Index() != h.Index || got.Index() != h.Index {
		t.Fatalf("replayed index %d, snapshot's state %d; want %d", want.Index(), got.Index(), h.Index)
	}
	if a, b := got.Dump(), want.Dump(); !bytes.Equal(a, b) {
		t.Fatalf("snapshot state differs from the leader's log replayed to index %d", h.Index)
	}
	if got.Index() >= leader.srv.Store().Index() {
		t.Fatalf("the writes after the snapshot moved the leader to %d; the test needs the snapshot behind it", leader.srv.Store().Index())
	}
}

// populate fills every table through the API and returns a peer's join
// answer (with its credential) and a named admin credential.
func populate(t *testing.T, admin *apiclient.Client) (*api.JoinResponse, string) {
	t.Helper()
	ctx := context.Background()
	if err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "branch", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: "branch", Uses: 3, Tags: []string{"site"}, AllowRoutes: []string{"192.168.10.0/24"}}, &tok); err != nil {
		t.Fatal(err)
	}
	gw, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "gw1", PublicKey: wgKey(), Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "laptop", PublicKey: wgKey()}); err != nil {
		t.Fatal(err)
	}
	var unused api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 5, TTL: "7d"}, &unused); err != nil {
		t.Fatal(err)
	}
	var revoked api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &revoked); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens/"+revoked.ID+"/revoke", nil, nil); err != nil {
		t.Fatal(err)
	}
	ops := createAdmin(t, admin, "ops", false)
	createAdmin(t, admin, "grafana", true)
	if _, err := setPolicy(admin, "branch", `{"acls": [{"action": "accept", "src": ["tag:site"], "dst": ["192.168.10.0/24:443"], "proto": "tcp"}]}`); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/gossip/rotate-key", map[string]string{}, nil); err != nil {
		t.Fatal(err)
	}
	return gw, ops
}

// comparable is a state's tables without what a restore resets: the
// coordinators and the watch marks.
func comparable(t *testing.T, dump []byte) string {
	t.Helper()
	var tb state.Tables
	if err := json.Unmarshal(dump, &tb); err != nil {
		t.Fatal(err)
	}
	tb.Coordinators = nil
	for _, p := range tb.Peers {
		p.WatchedBy = ""
	}
	b, err := json.Marshal(tb)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRestoreNewCluster: a snapshot of a cluster with every table filled
// restores into three new data dirs of a cluster with other names and
// addresses. The new cluster holds every table as it was, lists only its
// own coordinators, accepts the old peer and admin credentials, and sends a
// peer that resumes its watch with an index of the old cluster a full map
// naming the new coordinators. Damaged files, non-empty dirs and the
// snapshot of another cluster are refused, leaving nothing behind.
func TestRestoreNewCluster(t *testing.T) {
	old := startCluster(t, 3)
	ctx := context.Background()
	admin := old.admin(old.nodes...)
	gw, ops := populate(t, admin)
	old.waitConverged()
	file := fetchSnapshot(t, admin)
	h, err := backup.Verify(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	wantTables := comparable(t, old.leader().srv.Store().Dump())
	oldIndex := old.leader().srv.Store().Index()

	root := t.TempDir()
	members := []Member{{Name: "r1", RaftAddr: "r1:8301"}, {Name: "r2", RaftAddr: "r2:8301"}, {Name: "r3", RaftAddr: "r3:8301"}}
	restore := func(name, dir string, file []byte, pin *[32]byte) error {
		_, err := Restore(RestoreConfig{DataDir: dir, Name: name, Members: members, Pin: pin}, bytes.NewReader(file))
		return err
	}
	// Refusals leave nothing behind.
	damaged := bytes.Clone(file)
	damaged[len(damaged)-10] ^= 0x20
	other := [32]byte{1}
	full := filepath.Join(root, "full")
	if err := os.MkdirAll(full, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, "raft.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	pin := old.nodes[0].srv.Pin()
	for _, tt := range []struct {
		name, dir string
		err       error
	}{
		{"a damaged file", filepath.Join(root, "d1"), restore("r1", filepath.Join(root, "d1"), damaged, &pin)},
		{"a truncated file", filepath.Join(root, "d2"), restore("r1", filepath.Join(root, "d2"), file[:len(file)/2], nil)},
		{"another cluster's key", filepath.Join(root, "d3"), restore("r1", filepath.Join(root, "d3"), file, &other)},
		{"a node not in the new cluster", filepath.Join(root, "d4"), restore("x9", filepath.Join(root, "d4"), file, nil)},
		{"a non-empty data dir", "", restore("r1", full, file, nil)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("accepted")
			}
			if tt.dir != "" {
				if _, err := os.Stat(tt.dir); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("refused restore left %s behind (%v)", tt.dir, err)
				}
			}
		})
	}
	if err := restore("r1", filepath.Join(root, "d1"), damaged, nil); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("damaged file: %v; want ErrCorrupt", err)
	}

	// The old cluster is gone for good.
	for _, n := range old.nodes {
		n.stop()
	}
	nc := &testCluster{t: t, key: old.key}
	for _, m := range members {
		dir := filepath.Join(root, m.Name)
		if err := restore(m.Name, dir, file, &pin); err != nil {
			t.Fatal(err)
		}
		_, trans := raft.NewInmemTransport(raft.ServerAddress(m.RaftAddr))
		nc.nodes = append(nc.nodes, &testNode{name: m.Name, trans: trans})
	}
	for _, a := range nc.nodes {
		for _, b := range nc.nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	for _, n := range nc.nodes {
		nc.run(n, Config{DataDir: filepath.Join(root, n.name)})
	}
	t.Cleanup(func() {
		for _, n := range nc.nodes {
			if !n.stopped() {
				n.stop()
			}
		}
	})
	leader := nc.waitReady(nc.nodes) // each registered itself, and only they are listed
	nc.waitConverged()
	if got := comparable(t, leader.srv.Store().Dump()); got != wantTables {
		t.Fatalf("restored tables differ:\n%s\nwant:\n%s", got, wantTables)
	}
	var urls []string
	leader.srv.Store().Read(func(tb *state.Tables, index uint64) {
		for _, n := range nc.nodes {
			c, ok := tb.Coordinators[n.name]
			if !ok || c.APIURL != n.srv.APIURL() {
				t.Fatalf("coordinator %s registered as %+v; want %s", n.name, c, n.srv.APIURL())
			}
			urls = append(urls, c.APIURL)
		}
		if index < 1<<restoreEraBits || index <= h.Index {
			t.Fatalf("the new cluster's index %d is not past the old one's (%d)", index, h.Index)
		}
	})
	// The old credentials work; writes go on.
	newAdmin := apiclient.New(urls, leader.srv.Pin(), ops)
	var peers []api.Peer
	if err := newAdmin.Do(ctx, http.MethodGet, "/v1/peers", nil, &peers); err != nil || len(peers) != 2 {
		t.Fatalf("the old admin credential lists %d peers (%v); want 2", len(peers), err)
	}
	if err := newAdmin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	// A peer resuming its watch with an index the old cluster reached gets
	// the whole map of the new one, which names the new coordinators.
	resp, err := apiclient.New(urls, leader.srv.Pin(), gw.Credential).Stream(ctx, fmt.Sprintf("/v1/netmap?since=%d", oldIndex))
	if err != nil {
		t.Fatalf("the old peer credential is refused: %v", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var upd api.MapUpdate
	if err := json.Unmarshal(line, &upd); err != nil {
		t.Fatal(err)
	}
	// urls are in name order, as the maps list them.
	if !upd.Full || !slices.Equal(upd.Coordinators, urls) || len(upd.Peers) != 1 || upd.Peers[0].Name != "laptop" {
		t.Fatalf("resumed watch got full=%v coordinators %v peers %d; want a full map naming %v with laptop", upd.Full, upd.Coordinators, len(upd.Peers), urls)
	}
	t.Logf("restored index %d into a cluster at %d", h.Index, upd.Index)

	// A restored node restarts from its data dir like any other: the
	// snapshot at the new cluster's first index, then its log.
	var fol *testNode
	for _, n := range nc.nodes {
		if n != nc.leader() {
			fol = n
		}
	}
	fol.stop()
	if err := newAdmin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	for _, o := range nc.nodes {
		if o != fol {
			fol.trans.Connect(o.trans.LocalAddr(), o.trans)
		}
	}
	nc.run(fol, Config{DataDir: filepath.Join(root, fol.name)})
	nc.waitConverged()
	if got := fol.srv.Store().Index(); got <= 1<<restoreEraBits {
		t.Fatalf("restarted node at index %d; want past %d", got, uint64(1)<<restoreEraBits)
	}
}

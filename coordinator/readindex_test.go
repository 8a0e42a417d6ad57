package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/pkg/api"
)

// TestLeaderCheckCoalesces: concurrent callers share rounds, and a caller
// never takes the outcome of a round that began before it called.
func TestLeaderCheckCoalesces(t *testing.T) {
	var rounds atomic.Int32
	started := make(chan struct{})
	release := make(chan struct{})
	c := &leaderCheck{verify: func() error {
		if rounds.Add(1) == 1 {
			close(started)
			<-release
			return errNotLeader // the first round fails
		}
		return nil
	}}
	first := make(chan error, 1)
	go func() { first <- c.wait(context.Background()) }()
	<-started
	// These arrive while round 1 is under way: they must get round 2.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- c.wait(context.Background()) }()
	}
	waitFor(t, 5*time.Second, "50 callers queued", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.next != nil && c.next.callers == 50
	})
	close(release)
	if err := <-first; !errors.Is(err, errNotLeader) {
		t.Fatalf("first caller: got %v; want the first round's error", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a caller that came during round 1 got %v; want round 2's success", err)
		}
	}
	if n := rounds.Load(); n > 3 {
		t.Fatalf("%d rounds for 51 callers; want them coalesced (2, or 3 for a straggler)", n)
	}
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if running {
		t.Fatal("the round goroutine still runs with no caller waiting")
	}
}

// TestCutOffLeaderServesNoStaleRead: c1 leads with a long lease, then loses
// its links to the others. They elect a new leader and take a write. Asked
// before its lease runs out, c1 (which still believes it leads) must not
// answer a list without that write: it refuses, since it cannot confirm
// its leadership.
func TestCutOffLeaderServesNoStaleRead(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		if cfg.Name == "c1" {
			cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 10*time.Second, 10*time.Second, 10*time.Second
		}
	})
	c1 := c.nodes[0]
	if l := c.leader(); l != c1 {
		if err := l.srv.Raft().LeadershipTransferToServer("c1", c1.trans.LocalAddr()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "c1 to lead", func() bool { return c1.srv.Raft().State() == raft.Leader })
	ctx := context.Background()
	// A read through c1 works while it is connected.
	var toks []api.Token
	if err := c.admin(c1).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	c1.trans.DisconnectAll()
	for _, n := range c.nodes[1:] {
		n.trans.Disconnect(c1.trans.LocalAddr())
	}
	var next *testNode
	waitFor(t, 10*time.Second, "c2 or c3 to lead", func() bool {
		for _, n := range c.nodes[1:] {
			if n.srv.Raft().State() == raft.Leader {
				next = n
				return true
			}
		}
		return false
	})
	var tok api.CreateTokenResponse
	if err := c.admin(next).Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	if c1.srv.Raft().State() != raft.Leader {
		t.Fatal("c1 stepped down before the read: the test proves nothing")
	}
	toks = nil
	err := c.admin(c1).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks)
	if err == nil {
		if !slices.ContainsFunc(toks, func(x api.Token) bool { return x.ID == tok.ID }) {
			t.Fatalf("stale read: the cut-off leader listed %d tokens without %s, acknowledged by %s", len(toks), tok.ID, next.name)
		}
		return
	}
	if !api.IsCode(err, api.CodeUnavailable) {
		t.Fatalf("cut-off leader: got %v; want %s", err, api.CodeUnavailable)
	}
	if c1.srv.Raft().State() != raft.Leader {
		t.Log("c1 stepped down during the read")
	}
}

// fullDisk is a raft.LogStore whose writes fail with ENOSPC while full is
// set, as raft-boltdb's do on a full disk.
type fullDisk struct {
	raft.LogStore
	full atomic.Bool
}

func (d *fullDisk) StoreLog(l *raft.Log) error { return d.StoreLogs([]*raft.Log{l}) }

func (d *fullDisk) StoreLogs(ls []*raft.Log) error {
	if d.full.Load() {
		return fmt.Errorf("write raft.db: %w", syscall.ENOSPC)
	}
	return d.LogStore.StoreLogs(ls)
}

// freeAddrs returns n loopback TCP addresses free right now.
func freeAddrs(t *testing.T, n int) []string {
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// startDiskCluster starts 3 nodes on raft's TCP transport (TLS, as in
// production: pipelining only happens there), each with a log store that
// can be made full.
func startDiskCluster(t *testing.T) (*testCluster, map[string]*fullDisk) {
	addrs := freeAddrs(t, 3)
	disks := map[string]*fullDisk{}
	var mu sync.Mutex
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.RaftTransport = nil
		cfg.RaftListen = addrs[int(cfg.Name[1]-'1')]
		for i := range cfg.InitialCluster {
			cfg.InitialCluster[i].RaftAddr = addrs[i]
		}
		d := &fullDisk{LogStore: cfg.RaftStores.Log}
		cfg.RaftStores.Log = d
		mu.Lock()
		disks[cfg.Name] = d
		mu.Unlock()
	})
	return c, disks
}

// TestFollowerCatchesUpAfterRejectedAppends: a follower's disk is full while
// the leader takes writes, so it rejects every append; once it has space
// again it catches up with the leader (replication must not stall on the
// rejected appends, hashicorp/raft#612).
func TestFollowerCatchesUpAfterRejectedAppends(t *testing.T) {
	c, disks := startDiskCluster(t)
	leader := c.leader()
	f := c.followers()[0]
	admin := c.admin(leader)
	ctx := context.Background()
	disks[f.name].full.Store(true)
	for range 300 {
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // rejected appends pile up at the leader
	disks[f.name].full.Store(false)
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	want := leader.srv.Store().Index()
	waitFor(t, 15*time.Second, fmt.Sprintf("%s to apply index %d", f.name, want), func() bool { return f.srv.Store().Index() >= want })
	c.waitConverged()
}

// TestFullDiskLeaderAnswersStorageFailed: a write on a leader whose log
// cannot be written is answered storage_failed (507) and is not made; the
// cluster goes on under another leader, and the full node catches up once
// it has space again.
func TestFullDiskLeaderAnswersStorageFailed(t *testing.T) {
	c, disks := startDiskCluster(t)
	leader := c.leader()
	ctx := context.Background()
	admin := c.admin(leader)
	var before []api.Token
	if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &before); err != nil {
		t.Fatal(err)
	}
	disks[leader.name].full.Store(true)
	err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: []string{"full"}}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeStorageFailed || ae.Status() != http.StatusInsufficientStorage {
		t.Fatalf("write on a full leader: got %v; want %s (507)", err, api.CodeStorageFailed)
	}
	t.Logf("answer: %s", ae.Message)
	// Another node leads; the write was not made.
	others := c.admin(c.followers()...)
	waitFor(t, 15*time.Second, "another leader", func() bool {
		l := c.leader()
		return l != nil && l != leader
	})
	var after []api.Token
	waitFor(t, 10*time.Second, "a list from the new leader", func() bool {
		return others.Do(ctx, http.MethodGet, "/v1/tokens", nil, &after) == nil
	})
	for _, tk := range after {
		if slices.Contains(tk.Tags, "full") {
			t.Fatalf("the write answered %s was made", api.CodeStorageFailed)
		}
	}
	if err := others.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	disks[leader.name].full.Store(false)
	want := c.leader().srv.Store().Index()
	waitFor(t, 15*time.Second, "the full node to catch up", func() bool { return leader.srv.Store().Index() >= want })
	c.waitConverged()
}

// TestStorageErrors maps log store errors to API errors.
func TestStorageErrors(t *testing.T) {
	tests := []struct {
		err  error
		code string
	}{
		{fmt.Errorf("write: %w", syscall.ENOSPC), api.CodeStorageFailed},
		{&net.OpError{Op: "write", Err: syscall.EIO}, api.CodeStorageFailed},
		{errors.New("sync raft.db: no space left on device"), api.CodeStorageFailed},
		{fmt.Errorf("x: %w", syscall.EDQUOT), api.CodeStorageFailed},
		// Handed to raft, then leadership was lost: it may yet commit.
		{raft.ErrLeadershipLost, api.CodeOutcomeUnknown},
		{raft.ErrRaftShutdown, api.CodeOutcomeUnknown},
		// Never queued: nothing was changed.
		{raft.ErrEnqueueTimeout, api.CodeUnavailable},
	}
	for _, tt := range tests {
		if got := applyError("c1", tt.err); got.Code != tt.code {
			t.Errorf("applyError(%v) = %s; want %s", tt.err, got.Code, tt.code)
		}
	}
}

package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
)

// testCluster is a Raft cluster of in-process coordinators connected by
// raft's in-memory transport; each still serves its HTTPS API on loopback.
type testCluster struct {
	t     testing.TB
	key   clusterkey.Key
	nodes []*testNode
	tune  func(*Config) // changes every node's configuration; nil: none
}

type testNode struct {
	name   string
	srv    *Server
	trans  *raft.InmemTransport
	logs   *raft.InmemStore // nil with a data dir
	snaps  *raft.InmemSnapshotStore
	cancel context.CancelFunc
	done   chan struct{}
}

func (n *testNode) stopped() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

func (n *testNode) stop() {
	n.cancel()
	<-n.done
	n.trans.Close()
}

func startCluster(t testing.TB, size int) *testCluster {
	return startClusterWith(t, size, nil)
}

// startClusterWith starts a cluster whose nodes' configurations tune
// changes (nil: none).
func startClusterWith(t testing.TB, size int, tune func(*Config)) *testCluster {
	t.Helper()
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, key: key, tune: tune}
	var members []Member
	for i := range size {
		name := fmt.Sprintf("c%d", i+1)
		addr, trans := raft.NewInmemTransport(raft.ServerAddress(name + ":8301"))
		c.nodes = append(c.nodes, &testNode{name: name, trans: trans})
		members = append(members, Member{Name: name, RaftAddr: string(addr)})
	}
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	for _, n := range c.nodes {
		c.run(n, Config{InitialCluster: members})
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if !n.stopped() {
				n.stop()
			}
		}
	})
	c.waitReady(c.nodes)
	return c
}

// run starts node n with cfg completed by the cluster's key, n's transport
// and fresh in-memory stores (unless cfg has a data dir).
func (c *testCluster) run(n *testNode, cfg Config) {
	c.t.Helper()
	cfg.Name, cfg.ClusterKey, cfg.APIListen, cfg.RaftTransport = n.name, c.key, "127.0.0.1:0", n.trans
	cfg.Logger = logging.New(testWriter{c.t}, 0)
	if cfg.DataDir == "" {
		n.logs = raft.NewInmemStore()
		n.snaps = raft.NewInmemSnapshotStore()
		cfg.RaftStores = &RaftStores{Log: n.logs, Stable: raft.NewInmemStore(), Snapshot: n.snaps}
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.srv, n.cancel, n.done = srv, cancel, make(chan struct{})
	go func() { srv.Run(ctx); close(n.done) }()
}

// waitReady waits until one of nodes leads, the cluster state is
// bootstrapped and every node in nodes has registered its API URL.
func (c *testCluster) waitReady(nodes []*testNode) *testNode {
	c.t.Helper()
	var leader *testNode
	waitFor(c.t, 15*time.Second, "a leader with every node registered", func() bool {
		leader = nil
		for _, n := range nodes {
			if n.srv.Raft().State() == raft.Leader {
				leader = n
			}
		}
		if leader == nil {
			return false
		}
		for _, n := range nodes {
			if _, ok := n.srv.leaderAPIURL(); !ok {
				return false
			}
			ready := false
			n.srv.Store().Read(func(tb *state.Tables, _ uint64) {
				ready = tb.Bootstrapped && len(tb.Coordinators) == len(c.nodes)
			})
			if !ready {
				return false
			}
		}
		return true
	})
	return leader
}

func (c *testCluster) leader() *testNode {
	for _, n := range c.nodes {
		if !n.stopped() && n.srv.Raft().State() == raft.Leader {
			return n
		}
	}
	return nil
}

func (c *testCluster) followers() []*testNode {
	var out []*testNode
	for _, n := range c.nodes {
		if !n.stopped() && n.srv.Raft().State() != raft.Leader {
			out = append(out, n)
		}
	}
	return out
}

// admin returns an admin client that knows the URLs of nodes, in order.
func (c *testCluster) admin(nodes ...*testNode) *apiclient.Client {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.srv.APIURL())
	}
	srv := nodes[0].srv
	return apiclient.New(urls, srv.Pin(), srv.AdminToken(urls))
}

// waitConverged waits until every running node holds the same state.
func (c *testCluster) waitConverged() {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, "replicas to converge", func() bool {
		var first []byte
		for _, n := range c.nodes {
			if n.stopped() {
				continue
			}
			d := n.srv.Store().Dump()
			if first == nil {
				first = d
			} else if string(d) != string(first) {
				return false
			}
		}
		return true
	})
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

func TestClusterLeaderLoss(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	old := c.leader()
	fol := c.followers()
	// A write through a follower is forwarded to the leader, and the
	// follower reads it back at once.
	if err := c.admin(fol[0]).Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "branch", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	var vnets []api.VNet
	if err := c.admin(fol[0]).Do(ctx, http.MethodGet, "/v1/vnets", nil, &vnets); err != nil {
		t.Fatal(err)
	}
	if len(vnets) != 2 {
		t.Fatalf("got %d vnets on the follower right after the write; want 2", len(vnets))
	}

	old.stop()
	start := time.Now()
	leader := c.waitReady(fol)
	t.Logf("new leader %s after %s", leader.name, time.Since(start))
	// The client knows the dead node first: it moves on, and writes resume.
	cl := c.admin(old, fol[0], fol[1])
	var tok api.CreateTokenResponse
	if err := cl.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: "branch"}, &tok); err != nil {
		t.Fatalf("write after leader loss: %v", err)
	}
	if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "laptop", PublicKey: wgKey()}); err != nil {
		t.Fatalf("join after leader loss: %v", err)
	}
	c.waitConverged()
}

func TestClusterPartitionedFollowerCatchesUp(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	lost := c.followers()[0]
	lost.trans.DisconnectAll()
	for _, n := range c.nodes {
		if n != lost {
			n.trans.Disconnect(lost.trans.LocalAddr())
		}
	}
	// The majority keeps writing while the follower is cut off.
	var majority []*testNode
	for _, n := range c.nodes {
		if n != lost {
			majority = append(majority, n)
		}
	}
	cl := c.admin(majority...)
	var ids []string
	for i := range 30 {
		var tok api.CreateTokenResponse
		if err := cl.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: []string{fmt.Sprintf("t%d", i)}}, &tok); err != nil {
			t.Fatalf("write %d during partition: %v", i, err)
		}
		ids = append(ids, tok.ID)
	}
	before := lost.srv.Store().Index()
	if string(lost.srv.Store().Dump()) == string(majority[0].srv.Store().Dump()) {
		t.Fatal("the partitioned follower already has the writes")
	}
	// Heal; the follower catches up without any client action.
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	c.waitConverged()
	if lost.srv.Store().Index() <= before {
		t.Fatalf("follower index %d did not advance past %d", lost.srv.Store().Index(), before)
	}
	var toks []api.Token
	if err := c.admin(lost).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tk := range toks {
		have[tk.ID] = true
	}
	for _, id := range ids {
		if !have[id] {
			t.Errorf("token %s missing on the healed follower", id)
		}
	}
}

func TestClusterConcurrentJoinsUniqueAddresses(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	const n = 120
	var tok api.CreateTokenResponse
	if err := c.admin(c.nodes...).Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: n}, &tok); err != nil {
		t.Fatal(err)
	}
	// Joins arrive at all three coordinators while leadership moves once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	addrs := map[string]string{} // overlay IP -> peer name
	errs := make(chan error, n)
	transferred := make(chan struct{})
	go func() {
		defer close(transferred)
		if l := c.leader(); l != nil {
			if err := l.srv.Raft().LeadershipTransfer().Error(); err != nil {
				t.Logf("leadership transfer: %v", err)
			}
		}
	}()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := c.nodes[i%len(c.nodes)]
			// The same credential secret with every attempt, as agents send
			// it: a repeat of a join whose answer was lost proves it comes
			// from the peer that joined and uses no second token use.
			req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: fmt.Sprintf("p%03d", i), PublicKey: wgKey(),
				CredentialSecret: fmt.Sprintf("%064x", i+1)}
			cl := apiclient.New([]string{node.srv.APIURL()}, node.srv.Pin(), "")
			var resp api.JoinResponse
			var err error
			// A join whose answer was lost (leader changed mid-commit) is
			// retried with the same name and key: the cluster returns the
			// identity it already assigned rather than a second address.
			for attempt := 0; attempt < 50; attempt++ {
				err = cl.Do(ctx, http.MethodPost, "/v1/join", req, &resp)
				if !api.IsCode(err, api.CodeUnavailable) && !api.IsCode(err, api.CodeOutcomeUnknown) {
					break
				}
			}
			if err != nil {
				errs <- fmt.Errorf("join %s: %w", req.Name, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := addrs[resp.OverlayIP]; dup {
				errs <- fmt.Errorf("%s and %s both got %s", other, req.Name, resp.OverlayIP)
			}
			addrs[resp.OverlayIP] = req.Name
		}()
	}
	wg.Wait()
	<-transferred
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(addrs) != n {
		t.Fatalf("got %d distinct addresses; want %d", len(addrs), n)
	}
	c.waitConverged()
	var peers []api.Peer
	if err := c.admin(c.nodes[2]).Do(ctx, http.MethodGet, "/v1/peers", nil, &peers); err != nil {
		t.Fatal(err)
	}
	if len(peers) != n {
		t.Fatalf("got %d peers; want %d", len(peers), n)
	}
	var toks []api.Token
	if err := c.admin(c.nodes[1]).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].UsesLeft != 0 {
		t.Fatalf("got tokens %+v; want one with no uses left", toks)
	}
}

// TestClusterStopsCleanly checks that a stopped cluster leaves no goroutines
// behind.
func TestClusterStopsCleanly(t *testing.T) {
	base := runtime.NumGoroutine()
	c := startCluster(t, 3)
	for _, n := range c.nodes {
		n.stop()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines left after stop (started with %d):\n%s", runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// TestClusterStatusShowsDeadMember: a coordinator that stopped shows as
// unreachable within a few heartbeats, with a last contact that grows and
// no applied index (it does not answer), in the status any coordinator
// gives (a follower asks the leader); the others are reachable, heard from
// within a heartbeat, and level with the leader once writes settle.
func TestClusterStatusShowsDeadMember(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader, fol := c.leader(), c.followers()
	status := func(n *testNode) (api.ClusterStatus, map[string]api.Member) {
		t.Helper()
		var st api.ClusterStatus
		if err := c.admin(n).Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
			t.Fatal(err)
		}
		out := map[string]api.Member{}
		for _, m := range st.Members {
			out[m.Name] = m
		}
		return st, out
	}
	reach := func(m api.Member) string {
		if m.Reachable == nil {
			return "unknown"
		}
		return map[bool]string{true: "yes", false: "no"}[*m.Reachable]
	}
	waitFor(t, 5*time.Second, "every member level with the leader", func() bool {
		st, ms := status(leader)
		for name, m := range ms {
			if reach(m) != "yes" || m.AppliedIndex == nil || m.Lag == nil || *m.Lag > 0 || st.CommitIndex == 0 {
				t.Logf("%s: reachable %s, lag %v, error %q", name, reach(m), m.Lag, m.Error)
				return false
			}
		}
		return true
	})
	fol[0].stop()
	var first int64
	waitFor(t, 5*time.Second, fol[0].name+" unreachable in the leader's status", func() bool {
		_, ms := status(leader)
		m := ms[fol[0].name]
		if reach(m) != "no" {
			return false
		}
		if reach(ms[fol[1].name]) != "yes" || reach(ms[leader.name]) != "yes" {
			return false
		}
		if m.LastContactMS == nil || m.AppliedIndex != nil || m.Lag != nil || m.Error == "" {
			t.Fatalf("the stopped member: last contact %v, applied %v, lag %v, error %q; want a last contact, no index and why", m.LastContactMS, m.AppliedIndex, m.Lag, m.Error)
		}
		first = *m.LastContactMS
		return true
	})
	// The last contact grows as time passes; a follower (asking the
	// leader) says the same. Polled: a leader re-elected on a busy host
	// starts its count over.
	waitFor(t, 5*time.Second, "the last contact to grow in a follower's status", func() bool {
		st, ms := status(fol[1])
		m := ms[fol[0].name]
		if st.Server != fol[1].name {
			t.Fatalf("status answered by %s; want %s", st.Server, fol[1].name)
		}
		return reach(m) == "no" && m.LastContactMS != nil && *m.LastContactMS >= first+300 && m.AppliedIndex == nil &&
			reach(ms[leader.name]) == "yes" && reach(ms[fol[1].name]) == "yes"
	})
}

// TestClusterTransferLeadership: asked through a follower, the leader hands
// leadership to another coordinator, which then leads (writes go on).
func TestClusterTransferLeadership(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	old, fol := c.leader(), c.followers()
	var res api.LeadershipTransfer
	if err := c.admin(fol[0]).Do(ctx, http.MethodPost, "/v1/cluster/transfer-leadership", nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.From != old.name || res.To == "" || res.To == old.name {
		t.Fatalf("transfer answered %+v; want from %s to another coordinator", res, old.name)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var st api.ClusterStatus
		err := c.admin(fol[1]).Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st)
		if err == nil && st.Leader == res.To {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not the leader 5 s after the transfer (status %+v, %v)", res.To, st, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
	if err := c.admin(old).Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "after", Overlay: "100.114.0.0/16"}, nil); err != nil {
		t.Fatalf("write after the transfer: %v", err)
	}
}

// TestClusterRemoveMember: a coordinator whose host is gone is removed
// through a follower: the cluster lists two members and the maps stop
// naming it; the leader cannot be removed; an unknown name is not found.
func TestClusterRemoveMember(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader, fol := c.leader(), c.followers()
	fol[0].stop()
	if err := c.admin(fol[1]).Do(ctx, http.MethodDelete, "/v1/cluster/members/"+leader.name, nil, nil); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("removing the leader: %v; want a conflict", err)
	}
	if err := c.admin(fol[1]).Do(ctx, http.MethodDelete, "/v1/cluster/members/nope", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("removing an unknown coordinator: %v; want not found", err)
	}
	if err := c.admin(fol[1]).Do(ctx, http.MethodDelete, "/v1/cluster/members/"+fol[0].name, nil, nil); err != nil {
		t.Fatal(err)
	}
	var st api.ClusterStatus
	if err := c.admin(leader).Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.Name == fol[0].name {
			t.Fatalf("%s still listed after its removal: %+v", fol[0].name, st.Members)
		}
	}
	if len(st.Members) != 2 {
		t.Fatalf("%d members after removing one of three", len(st.Members))
	}
	leader.srv.Store().Read(func(tb *state.Tables, _ uint64) {
		if _, ok := tb.Coordinators[fol[0].name]; ok {
			t.Fatalf("the maps still name %s", fol[0].name)
		}
	})
	// The two left still write.
	if err := c.admin(leader, fol[1]).Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "two", Overlay: "100.115.0.0/16"}, nil); err != nil {
		t.Fatalf("write with two coordinators left: %v", err)
	}
}

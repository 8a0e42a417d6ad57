package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

func TestMemberConflict(t *testing.T) {
	servers := []raft.Server{
		{ID: "c1", Address: "10.0.0.1:8301", Suffrage: raft.Voter},
		{ID: "c2", Address: "10.0.0.2:8301", Suffrage: raft.Nonvoter},
	}
	for _, tt := range []struct {
		name, member, addr string
		code               string // "" accepted
	}{
		{"new name and address", "c3", "10.0.0.3:8301", ""},
		{"name taken", "c2", "10.0.0.3:8301", api.CodeConflict},
		{"address taken", "c3", "10.0.0.1:8301", api.CodeConflict},
		{"both taken by others", "c1", "10.0.0.2:8301", api.CodeConflict},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := memberConflict(servers, tt.member, tt.addr)
			if tt.code == "" && err != nil || tt.code != "" && !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want %q", err, tt.code)
			}
		})
	}
}

func TestCanPromote(t *testing.T) {
	for _, tt := range []struct {
		applied, commit uint64
		want            bool
	}{
		{0, 0, true},
		{100, 100, true},
		{100, 100 + promoteMaxLag, true},
		{100, 101 + promoteMaxLag, false},
		{0, 5000, false},
		{5000, 4000, true}, // a follower's commit index may trail what it applied
	} {
		if got := canPromote(tt.applied, tt.commit); got != tt.want {
			t.Errorf("canPromote(%d, %d) = %v; want %v", tt.applied, tt.commit, got, tt.want)
		}
	}
}

func TestJoinStatus(t *testing.T) {
	members := []replicaMember{{Name: "c1", RaftAddr: "10.0.0.1:8301", Voter: true}, {Name: "c4", RaftAddr: "10.0.0.4:8301"}}
	for _, tt := range []struct {
		name, me, addr string
		want           joinState
	}{
		{"listed", "c4", "10.0.0.4:8301", joinListed},
		{"listed at another address", "c4", "10.0.0.9:8301", joinWrongAddr},
		{"not listed", "c5", "10.0.0.5:8301", joinNotListed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := joinStatus(members, tt.me, tt.addr); got.state != tt.want {
				t.Fatalf("got %v; want %v", got.state, tt.want)
			}
		})
	}
}

// TestBuildMembers judges members from the leader's heartbeats and their
// own answers.
func TestBuildMembers(t *testing.T) {
	servers := []raft.Server{
		{ID: "c1", Address: "a1:1", Suffrage: raft.Voter},
		{ID: "c2", Address: "a2:1", Suffrage: raft.Voter},
		{ID: "c3", Address: "a3:1", Suffrage: raft.Voter},
		{ID: "c4", Address: "a4:1", Suffrage: raft.Nonvoter},
	}
	view := func(name string, applied, commit uint64, leaderContact int64, unreachable map[string]int64) *replicaInfo {
		return &replicaInfo{Name: name, AppliedIndex: applied, CommitIndex: commit, LeaderContactMS: leaderContact, Unreachable: unreachable}
	}
	type row struct {
		role      string
		reachable bool
		contact   int64 // -1: absent
		applied   int64 // -1: absent
		lag       int64 // -1: absent
	}
	for _, tt := range []struct {
		name   string
		in     statusInput
		commit uint64
		want   map[string]row
	}{
		{
			name: "leader answers: a dead member, a partitioned one, a lagging non-voter",
			in: statusInput{self: "c1", leader: "c1", servers: servers,
				views: map[string]*replicaInfo{
					"c1": view("c1", 100, 100, -1, map[string]int64{"c2": 7000, "c3": 2500}),
					"c3": view("c3", 60, 60, 2500, nil), // partitioned: answers over the API, not over Raft
					"c4": view("c4", 90, 90, 10, nil),
				},
				errs: map[string]string{"c2": "no answer within 1s"}},
			commit: 100,
			want: map[string]row{
				"c1": {"leader", true, -1, 100, 0},
				"c2": {"follower", false, 7000, -1, -1},
				"c3": {"follower", false, 2500, 60, 40},
				"c4": {"nonvoter", true, 0, 90, 10},
			},
		},
		{
			name: "a follower answers, asking the leader",
			in: statusInput{self: "c3", leader: "c1", servers: servers,
				views: map[string]*replicaInfo{
					"c1": view("c1", 100, 100, -1, map[string]int64{"c2": 7000}),
					"c3": view("c3", 99, 99, 20, nil),
					"c4": view("c4", 100, 100, 10, nil),
				}},
			commit: 100,
			want: map[string]row{
				"c1": {"leader", true, 20, 100, 0},
				"c2": {"follower", false, 7000, -1, -1},
				"c3": {"follower", true, 0, 99, 1},
				"c4": {"nonvoter", true, 0, 100, 0},
			},
		},
		{
			name: "no leader: members that answered are reachable",
			in: statusInput{self: "c3", leader: "", servers: servers,
				views: map[string]*replicaInfo{
					"c3": view("c3", 99, 99, 4000, nil),
					"c4": view("c4", 98, 98, 4100, nil),
				}},
			commit: 0,
			want: map[string]row{
				"c1": {"follower", false, -1, -1, -1},
				"c2": {"follower", false, -1, -1, -1},
				"c3": {"follower", true, -1, 99, -1},
				"c4": {"nonvoter", true, -1, 98, -1},
			},
		},
		{
			name: "the leader does not answer the follower that is asked",
			in: statusInput{self: "c3", leader: "c1", servers: servers,
				views: map[string]*replicaInfo{"c3": view("c3", 99, 99, 3000, nil)},
				errs:  map[string]string{"c1": "no answer"}},
			commit: 0,
			want: map[string]row{
				"c1": {"leader", false, 3000, -1, -1},
				"c2": {"follower", false, -1, -1, -1},
				"c3": {"follower", true, -1, 99, -1},
				"c4": {"nonvoter", false, -1, -1, -1},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, commit := buildMembers(tt.in)
			if commit != tt.commit {
				t.Fatalf("commit %d; want %d", commit, tt.commit)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d members; want %d", len(got), len(tt.want))
			}
			opt := func(p *int64) int64 {
				if p == nil {
					return -1
				}
				return *p
			}
			optU := func(p *uint64) int64 {
				if p == nil {
					return -1
				}
				return int64(*p)
			}
			for _, m := range got {
				w := tt.want[m.Name]
				r := row{m.Role, m.Reachable != nil && *m.Reachable, opt(m.LastContactMS), optU(m.AppliedIndex), optU(m.Lag)}
				if m.Reachable == nil {
					t.Fatalf("%s: reachable absent", m.Name)
				}
				if r != w {
					t.Errorf("%s: got %+v; want %+v", m.Name, r, w)
				}
				if m.Error != tt.in.errs[m.Name] {
					t.Errorf("%s: error %q; want %q", m.Name, m.Error, tt.in.errs[m.Name])
				}
			}
		})
	}
}

// addNode starts a new coordinator that joins the cluster (no state,
// --join) on a fresh transport at name:8301, connected to every running
// node; it replaces a stopped node of that name.
func (c *testCluster) addNode(name string) *testNode {
	c.t.Helper()
	addr, trans := raft.NewInmemTransport(raft.ServerAddress(name + ":8301"))
	n := &testNode{name: name, trans: trans}
	var join []string
	for _, o := range c.nodes {
		if o.stopped() {
			continue
		}
		o.trans.Connect(addr, trans)
		trans.Connect(o.trans.LocalAddr(), o.trans)
		join = append(join, o.srv.APIURL())
	}
	c.run(n, Config{Join: join[:1]})
	replaced := false
	for i, o := range c.nodes {
		if o.name == name {
			c.nodes[i], replaced = n, true
		}
	}
	if !replaced {
		c.nodes = append(c.nodes, n)
	}
	return n
}

// running returns the nodes that run.
func (c *testCluster) running() []*testNode {
	var out []*testNode
	for _, n := range c.nodes {
		if !n.stopped() {
			out = append(out, n)
		}
	}
	return out
}

// addMember adds n through the API, as `meshd cluster add` does: as a
// non-voter, then promoted once it has caught up.
func addMember(t *testing.T, cl *apiclient.Client, n *testNode) {
	t.Helper()
	ctx := context.Background()
	if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/members", api.AddMemberRequest{Name: n.name, RaftAddr: string(n.trans.LocalAddr()), Nonvoter: true}, nil); err != nil {
		t.Fatalf("add %s: %v", n.name, err)
	}
	var last error
	waitFor(t, 20*time.Second, n.name+" to catch up and be promoted", func() bool {
		last = cl.Do(ctx, http.MethodPost, "/v1/cluster/members/"+n.name+"/promote", nil, nil)
		if last != nil && !api.IsCode(last, api.CodeCatchingUp) && !api.IsCode(last, api.CodeUnavailable) {
			t.Fatalf("promote %s: %v", n.name, last)
		}
		return last == nil
	})
}

// voters lists the voters in n's Raft configuration, sorted.
func voters(t *testing.T, n *testNode) []string {
	t.Helper()
	cf := n.srv.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, string(s.ID))
		}
	}
	slices.Sort(out)
	return out
}

// writes creates join tokens in a stream and records the acknowledged ones.
type writes struct {
	cl    *apiclient.Client
	mu    sync.Mutex
	acked []string // guarded by mu
	fails int      // guarded by mu
	stop  chan struct{}
	done  chan struct{}
}

func startWrites(cl *apiclient.Client) *writes {
	w := &writes{cl: cl, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			var tok api.CreateTokenResponse
			err := cl.Do(context.Background(), http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok)
			w.mu.Lock()
			if err == nil {
				w.acked = append(w.acked, tok.ID)
			} else {
				w.fails++
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writes) count() int { w.mu.Lock(); defer w.mu.Unlock(); return len(w.acked) }

// waitMore waits for n more acknowledged writes.
func (w *writes) waitMore(t *testing.T, n int, what string) {
	t.Helper()
	target := w.count() + n
	waitFor(t, 20*time.Second, fmt.Sprintf("%d writes %s", n, what), func() bool { return w.count() >= target })
}

func (w *writes) finish() ([]string, int) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked), w.fails
}

// holdsTokens reports which of ids n's replica lacks.
func holdsTokens(n *testNode, ids []string) []string {
	var missing []string
	n.srv.Store().Read(func(t *state.Tables, _ uint64) {
		for _, id := range ids {
			if _, ok := t.Tokens[id]; !ok {
				missing = append(missing, id)
			}
		}
	})
	return missing
}

// TestClusterGrowShrinkUnderWrites grows a cluster from 3 to 5
// coordinators and shrinks it back to 3 (two of the original ones removed,
// the leader among them after handing its leadership to a new one) while a
// client writes without pause: every acknowledged write is on every
// coordinator left, and the maps name exactly those.
func TestClusterGrowShrinkUnderWrites(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	cl := c.admin(c.nodes...)
	w := startWrites(cl)
	w.waitMore(t, 20, "before growing")

	for _, name := range []string{"c4", "c5"} {
		n := c.addNode(name)
		addMember(t, cl, n)
		var urls []string
		for _, r := range c.running() {
			urls = append(urls, r.srv.APIURL())
		}
		cl.SetURLs(urls)
		w.waitMore(t, 10, "after adding "+name)
	}
	if got := voters(t, c.leader()); !slices.Equal(got, []string{"c1", "c2", "c3", "c4", "c5"}) {
		t.Fatalf("voters %v after growing; want c1-c5", got)
	}

	// Hand the leadership to c4, then remove c1 and c2.
	var res api.LeadershipTransfer
	if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: "c4"}, &res); err != nil {
		t.Fatal(err)
	}
	if res.To != "c4" {
		t.Fatalf("leadership went to %q; want c4", res.To)
	}
	byName := map[string]*testNode{}
	for _, n := range c.nodes {
		byName[n.name] = n
	}
	for _, name := range []string{"c1", "c2"} {
		waitFor(t, 10*time.Second, "removing "+name, func() bool {
			err := cl.Do(ctx, http.MethodDelete, "/v1/cluster/members/"+name, nil, nil)
			if api.IsCode(err, api.CodeConflict) { // it leads again: move the leadership on
				cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: "c4"}, nil)
				return false
			}
			if err != nil && !api.IsCode(err, api.CodeUnavailable) && !api.IsCode(err, api.CodeOutcomeUnknown) {
				t.Fatalf("remove %s: %v", name, err)
			}
			return err == nil
		})
		byName[name].stop()
		cl.SetURLs([]string{byName["c3"].srv.APIURL(), byName["c4"].srv.APIURL(), byName["c5"].srv.APIURL()})
		w.waitMore(t, 10, "after removing "+name)
	}
	acked, fails := w.finish()
	t.Logf("%d writes acknowledged, %d failed (outcome unknown) while the cluster changed", len(acked), fails)
	left := []*testNode{byName["c3"], byName["c4"], byName["c5"]}
	for _, n := range left {
		if got := voters(t, n); !slices.Equal(got, []string{"c3", "c4", "c5"}) {
			t.Fatalf("%s's voters %v; want c3 c4 c5", n.name, got)
		}
		waitFor(t, 10*time.Second, n.name+" to hold every acknowledged write", func() bool { return len(holdsTokens(n, acked)) == 0 })
	}
	c.waitConverged()
	left[0].srv.Store().Read(func(tb *state.Tables, _ uint64) {
		var names []string
		for n := range tb.Coordinators {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"c3", "c4", "c5"}) {
			t.Fatalf("the maps name coordinators %v; want c3 c4 c5", names)
		}
	})
}

// TestClusterReplaceWipedCoordinator: a coordinator whose data dir was
// lost is removed and added back empty under its name and address; it gets
// the leader's snapshot (the log it would need was compacted away) and the
// entries since, ends level with the others (same applied index, same
// state), serves, and the cluster has three voters again.
func TestClusterReplaceWipedCoordinator(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.SnapshotThreshold, cfg.SnapshotInterval, cfg.TrailingLogs = 32, 50*time.Millisecond, 8
	})
	ctx := context.Background()
	cl := c.admin(c.nodes...)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 30 {
				if err := cl.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	leader := c.leader()
	waitFor(t, 10*time.Second, "the leader to snapshot and compact its log", func() bool {
		first, _ := leader.logs.FirstIndex()
		snaps, _ := leader.snaps.List()
		return first > 1 && len(snaps) > 0
	})
	victim := c.followers()[0]
	victim.stop()
	if err := cl.Do(ctx, http.MethodDelete, "/v1/cluster/members/"+victim.name, nil, nil); err != nil {
		t.Fatal(err)
	}
	// Wiped: a new node with empty stores at the same name and address.
	n := c.addNode(victim.name)
	if err := cl.Do(ctx, http.MethodGet, "/v1/tokens", nil, nil); err != nil {
		t.Fatal(err)
	}
	addMember(t, c.admin(leader), n)
	// One more write; then every replica has applied the same index and
	// holds the same state.
	if err := cl.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "after", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every replica at the same applied index", func() bool {
		want := leader.srv.Raft().AppliedIndex()
		for _, o := range c.running() {
			if o.srv.Raft().AppliedIndex() != want {
				return false
			}
		}
		return true
	})
	c.waitConverged()
	if snaps, _ := n.snaps.List(); len(snaps) == 0 {
		t.Fatal("the replacement caught up without the leader's snapshot")
	}
	if got := voters(t, leader); !slices.Equal(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("voters %v; want c1 c2 c3", got)
	}
	var toks []api.Token
	if err := c.admin(n).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil || len(toks) != 120 {
		t.Fatalf("the replacement lists %d tokens (%v); want 120", len(toks), err)
	}
	var st api.ClusterStatus
	if err := c.admin(n).Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.Reachable == nil || !*m.Reachable || m.Role == "nonvoter" {
			t.Fatalf("status after the replacement: %+v", st.Members)
		}
	}
}

// TestClusterMembershipRefusals: names and addresses already in the
// cluster, malformed ones, promotions and transfers that cannot be done.
func TestClusterMembershipRefusals(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	cl := c.admin(c.followers()[0])
	add := func(name, addr string, nonvoter bool) error {
		return cl.Do(ctx, http.MethodPost, "/v1/cluster/members", api.AddMemberRequest{Name: name, RaftAddr: addr, Nonvoter: nonvoter}, nil)
	}
	for _, tt := range []struct {
		name string
		err  error
		code string
	}{
		{"add an existing name", add("c2", "c9:8301", false), api.CodeConflict},
		{"add at an existing address", add("c9", "c2:8301", false), api.CodeConflict},
		{"add a bad name", add("-c9", "c9:8301", false), api.CodeInvalidName},
		{"add without a port", add("c9", "c9", false), api.CodeInvalidArgument},
		{"promote an unknown name", cl.Do(ctx, http.MethodPost, "/v1/cluster/members/c9/promote", nil, nil), api.CodeNotFound},
		{"transfer to an unknown name", cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: "c9"}, nil), api.CodeNotFound},
		{"promote a voter", cl.Do(ctx, http.MethodPost, "/v1/cluster/members/c3/promote", nil, nil), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.code == "" && tt.err != nil || tt.code != "" && !api.IsCode(tt.err, tt.code) {
				t.Fatalf("got %v; want %q", tt.err, tt.code)
			}
		})
	}
	// A non-voter that never started can be neither promoted nor lead.
	if err := add("c9", "c9:8301", true); err != nil {
		t.Fatal(err)
	}
	if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/members/c9/promote", nil, nil); !api.IsCode(err, api.CodeCatchingUp) {
		t.Fatalf("promoting a silent non-voter: %v; want %s", err, api.CodeCatchingUp)
	}
	if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: "c9"}, nil); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("transfer to a non-voter: %v; want %s", err, api.CodeConflict)
	}
	if got := voters(t, c.leader()); !slices.Equal(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("voters %v; want c1-c3 (the non-voter has no vote)", got)
	}
	if err := cl.Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil); err != nil {
		t.Fatal(err)
	}
	// Leadership goes to the follower named.
	target := c.followers()[1].name
	var res api.LeadershipTransfer
	if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: target}, &res); err != nil {
		t.Fatal(err)
	}
	if res.To != target {
		t.Fatalf("leadership went to %q; want %s", res.To, target)
	}
}

// TestClusterStatusShowsLag: a follower cut off from Raft (its API still
// answers) shows as unreachable, with how far it trails the leader; once
// the cut heals it is level again.
func TestClusterStatusShowsLag(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	lost := c.followers()[0]
	lost.trans.DisconnectAll()
	for _, n := range c.nodes {
		if n != lost {
			n.trans.Disconnect(lost.trans.LocalAddr())
		}
	}
	cl := c.admin(leader)
	for range 20 {
		if err := cl.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	member := func(st api.ClusterStatus, name string) api.Member {
		for _, m := range st.Members {
			if m.Name == name {
				return m
			}
		}
		t.Fatalf("%s not in the status", name)
		return api.Member{}
	}
	waitFor(t, 5*time.Second, "the cut-off follower reported unreachable and lagging", func() bool {
		var st api.ClusterStatus
		if err := cl.Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
			t.Fatal(err)
		}
		m := member(st, lost.name)
		return m.Reachable != nil && !*m.Reachable && m.Lag != nil && *m.Lag >= 20 && m.AppliedIndex != nil &&
			m.LastContactMS != nil && *m.LastContactMS > 0
	})
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	waitFor(t, 10*time.Second, "the healed follower level again", func() bool {
		var st api.ClusterStatus
		if err := cl.Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
			t.Fatal(err)
		}
		m := member(st, lost.name)
		return m.Reachable != nil && *m.Reachable && m.Lag != nil && *m.Lag == 0
	})
}

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

// upgradeFrom is the earlier commit the rolling-upgrade test starts from:
// its coordinators already ignore fields of log entries they do not know
// and skip ignorable command types, which is what a rolling upgrade from
// it relies on. The test builds its binary from git.
const upgradeFrom = "81d4a53"

// upNode is one process of the upgrade lab: a coordinator or an agent.
type upNode struct {
	name, addr string
	bin        string // the binary it runs now
	proc       *harness.Proc
	stopping   bool // stopped on purpose: its exit is checked where it is stopped
}

func (n *upNode) url() string { return "https://" + n.addr + ":8443" }

// upgradeLab is three coordinators and three agents, each in its own
// namespace on one bridge (198.18.50.0/24), and a namespace the test's
// clients dial from.
type upgradeLab struct {
	t      *testing.T
	net    *netlab.Lab
	dir    string
	key    string
	ifPfx  string
	coords []*upNode
	agents map[string]*upNode
	pin    [32]byte
	admin  string // the admin credential
}

func newUpgradeLab(t *testing.T) *upgradeLab {
	t.Helper()
	nl, err := netlab.New(fmt.Sprintf("up%d-", os.Getpid()%100000))
	if err != nil {
		t.Fatal(err)
	}
	l := &upgradeLab{t: t, net: nl, dir: t.TempDir(), ifPfx: fmt.Sprintf("u%d", os.Getpid()%100000), agents: map[string]*upNode{}}
	l.key = filepath.Join(l.dir, "cluster.key")
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.nodes() {
				if n.proc != nil {
					t.Logf("--- %s log (tail):\n%s", n.name, tail(n.proc.Log(), 40))
				}
			}
		}
		for _, n := range l.nodes() {
			if n.proc != nil {
				n.proc.Kill()
			}
		}
		if err := nl.Close(); err != nil {
			t.Errorf("lab teardown: %v", err)
		}
		if left, _ := netlab.Namespaces(nl.Prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	if err := nl.AddNS("wan"); err != nil {
		t.Fatal(err)
	}
	if err := nl.AddBridge("wan", "br0"); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]string{"adm": "198.18.50.5"}
	for i := range 3 {
		c := &upNode{name: fmt.Sprintf("c%d", i+1), addr: fmt.Sprintf("198.18.50.%d", 11+i)}
		l.coords = append(l.coords, c)
		hosts[c.name] = c.addr
		p := &upNode{name: fmt.Sprintf("p%d", i+1), addr: fmt.Sprintf("198.18.50.%d", 21+i)}
		l.agents[p.name] = p
		hosts[p.name] = p.addr
	}
	for name, addr := range hosts {
		if err := nl.AddNS(name); err != nil {
			t.Fatal(err)
		}
		if err := nl.Connect(name, "eth0", addr+"/24", "wan", "br0"); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func (l *upgradeLab) nodes() []*upNode {
	out := slices.Clone(l.coords)
	for _, name := range []string{"p1", "p2", "p3"} {
		out = append(out, l.agents[name])
	}
	return out
}

// crashed fails the test when a process ended that the test did not stop.
func (l *upgradeLab) crashed() {
	l.t.Helper()
	for _, n := range l.nodes() {
		if n.proc != nil && !n.stopping && n.proc.Exited() {
			l.t.Fatalf("%s (%s) exited on its own: %v\n%s", n.name, n.bin, n.proc.Err(), tail(n.proc.Log(), 60))
		}
	}
}

// waitFor polls cond (checking that nothing crashed) until it holds.
func (l *upgradeLab) waitFor(d time.Duration, what string, cond func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		l.crashed()
		if time.Now().After(deadline) {
			l.t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// startCoordinator starts (or restarts on its data dir) coordinator n
// running bin.
func (l *upgradeLab) startCoordinator(n *upNode, bin string) {
	l.t.Helper()
	var initial []string
	for _, c := range l.coords {
		initial = append(initial, c.name+"="+c.addr+":8301")
	}
	p, err := harness.Start(l.dir, n.name, l.net.Wrap(n.name), bin, "coordinator", "--name", n.name,
		"--data-dir", filepath.Join(l.dir, n.name), "--listen", n.addr+":8443", "--raft-listen", n.addr+":8301",
		"--cluster-key-file", l.key, "--initial-cluster", strings.Join(initial, ","), "--stun-listen", n.addr+":3478",
		"--log-level", "info")
	if err != nil {
		l.t.Fatal(err)
	}
	n.proc, n.bin, n.stopping = p, bin, false
}

// stop stops n with SIGTERM and checks that it exited cleanly.
func (l *upgradeLab) stop(n *upNode) {
	l.t.Helper()
	n.stopping = true
	n.proc.Stop(15 * time.Second)
	if err := n.proc.Err(); err != nil {
		l.t.Errorf("%s (%s) ended with %v on SIGTERM; want a clean exit\n%s", n.name, n.bin, err, tail(n.proc.Log(), 40))
	}
}

// client is an API client of the coordinators at urls (all when none),
// dialing from the lab's admin namespace, with the admin credential.
func (l *upgradeLab) client(nodes ...*upNode) *apiclient.Client {
	if len(nodes) == 0 {
		nodes = l.coords
	}
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url())
	}
	c := apiclient.New(urls, l.pin, l.admin)
	c.SetDialContext(l.net.DialContext("adm"))
	return c
}

func (l *upgradeLab) node(name string) *upNode {
	for _, c := range l.coords {
		if c.name == name {
			return c
		}
	}
	l.t.Fatalf("no coordinator %q", name)
	return nil
}

// status is the cluster status as n sees it.
func (l *upgradeLab) status(n *upNode) (api.ClusterStatus, error) {
	var st api.ClusterStatus
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := l.client(n).Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st)
	return st, err
}

// healthy waits until n answers (it has replayed its log) and the leader
// hears from it, and returns the leader.
func (l *upgradeLab) healthy(n *upNode, d time.Duration) *upNode {
	l.t.Helper()
	var leader *upNode
	l.waitFor(d, n.name+" to be back in the cluster", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if l.client(n).Do(ctx, http.MethodGet, "/v1/health", nil, nil) != nil {
			return false
		}
		st, err := l.status(n)
		if err != nil || st.Leader == "" {
			return false
		}
		leader = l.node(st.Leader)
		ls, err := l.status(leader)
		if err != nil || ls.Leader != leader.name || len(ls.Members) != len(l.coords) {
			return false
		}
		for _, m := range ls.Members {
			if m.Reachable == nil || !*m.Reachable {
				return false
			}
		}
		return true
	})
	return leader
}

// startAgent starts `meshd peer up` of bin in p's namespace.
func (l *upgradeLab) startAgent(p *upNode, bin, tok string) {
	l.t.Helper()
	proc, err := harness.Start(l.dir, p.name, l.net.Wrap(p.name), bin, "peer", "up", "--token", tok,
		"--state-dir", filepath.Join(l.dir, p.name), "--name", p.name, "--interface", l.ifPfx+p.name, "--log-level", "debug")
	if err != nil {
		l.t.Fatal(err)
	}
	p.proc, p.bin = proc, bin
}

// agentStatus is `meshd status --json` of agent p, by its own binary.
func (l *upgradeLab) agentStatus(p *upNode) (*api.LocalStatus, error) {
	out, err := l.net.Exec(p.name, p.bin, "status", "--json", "--state-dir", filepath.Join(l.dir, p.name))
	if err != nil {
		return nil, err
	}
	var st api.LocalStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("status of %s: %w", p.name, err)
	}
	return &st, nil
}

// sees waits until agent p has every one of others in its map, with an
// open map stream, and returns its status.
func (l *upgradeLab) sees(p *upNode, d time.Duration, others ...string) *api.LocalStatus {
	l.t.Helper()
	var st *api.LocalStatus
	l.waitFor(d, fmt.Sprintf("%s to see %v", p.name, others), func() bool {
		var err error
		if st, err = l.agentStatus(p); err != nil || st.Coordinator == "" {
			return false
		}
		for _, o := range others {
			if !slices.ContainsFunc(st.Peers, func(lp api.LocalPeer) bool { return lp.Name == o }) {
				return false
			}
		}
		return true
	})
	return st
}

// udpStream sends a datagram every 20 ms from a namespace to an echo
// server and records when each answer came back.
type udpStream struct {
	conn net.PacketConn
	mu   sync.Mutex
	got  []time.Time // guarded by mu
	stop chan struct{}
	done chan struct{}
}

func (l *upgradeLab) startUDPStream(ns, dst string) *udpStream {
	l.t.Helper()
	to, err := net.ResolveUDPAddr("udp4", dst)
	if err != nil {
		l.t.Fatal(err)
	}
	s := &udpStream{stop: make(chan struct{}), done: make(chan struct{})}
	// An unconnected socket: ICMP errors on the way do not end the stream.
	if err := l.net.InNS(ns, func() (err error) { s.conn, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		l.t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := s.conn.ReadFrom(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.mu.Lock()
			s.got = append(s.got, time.Now())
			s.mu.Unlock()
		}
	}()
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			s.conn.WriteTo([]byte(fmt.Sprint(seq)), to)
		}
	}()
	l.t.Cleanup(s.close)
	return s
}

func (s *udpStream) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		<-s.done
		s.conn.Close()
	}
}

func (s *udpStream) replies() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// longestGap is the longest time without an event in times between from
// and to (the edges count as events).
func longestGap(times []time.Time, from, to time.Time) time.Duration {
	var gap time.Duration
	last := from
	for _, at := range times {
		if at.Before(from) {
			continue
		}
		if at.After(to) {
			break
		}
		gap = max(gap, at.Sub(last))
		last = at
	}
	return max(gap, to.Sub(last))
}

// writer creates a join token every 10 ms through every coordinator (the
// client moves on when one does not answer) and keeps what was
// acknowledged.
type writer struct {
	mu     sync.Mutex
	ids    []string    // guarded by mu: acknowledged
	at     []time.Time // guarded by mu: when each was acknowledged
	failed int         // guarded by mu
	stop   chan struct{}
	done   chan struct{}
}

func startWriter(cl *apiclient.Client) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var tok api.CreateTokenResponse
			err := cl.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok)
			cancel()
			w.mu.Lock()
			if err == nil {
				w.ids, w.at = append(w.ids, tok.ID), append(w.at, time.Now())
			} else {
				w.failed++
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writer) acked() ([]string, []time.Time, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ids), slices.Clone(w.at), w.failed
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

// TestRollingUpgrade starts a 3-coordinator cluster of the binary of
// upgradeFrom (built from git) with two agents (p1 on the old binary, p2
// on the new one) exchanging UDP through their tunnel, then replaces the
// coordinators one at a time with the new binary under a stream of writes:
// the followers, then the leader after handing its leadership to an
// upgraded one. It checks that no coordinator crashes (every one exits
// cleanly on SIGTERM, none ends on its own), every acknowledged write is
// on every coordinator, the agents' traffic keeps flowing and their map
// streams come back, an agent of the old binary joins the upgraded
// cluster, an old coordinator refuses a newer agent's protocol, and 'cluster
// remove' (which needs this version's feature level) is refused while an
// old coordinator remains and works once all are upgraded. It logs the
// longest write outage while each coordinator restarts.
func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process network-namespace test")
	}
	if os.Geteuid() != 0 {
		t.Skip("network-namespace tests need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (scripts/deps.sh installs it)")
	}
	// The earlier version comes from the repository's history: without
	// git (or with a shallow clone, below) the test fails, it does not
	// skip.
	for _, tool := range []string{"git", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("needs %s to build the binary of %s from this repository's history (scripts/deps.sh installs git)", tool, upgradeFrom)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	began := time.Now()
	oldBin, err := harness.BinaryAt(upgradeFrom)
	if err != nil {
		t.Fatalf("the binary of %s, which the rolling upgrade starts from: %v", upgradeFrom, err)
	}
	newBin, err := harness.Binary()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binaries ready in %s", time.Since(began).Round(time.Millisecond))
	l := newUpgradeLab(t)
	ctx := context.Background()

	// The old cluster.
	key, err := harness.Run(oldBin, "coordinator", "keygen")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range l.coords {
		l.startCoordinator(c, oldBin)
	}
	l.waitFor(30*time.Second, "the old cluster's admin token", func() bool {
		b, err := os.ReadFile(filepath.Join(l.dir, "c1", "admin.token"))
		if err != nil {
			return false
		}
		tok, err := token.ParseKind(strings.TrimSpace(string(b)), token.KindAdmin)
		if err != nil {
			return false
		}
		l.admin, l.pin = strings.TrimSpace(string(b)), tok.Pin
		return true
	})
	leader := l.healthy(l.coords[0], 30*time.Second)
	all := l.client()

	// Agents: p1 runs the old binary, p2 the new one; p3 (old) joins at
	// the end.
	var joinTok api.CreateTokenResponse
	if err := all.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 3}, &joinTok); err != nil {
		t.Fatal(err)
	}
	p1, p2, p3 := l.agents["p1"], l.agents["p2"], l.agents["p3"]
	l.startAgent(p1, oldBin, joinTok.Token)
	l.startAgent(p2, newBin, joinTok.Token)
	l.sees(p1, 30*time.Second, "p2")
	st2 := l.sees(p2, 30*time.Second, "p1")
	echo, err := l.net.UDPEcho("p2", st2.Self.OverlayIP+":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	stream := l.startUDPStream("p1", st2.Self.OverlayIP+":7000")
	l.waitFor(20*time.Second, "p1's first echo from p2 through the tunnel", func() bool { return len(stream.replies()) > 0 })
	streamFrom := time.Now()

	// An old coordinator refuses a newer agent's protocol with the code
	// the agent stops on (controlclient.ErrProtocol).
	future := api.JoinRequest{ProtocolVersion: api.ProtocolVersion + 1, Token: joinTok.Token, Name: "future", PublicKey: randomKey(t)}
	if err := l.client().Do(ctx, http.MethodPost, "/v1/join", future, nil); !api.IsProtocol(err) {
		t.Fatalf("a newer agent's join at the old coordinators: %v; want a protocol refusal", err)
	}

	// Writes from here to the end of the upgrade.
	w := startWriter(all)
	defer w.halt()
	l.waitFor(20*time.Second, "50 writes on the old cluster", func() bool { return w.count() >= 50 })
	baseFrom := time.Now()
	l.waitFor(20*time.Second, "100 more writes", func() bool { return w.count() >= 150 })
	type window struct {
		name     string
		from, to time.Time
	}
	windows := []window{{name: "no restart (baseline)", from: baseFrom, to: time.Now()}}
	// upgrade replaces n's binary and waits until it is back and the
	// cluster writes again.
	upgrade := func(n *upNode, from time.Time) {
		t.Helper()
		l.stop(n)
		l.startCoordinator(n, newBin)
		leader = l.healthy(n, 60*time.Second)
		ready := time.Now()
		before := w.count()
		l.waitFor(20*time.Second, "20 writes after "+n.name+" came back", func() bool { return w.count() >= before+20 })
		// The window runs on until those writes: a returning node may
		// still disturb the leader after it answers.
		windows = append(windows, window{name: n.name, from: from, to: time.Now()})
		t.Logf("%s upgraded: back in %s", n.name, ready.Sub(from).Round(time.Millisecond))
	}
	old := leader
	for _, n := range l.coords {
		if n != old {
			upgrade(n, time.Now())
		}
	}
	// The leader last: it hands its leadership to an upgraded coordinator
	// first (the old binary knows how).
	from := time.Now()
	var moved api.LeadershipTransfer
	if err := l.client(old).Do(ctx, http.MethodPost, "/v1/cluster/transfer-leadership", nil, &moved); err != nil {
		t.Fatal(err)
	}
	if moved.From != old.name || moved.To == "" || moved.To == old.name {
		t.Fatalf("transfer answered %+v; want from %s to an upgraded coordinator", moved, old.name)
	}
	leader = l.healthy(l.node(moved.To), 30*time.Second)
	// An upgraded leader with an old member: the gated command is refused,
	// naming the old member.
	var ae *api.Error
	err = l.client(leader).Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil)
	if !errors.As(err, &ae) || ae.Code != api.CodeUpgradeRequired || !slices.Equal(ae.Coordinators, []string{old.name}) {
		t.Fatalf("cluster remove with %s still old: %v (%+v); want %s naming %s", old.name, err, ae, api.CodeUpgradeRequired, old.name)
	}
	t.Logf("refused while %s is old: %s", old.name, ae.Message)
	upgrade(old, from)
	// Every coordinator upgraded: once the last one has registered its
	// level, the gate lets 'cluster remove' through to its own checks.
	l.waitFor(20*time.Second, "the gate to open", func() bool {
		err := l.client(leader).Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil)
		return api.IsCode(err, api.CodeNotFound)
	})
	w.halt()
	ids, at, failed := w.acked()
	upgraded := time.Now()

	// The agents never noticed: traffic flowed throughout, both map
	// streams are open, and a peer that joins now (an old agent) reaches
	// everyone's map.
	l.startAgent(p3, oldBin, joinTok.Token)
	l.sees(p3, 30*time.Second, "p1", "p2")
	l.sees(p1, 30*time.Second, "p2", "p3")
	l.sees(p2, 30*time.Second, "p1", "p3")
	p3stream := l.startUDPStream("p3", st2.Self.OverlayIP+":7000")
	l.waitFor(20*time.Second, "p3's first echo from p2 through the tunnel", func() bool { return len(p3stream.replies()) > 0 })
	stream.close()
	gap := longestGap(stream.replies(), streamFrom, upgraded)
	t.Logf("p1 -> p2 through the tunnel: %d echoes over %s, longest gap %s", len(stream.replies()), upgraded.Sub(streamFrom).Round(time.Millisecond), gap.Round(time.Millisecond))
	if gap > time.Second {
		t.Errorf("the agents' traffic stopped for %s during the upgrade; want no interruption (under 1 s on this noisy host)", gap)
	}

	// Every acknowledged write is on every coordinator.
	for _, n := range l.coords {
		var have []string
		l.waitFor(20*time.Second, n.name+" to hold every acknowledged token", func() bool {
			var toks []api.Token
			if l.client(n).Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks) != nil {
				return false
			}
			have = have[:0]
			for _, tk := range toks {
				have = append(have, tk.ID)
			}
			slices.Sort(have)
			for _, id := range ids {
				if _, ok := slices.BinarySearch(have, id); !ok {
					return false
				}
			}
			return true
		})
	}
	t.Logf("%d writes acknowledged (%d failed, outcome unknown), all on every coordinator", len(ids), failed)
	for _, win := range windows {
		t.Logf("longest write outage, %s: %s", win.name, longestGap(at, win.from, win.to).Round(time.Millisecond))
	}

	// What each coordinator runs now.
	var v api.ClusterVersions
	if err := l.client(leader).Do(ctx, http.MethodGet, "/v1/cluster/versions", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.FeatureLevel != fsm.FeatureLevel || len(v.Members) != 3 || !v.Features[0].Enabled {
		t.Fatalf("versions after the upgrade %+v; want 3 members at level %d", v, fsm.FeatureLevel)
	}

	// The gated command itself: a follower whose host is gone is removed.
	var gone *upNode
	for _, n := range l.coords {
		if n != leader {
			gone = n
		}
	}
	l.stop(gone)
	if err := l.client(leader).Do(ctx, http.MethodDelete, "/v1/cluster/members/"+gone.name, nil, nil); err != nil {
		t.Fatalf("cluster remove %s after the upgrade: %v", gone.name, err)
	}
	st, err := l.status(leader)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 2 || slices.ContainsFunc(st.Members, func(m api.Member) bool { return m.Name == gone.name }) {
		t.Fatalf("members after removing %s: %+v", gone.name, st.Members)
	}
	l.crashed()
	for _, n := range l.nodes() {
		if !n.stopping {
			l.stop(n)
		}
	}
	t.Logf("rolling upgrade from %s took %s in all", upgradeFrom, time.Since(began).Round(time.Millisecond))
}

package peer

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/vip"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/policy"
	"github.com/meshd/meshd/pkg/token"
)

// No goroutine of any agent outlives its Run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeControl stands in for the coordinators: the test pushes map updates,
// cuts the stream, and takes the coordinators down and up again.
type fakeControl struct {
	updates chan *api.MapUpdate

	mu      sync.Mutex
	down    bool          // guarded by mu: Watch fails at once
	refuse  error         // guarded by mu: Watch returns it at once
	cut     chan struct{} // guarded by mu: closed to end the open stream
	watches int           // guarded by mu: streams opened
	since   uint64        // guarded by mu: of the last stream opened
}

var _ Control = (*fakeControl)(nil)

func newFakeControl() *fakeControl {
	return &fakeControl{updates: make(chan *api.MapUpdate, 16), cut: make(chan struct{})}
}

func (c *fakeControl) Watch(ctx context.Context, since uint64, fn func(*api.MapUpdate)) error {
	c.mu.Lock()
	if c.refuse != nil {
		defer c.mu.Unlock()
		return c.refuse
	}
	if c.down {
		c.mu.Unlock()
		return errors.New("connection refused")
	}
	c.watches++
	c.since = since
	cut := c.cut
	c.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cut:
			return errors.New("network map stream ended")
		case u := <-c.updates:
			fn(u)
		}
	}
}

// setDown takes every coordinator down (ending the open stream) or brings
// them back.
func (c *fakeControl) setDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
	if down {
		close(c.cut)
		c.cut = make(chan struct{})
	}
}

func (c *fakeControl) stream() (watches int, since uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watches, c.since
}

func (c *fakeControl) Heartbeat(context.Context, []string, *string) error { return nil }
func (c *fakeControl) Relay(context.Context) (*api.RelayConfig, error) {
	return nil, errors.New("no relay in tests")
}
func (c *fakeControl) SetCoordinators([]string) {}
func (c *fakeControl) Coordinators() []string   { return []string{"https://c1.test:8443"} }

// fakeLiveness is the gateways' own statements as the test sets them.
type fakeLiveness struct {
	*health.Fake
	mu     sync.Mutex
	peers  []LivePeer  // guarded by mu: as last Set
	self   func() byte // guarded by mu: what this peer's statements say
	probed time.Time   // guarded by mu: when another peer last probed this one
}

// says is what this peer's statements say now (0 before it started).
func (f *fakeLiveness) says() byte {
	f.mu.Lock()
	self := f.self
	f.mu.Unlock()
	if self == nil {
		return 0
	}
	return self()
}

func (f *fakeLiveness) Set(peers []LivePeer) {
	f.mu.Lock()
	f.peers = peers
	f.mu.Unlock()
}

func (f *fakeLiveness) target(id string) (LivePeer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.peers {
		if p.ID == id {
			return p, p.Target
		}
	}
	return LivePeer{}, false
}

func (f *fakeLiveness) Close() error { return nil }

func (f *fakeLiveness) LastProbed() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probed
}

// LastFastProbed: in these tests every probe is part of a client's fast
// stream.
func (f *fakeLiveness) LastFastProbed() time.Time { return f.LastProbed() }

func (f *fakeLiveness) setProbed(t time.Time) {
	f.mu.Lock()
	f.probed = t
	f.mu.Unlock()
	f.Kick()
}

// fakeChecker is a gateway's OS as its checks see it.
type fakeChecker struct {
	fwdOff, lanDown atomic.Bool
}

func (c *fakeChecker) Forwarding() (bool, error) { return !c.fwdOff.Load(), nil }
func (c *fakeChecker) LANReachable(string, netip.Addr, time.Duration) (bool, error) {
	return !c.lanDown.Load(), nil
}

// site is a mesh in one test: its peers' keys, one clock, one LAN.
type site struct {
	t     *testing.T
	clk   *clock.Fake
	lan   *vip.FakeLAN
	keys  map[string]wgcfg.Key // public keys by peer ID
	names map[wgcfg.Key]string
	root  string
	// mod, when set, changes the configuration of each agent start
	// runs (by peer ID).
	mod func(id string, cfg *Config)
}

func newSite(t *testing.T) *site {
	s := &site{t: t, clk: clock.NewFake(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)), lan: &vip.FakeLAN{},
		keys: map[string]wgcfg.Key{}, names: map[wgcfg.Key]string{}, root: t.TempDir()}
	for _, p := range sitePeers {
		k, err := wgcfg.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		s.keys[p.ID] = k.Public()
		s.names[k.Public()] = p.Name
	}
	return s
}

// update is the site's full map as peer self receives it.
func (s *site) update(self string, index uint64, drained map[string]bool) *api.MapUpdate {
	u := &api.MapUpdate{Index: index, Full: true, VNet: "default", Overlay: "100.96.0.0/12", GossipKeys: [][]byte{make([]byte, 32)}}
	for _, p := range sitePeers {
		p.PublicKey = s.keys[p.ID].String()
		p.Drained = drained[p.ID]
		if p.ID == self {
			u.Self = &p
		} else {
			u.Peers = append(u.Peers, p)
		}
	}
	return u
}

// testPeer is one agent of the site, with its fakes.
type testPeer struct {
	id     string
	a      *Agent
	eng    *engine.Fake
	rtr    *router.Fake
	hl     *health.Fake
	lv     *fakeLiveness
	ctl    *fakeControl
	vip    *vip.Fake
	chk    *fakeChecker
	cancel context.CancelFunc
	done   chan error
}

// start runs the agent of peer id (a1, a2: the gateways; c1: the client)
// with a first full map. A gateway gets the LAN VIP and a LAN check.
func (s *site) start(id string) *testPeer {
	t := s.t
	var self api.MapPeer
	for _, p := range sitePeers {
		if p.ID == id {
			self = p
		}
	}
	dir := filepath.Join(s.root, id)
	pin := [32]byte{1}
	cred, err := token.New(token.KindPeer, "p"+id, pin, []string{"https://c1.test:8443"})
	if err != nil {
		t.Fatal(err)
	}
	ident := &controlclient.Identity{PeerID: id, Name: self.Name, VNet: "default", OverlayIP: self.OverlayIP,
		Overlay: "100.96.0.0/12", Credential: cred.String(), Coordinators: []string{"https://c1.test:8443"}}
	if err := ident.Save(dir); err != nil {
		t.Fatal(err)
	}
	tp := &testPeer{id: id, eng: &engine.Fake{IfName: "meshd0"}, rtr: router.NewFake("meshd0"), hl: health.NewFake(),
		lv: &fakeLiveness{Fake: health.NewFake()}, ctl: newFakeControl(), chk: &fakeChecker{}, done: make(chan error, 1)}
	tp.vip = s.lan.NewFake(self.Name)
	cfg := Config{
		StateDir: dir, Name: self.Name, Routes: self.Routes, HoldDown: holdDown, ListenPort: 51820,
		Logger:     logging.New(testWriter{t}, 0).With("agent", self.Name),
		NewEngine:  func(string) (engine.Engine, error) { return tp.eng, nil },
		NewRouter:  func(string) (router.Router, error) { return tp.rtr, nil },
		Endpoints:  func(context.Context, []string) []string { return []string{"198.51.100.7:51820"} },
		NewControl: func(*controlclient.Identity) (Control, error) { return tp.ctl, nil },
		NewHealth:  func(health.Config) (Health, error) { return tp.hl, nil },
		NewLiveness: func(c liveness.Config) (Liveness, error) {
			tp.lv.mu.Lock()
			tp.lv.self = c.Self
			tp.lv.mu.Unlock()
			return tp.lv, nil
		},
		Checker: tp.chk,
		Clock:   s.clk,
	}
	if len(self.Routes) > 0 {
		cfg.LANVIP = netip.MustParsePrefix("192.168.10.1/24")
		cfg.LANDev = "eth1"
		cfg.LANCheck = netip.MustParseAddr("192.168.10.10")
		cfg.NewVIP = func(vip.Config) (vip.VIP, error) { return tp.vip, nil }
	}
	if s.mod != nil {
		s.mod(id, &cfg)
	}
	if tp.a, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	tp.ctl.updates <- s.update(id, 10, nil)
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel = cancel
	go func() { tp.done <- tp.a.Run(ctx) }()
	t.Cleanup(tp.stop)
	return tp
}

// stop ends the agent and waits for Run to return (again and again).
func (tp *testPeer) stop() {
	tp.cancel()
	err := <-tp.done
	tp.done <- err
	if err != nil {
		tp.a.log.Error("run", "err", err)
	}
}

// carrier is the peer the client's WireGuard sends the site's prefix to
// ("" when none).
func (s *site) carrier(tp *testPeer) string {
	cfg, _ := tp.eng.Applied()
	if cfg == nil {
		return ""
	}
	for _, p := range cfg.Peers {
		for _, a := range p.AllowedIPs {
			if a == sitePrefix {
				return s.names[p.PublicKey]
			}
		}
	}
	return ""
}

// active is the site's active gateway in the agent's status.
func (tp *testPeer) active(t *testing.T) string {
	t.Helper()
	st, err := tp.a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Routes {
		if r.Prefix == sitePrefix.String() {
			return r.ActiveGateway
		}
	}
	return ""
}

// heard is what the agent's loop believes of peer id now.
func (tp *testPeer) heard(t *testing.T, id string) (heard health.State, healthy bool) {
	t.Helper()
	err := tp.a.do(context.Background(), func(st *state) {
		if p, ok := st.view.peers[id]; ok {
			heard = p.state
		}
		healthy = st.view.healthy(id, tp.a.clk.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	return heard, healthy
}

// hears waits until the agent's loop has heard every peer in ids alive.
func (tp *testPeer) hears(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		waitFor(t, tp.id+" to hear "+id, func() bool { st, _ := tp.heard(t, id); return st.OK() })
	}
}

// settled waits until the loop has taken the signals of chs and finished
// the round they started (a request to the loop is served only after).
func (tp *testPeer) settled(t *testing.T, chs ...<-chan struct{}) {
	t.Helper()
	waitFor(t, tp.id+"'s loop to take the signal", func() bool {
		for _, c := range chs {
			if len(c) > 0 {
				return false
			}
		}
		return true
	})
	if err := tp.a.do(context.Background(), func(*state) {}); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds, failing after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, bounded by the deadline
	}
}

// advanceUntil moves the fake clock by step until cond holds (a worker's
// ticker may be armed only after the test began), failing after a deadline.
func (s *site) advanceUntil(t *testing.T, step time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		s.clk.Advance(step)
		time.Sleep(time.Millisecond) // polling interval, bounded by the deadline
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func TestAgentFailoverAndHoldDown(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })

	// gwa1 dies: the route moves to gwa2 at once.
	cl.hl.Dead("a1")
	waitFor(t, "the route to move to gwa2", func() bool { return s.carrier(cl) == "gwa2" })
	if r := cl.rtr.State().Routes; !containsRoute(r, sitePrefix) {
		t.Fatalf("client routes %v; want the site's prefix through the mesh", r)
	}

	// gwa1 returns: held down for the hold-down, then back.
	cl.hl.Alive("a1")
	waitFor(t, "the client to hear gwa1 again", func() bool { st, _ := cl.heard(t, "a1"); return st.OK() })
	if _, healthy := cl.heard(t, "a1"); healthy {
		t.Fatal("gwa1 counts as healthy inside its hold-down")
	}
	s.clk.Advance(holdDown - time.Millisecond)
	if got := s.carrier(cl); got != "gwa2" {
		t.Fatalf("inside the hold-down the site goes to %q; want gwa2", got)
	}
	s.clk.Advance(time.Millisecond)
	waitFor(t, "gwa1 to take the route back after its hold-down", func() bool { return s.carrier(cl) == "gwa1" })
}

func TestAgentFlappingGatewayStaysOff(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })
	cl.hl.Dead("a1")
	waitFor(t, "the route to move to gwa2", func() bool { return s.carrier(cl) == "gwa2" })
	for range 5 {
		cl.hl.Alive("a1")
		waitFor(t, "gwa1 alive", func() bool { st, _ := cl.heard(t, "a1"); return st.OK() })
		s.clk.Advance(holdDown / 2)
		cl.hl.Dead("a1")
		waitFor(t, "gwa1 dead", func() bool { st, _ := cl.heard(t, "a1"); return !st.Alive })
		if got := s.carrier(cl); got != "gwa2" {
			t.Fatalf("a flapping gwa1 got the route back (%q)", got)
		}
	}
}

func TestAgentDrainAndUndrain(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })
	cl.ctl.updates <- s.update("c1", 11, map[string]bool{"a1": true})
	waitFor(t, "drain to move the route to gwa2", func() bool { return s.carrier(cl) == "gwa2" })
	cl.ctl.updates <- s.update("c1", 12, nil)
	waitFor(t, "undrain to bring it back to gwa1 (no hold-down)", func() bool { return s.carrier(cl) == "gwa1" })
}

func TestAgentCoordinatorOutage(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })
	cl.ctl.setDown(true)
	waitFor(t, "the client to see the stream gone", func() bool {
		st, err := cl.a.Status(context.Background())
		return err == nil && st.Coordinator == "" && st.MapIndex == 10
	})
	// With the map stream gone, health alone still moves the route.
	cl.hl.Dead("a1")
	waitFor(t, "the route to move to gwa2 without coordinators", func() bool { return s.carrier(cl) == "gwa2" })
	if cfg, _ := cl.eng.Applied(); len(cfg.Peers) != 2 {
		t.Fatalf("the client forgot peers without coordinators: %d WireGuard peers; want 2", len(cfg.Peers))
	}
	// The coordinators return: the watch resumes from the last index.
	cl.ctl.setDown(false)
	s.advanceUntil(t, 100*time.Millisecond, "the watch to resume", func() bool { n, _ := cl.ctl.stream(); return n == 2 })
	if _, since := cl.ctl.stream(); since != 10 {
		t.Fatalf("the watch resumed after index %d; want 10", since)
	}
	cl.ctl.updates <- s.update("c1", 13, map[string]bool{"a2": true})
	waitFor(t, "the new map to arrive", func() bool {
		st, err := cl.a.Status(context.Background())
		return err == nil && st.MapIndex == 13 && st.Coordinator != ""
	})
	// gwa2 drained and gwa1 dead: the drained one is the last resort.
	if got := s.carrier(cl); got != "gwa2" {
		t.Fatalf("site goes to %q; want gwa2 (drained, but the only healthy one)", got)
	}
}

// The HA pair with the LAN VIP: each gateway decides by its own view; the
// fake LAN lets only one own the VIP at a time, as the ARP probe does.
func startPair(t *testing.T, s *site) (gw1, gw2 *testPeer) {
	gw1, gw2 = s.start("a1"), s.start("a2")
	gw1.hl.Alive("a2")
	gw1.hl.Alive("c1")
	gw2.hl.Alive("a1")
	gw2.hl.Alive("c1")
	gw1.hears(t, "a2", "c1")
	gw2.hears(t, "a1", "c1")
	waitFor(t, "gwa1 to own the VIP", func() bool { return s.lan.Owner() == "gwa1" })
	waitFor(t, "gwa2 to see the site at gwa1", func() bool { return gw2.active(t) == "gwa1" })
	if n := gw2.vip.Takeovers(); n != 0 {
		t.Fatalf("the standby took the VIP %d times while the active was healthy", n)
	}
	return gw1, gw2
}

func TestAgentGatewayDiesVIPMoves(t *testing.T) {
	s := newSite(t)
	gw1, gw2 := startPair(t, s)
	gw1.stop() // the agent ends: its VIP goes with it
	if o := s.lan.Owner(); o != "" {
		t.Fatalf("the stopped gwa1 still owns the VIP (%q)", o)
	}
	gw2.hl.Dead("a1")
	waitFor(t, "gwa2 to take the VIP", func() bool { return s.lan.Owner() == "gwa2" })
	if got := gw2.active(t); got != "gwa2" {
		t.Fatalf("gwa2 sees the site at %q; want itself", got)
	}
}

func TestAgentReturningGatewayWaitsForHoldDown(t *testing.T) {
	s := newSite(t)
	gw1, gw2 := startPair(t, s)
	gw1.stop()
	gw2.hl.Dead("a1")
	waitFor(t, "gwa2 to take the VIP", func() bool { return s.lan.Owner() == "gwa2" })

	// gwa1 restarts and hears gwa2; gwa2 hears gwa1 back and holds it down.
	gw1 = s.start("a1")
	gw1.hl.Alive("a2")
	gw1.hl.Alive("c1")
	gw2.hl.Alive("a1")
	waitFor(t, "gwa2 to hear gwa1 again", func() bool { st, _ := gw2.heard(t, "a1"); return st.OK() })
	s.clk.Advance(holdDown - 100*time.Millisecond)
	if o := s.lan.Owner(); o != "gwa2" {
		t.Fatalf("inside gwa1's hold-down the VIP is with %q; want gwa2", o)
	}
	if got := gw2.active(t); got != "gwa2" {
		t.Fatalf("inside gwa1's hold-down gwa2 sees the site at %q; want itself", got)
	}
	// After the hold-down gwa2 lets go and gwa1's next claim succeeds.
	s.advanceUntil(t, 100*time.Millisecond, "gwa1 to take the VIP back", func() bool { return s.lan.Owner() == "gwa1" })
	if got := gw2.active(t); got != "gwa1" {
		t.Fatalf("after the hold-down gwa2 sees the site at %q; want gwa1", got)
	}
}

func TestAgentSplitBrain(t *testing.T) {
	s := newSite(t)
	gw1, gw2 := startPair(t, s)
	// Gossip between the pair cut, each still heard through the client:
	// nothing moves.
	s.clk.Advance(5 * time.Second)
	if o := s.lan.Owner(); o != "gwa1" || gw2.vip.Takeovers() != 0 {
		t.Fatalf("VIP with %q, gwa2 took it %d times; want gwa1 to keep it", o, gw2.vip.Takeovers())
	}
	// Cut off entirely from each other: each thinks the other dead and
	// itself active; gwa2 keeps asking, the LAN keeps the VIP with gwa1.
	gw1.hl.Dead("a2")
	gw2.hl.Dead("a1")
	waitFor(t, "gwa2 to consider itself active", func() bool { return gw2.active(t) == "gwa2" })
	if got := gw1.active(t); got != "gwa1" {
		t.Fatalf("gwa1 sees the site at %q; want itself", got)
	}
	for range 10 {
		s.clk.Advance(vipRetry)
	}
	if o := s.lan.Owner(); o != "gwa1" || gw2.vip.Takeovers() != 0 {
		t.Fatalf("VIP with %q, gwa2 took it %d times; want gwa1 to keep it", o, gw2.vip.Takeovers())
	}
	// The pair hears each other again: gwa2 holds gwa1 down and, during
	// that, is active by its own view, yet cannot take the VIP from gwa1.
	gw1.hl.Alive("a2")
	gw2.hl.Alive("a1")
	s.advanceUntil(t, 100*time.Millisecond, "gwa2 to give the site back to gwa1", func() bool { return gw2.active(t) == "gwa1" })
	if o := s.lan.Owner(); o != "gwa1" || gw2.vip.Takeovers() != 0 {
		t.Fatalf("VIP with %q, gwa2 took it %d times; want gwa1 throughout", o, gw2.vip.Takeovers())
	}
}

func TestAgentZombieGivesUpRoutes(t *testing.T) {
	s := newSite(t)
	gw1, gw2 := startPair(t, s)
	// Forwarding turned off under gwa1: it gives up routes and VIP and
	// says so to the others.
	gw1.chk.fwdOff.Store(true)
	s.advanceUntil(t, selfCheckEvery, "gwa1 to see itself as a zombie", func() bool { return !gw1.hl.Self().LANOK })
	waitFor(t, "gwa1 to release the VIP", func() bool { return s.lan.Owner() != "gwa1" })
	if got := gw1.active(t); got != "gwa2" {
		t.Fatalf("the zombie gwa1 sees the site at %q; want gwa2", got)
	}
	// The others hear it (the fake gossip carries what gwa1 said).
	gw2.hl.Set("a1", health.State{Alive: true, LANOK: false, Forwarding: true})
	s.advanceUntil(t, vipRetry, "gwa2 to take the VIP", func() bool { return s.lan.Owner() == "gwa2" })

	// Forwarding back on: gwa1 is fine by itself; gwa2 holds it down.
	gw1.chk.fwdOff.Store(false)
	s.advanceUntil(t, selfCheckEvery, "gwa1 to be healthy again", func() bool { return gw1.hl.Self().LANOK })
	gw2.hl.Alive("a1")
	waitFor(t, "gwa2 to hear gwa1 recovered", func() bool { st, _ := gw2.heard(t, "a1"); return st.OK() })
	if o := s.lan.Owner(); o != "gwa2" {
		t.Fatalf("VIP with %q right after gwa1 recovered; want gwa2 during the hold-down", o)
	}
}

func TestAgentLANCheck(t *testing.T) {
	s := newSite(t)
	gw1, _ := startPair(t, s)
	gw1.chk.lanDown.Store(true)
	// One round of the check runs every selfCheckEvery; three failures
	// in a row take the routes away.
	s.advanceUntil(t, selfCheckEvery, "gwa1 to give up after failed LAN checks", func() bool { return !gw1.hl.Self().LANOK })
	if got := gw1.active(t); got != "gwa2" {
		t.Fatalf("gwa1 with its LAN down sees the site at %q; want gwa2", got)
	}
	gw1.chk.lanDown.Store(false)
	s.advanceUntil(t, selfCheckEvery, "one good LAN check to restore gwa1", func() bool { return gw1.hl.Self().LANOK })
	if got := gw1.active(t); got != "gwa1" {
		t.Fatalf("gwa1 with its LAN back sees the site at %q; want itself", got)
	}
}

func TestAgentStopsCleanly(t *testing.T) {
	s := newSite(t)
	gw1, _ := startPair(t, s)
	gw1.stop()
	if !gw1.hl.Left() {
		t.Fatal("the agent did not leave gossip")
	}
	if st := gw1.rtr.State(); len(st.Routes) != 0 || len(st.Addrs) != 0 {
		t.Fatalf("routes or addresses left after the agent stopped: %+v", st)
	}
	if _, err := gw1.a.Status(context.Background()); !errors.Is(err, errStopped) {
		t.Fatalf("Status after Run returned: %v; want errStopped", err)
	}
}

func containsRoute(rs []router.Route, p netip.Prefix) bool {
	for _, r := range rs {
		if r.Dst == p {
			return true
		}
	}
	return false
}

// TestAgentGatewayHealthFromLiveness: once a gateway's own statements are
// heard, gossip about it decides nothing: forged "dead" or "LAN down"
// gossip does not take its routes away, forged "alive" gossip does not
// keep a gateway whose statements stopped. The gateways are probe
// targets (fast: without a bind the agent cannot tell traffic); a
// gateway's partner on its prefix is probed fast too; what a gateway's
// statements say of itself follows its own checks.
func TestAgentGatewayHealthFromLiveness(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.lv.Alive("a1")
	cl.lv.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })
	for _, id := range []string{"a1", "a2"} {
		if p, ok := cl.lv.target(id); !ok || !p.Fast || p.Key != s.keys[id] {
			t.Fatalf("%s as a probe target: %+v, %v; want a fast target with its key", id, p, ok)
		}
	}
	if _, ok := cl.lv.target("c1"); ok {
		t.Fatal("the client probes itself")
	}

	// Forged gossip: gwa1 dead, then alive with its LAN down.
	cl.hl.Dead("a1")
	cl.hl.Set("a1", health.State{Alive: true, Forwarding: true})
	cl.settled(t, cl.hl.Changed())
	if got := s.carrier(cl); got != "gwa1" {
		t.Fatalf("forged gossip moved the site to %q", got)
	}

	// gwa1's statements stop while gossip says it is fine.
	cl.hl.Alive("a1")
	cl.lv.Dead("a1")
	waitFor(t, "the route to move to gwa2", func() bool { return s.carrier(cl) == "gwa2" })

	// A gateway probes its partner fast, and says what its checks find.
	gw := s.start("a1")
	waitFor(t, "gwa1 to probe gwa2 fast", func() bool { p, ok := gw.lv.target("a2"); return ok && p.Fast })
	waitFor(t, "gwa1's statements to say LAN and forwarding OK", func() bool {
		return gw.lv.says() == disco.StatusLANOK|disco.StatusFwdOK
	})
	gw.chk.lanDown.Store(true)
	s.advanceUntil(t, selfCheckEvery, "gwa1's statements to say its LAN is down", func() bool {
		return gw.lv.says()&disco.StatusLANOK == 0
	})
}

// TestAgentAppliesPolicy: the policy a full map carries becomes the
// engine's receiver rules, resolved against this peer's map (cl1's
// overlay address may reach the site's LAN on 443 through gwa1); deltas
// that change nothing the rules are made of do not touch them; a full map
// without a policy lifts it.
func TestAgentAppliesPolicy(t *testing.T) {
	s := newSite(t)
	gw := s.start("a1")
	gw.hl.Alive("a2")
	gw.hl.Alive("c1")
	u := s.update("a1", 11, nil)
	u.Policy = []byte(`{"acls": [{"action": "accept", "src": ["peer:cl1"], "dst": ["192.168.10.0/24:443"], "proto": "tcp"}]}`)
	gw.ctl.updates <- u
	var rules []policy.AddrRule
	waitFor(t, "gwa1's engine to get the policy", func() bool { rules, _ = gw.eng.PolicyRules(); return len(rules) > 0 })
	// The mesh's own traffic first (gossip and health probes to gwa1's
	// overlay address), then cl1's address to the site's LAN on 443 only.
	if len(rules) != 2 || rules[0].Rule != -1 || !rules[0].Ports.Contains(7946) || !rules[0].Ports.Contains(7947) ||
		!slices.Contains(rules[0].Dst, netip.MustParsePrefix("100.96.0.1/32")) {
		t.Fatalf("rules %+v; want the control rule first", rules)
	}
	if r := rules[1]; !slices.Contains(r.Src, netip.MustParsePrefix("100.96.0.9/32")) ||
		!slices.Contains(r.Dst, sitePrefix) || !r.Ports.Contains(443) || r.Ports.Contains(22) {
		t.Fatalf("rules %+v; want cl1's address to the site's LAN on 443 only", rules)
	}
	_, sets := gw.eng.PolicyRules()
	// A delta that only moves an endpoint leaves the rules alone.
	p := sitePeers[2]
	p.PublicKey = s.keys["c1"].String()
	p.Endpoints = []string{"198.51.100.9:51820"}
	gw.ctl.updates <- &api.MapUpdate{Index: 12, Peers: []api.MapPeer{p}}
	waitFor(t, "the delta to land", func() bool {
		var ok bool
		gw.a.do(context.Background(), func(st *state) { ok = st.nm.index == 12 })
		return ok
	})
	if _, n := gw.eng.PolicyRules(); n != sets {
		t.Fatalf("an endpoint change set the policy rules again (%d times, was %d)", n, sets)
	}
	gw.ctl.updates <- s.update("a1", 13, nil)
	waitFor(t, "the policy to be lifted", func() bool { r, n := gw.eng.PolicyRules(); return r == nil && n > sets })
}

// TestAgentIsolatedGatewayLetsVIPGo: the active gateway whose uplink is cut
// hears none of the other gateways and nobody probes it any more: it lets
// the VIP go IsolatedAfter after the last probe, though gossip (slower)
// still counts the others alive; while peers still probe it (its partner
// died, the mesh still reaches it) it keeps the VIP.
func TestAgentIsolatedGatewayLetsVIPGo(t *testing.T) {
	s := newSite(t)
	gw := s.start("a1")
	gw.hl.Alive("a2")
	gw.hl.Alive("c1")
	gw.lv.Alive("a2")
	gw.lv.setProbed(s.clk.Now())
	waitFor(t, "gwa1 to own the VIP", func() bool { return gw.vip.Owned() })

	// Its partner dies; clients still probe it: it keeps the VIP.
	gw.lv.Dead("a2")
	gw.lv.setProbed(s.clk.Now())
	s.clk.Advance(IsolatedAfter / 2)
	gw.lv.setProbed(s.clk.Now())
	s.clk.Advance(IsolatedAfter / 2)
	gw.lv.Kick() // look again at this time
	gw.settled(t, gw.lv.Changed())
	var isolated bool
	gw.a.do(context.Background(), func(st *state) { isolated = st.self.isolated })
	if isolated || !gw.vip.Owned() {
		t.Fatal("gwa1 counted itself cut off while peers still probed it")
	}
	// Nobody probes it any more: cut off.
	s.advanceUntil(t, IsolatedAfter/5, "gwa1 to let the VIP go", func() bool { return !gw.vip.Owned() })
	if _, alive := gw.heard(t, "c1"); !alive {
		t.Fatal("gossip should still count cl1 alive here: the VIP went on liveness alone")
	}
}

package peer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// The site of the failover tables: an HA pair announcing one prefix and a
// client.
var (
	sitePrefix = netip.MustParsePrefix("192.168.10.0/24")
	sitePeers  = []api.MapPeer{
		{ID: "a1", Name: "gwa1", Role: api.RoleGateway, OverlayIP: "100.96.0.1", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 200}}},
		{ID: "a2", Name: "gwa2", Role: api.RoleGateway, OverlayIP: "100.96.0.2", Routes: []api.Route{{Prefix: "192.168.10.0/24", Priority: 100}}},
		{ID: "c1", Name: "cl1", Role: api.RoleClient, OverlayIP: "100.96.0.9"},
	}
)

// siteMap is the site as peer self sees it, with priorities and drained
// flags changed as given (by peer ID).
func siteMap(self string, prio map[string]int, drained map[string]bool) *netMap {
	u := &api.MapUpdate{Index: 1, Full: true, Overlay: "100.96.0.0/12"}
	for _, p := range sitePeers {
		p.Drained = drained[p.ID]
		if n, ok := prio[p.ID]; ok && len(p.Routes) > 0 {
			p.Routes = []api.Route{{Prefix: p.Routes[0].Prefix, Priority: n}}
		}
		if p.ID == self {
			u.Self = &p
		} else {
			u.Peers = append(u.Peers, p)
		}
	}
	var m netMap
	m.apply(u)
	return &m
}

var (
	ok     = health.State{Alive: true, LANOK: true, Forwarding: true}
	dead   = health.State{}
	lanOff = health.State{Alive: true, LANOK: false, Forwarding: true}
	fwdOff = health.State{Alive: true, LANOK: true, Forwarding: false}
)

// A failover step: at a time since the start, inputs arrive, then the
// decision is checked.
type step struct {
	at    time.Duration
	hear  map[string]health.State // what the health source reports now
	check *checkResult            // a round of this gateway's own checks
	drain map[string]bool         // the map's drained flags from now on
	want  string                  // the site's active gateway; "" none
	vip   bool                    // this peer wants the LAN VIP
	wake  time.Duration           // when to decide again (since the start); 0: never
}

var (
	fine       = &checkResult{forwarding: true, lanChecked: true, lanReachable: true}
	lanFail    = &checkResult{forwarding: true, lanChecked: true, lanReachable: false}
	forwardOff = &checkResult{forwarding: false, lanChecked: true, lanReachable: true}
)

const holdDown = 3 * time.Second

func TestFailoverDecisions(t *testing.T) {
	for _, tt := range []struct {
		name   string
		self   string // the deciding peer
		prio   map[string]int
		noView bool // no health source yet
		steps  []step
	}{
		{name: "highest priority healthy gateway carries the route", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
		}},
		{name: "no health source yet: priority alone", self: "c1", noView: true, steps: []step{
			{want: "gwa1"},
		}},
		{name: "gossip not joined yet: everyone counts as healthy", self: "c1", steps: []step{
			{want: "gwa1"},
		}},
		{name: "once gossip has joined, a gateway never heard of is not healthy", self: "c1", steps: []step{
			{hear: map[string]health.State{"a2": ok}, want: "gwa2"},
		}},
		{name: "tie broken by name, seen from the client", self: "c1", prio: map[string]int{"a1": 100, "a2": 100}, steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
		}},
		{name: "tie broken by name, seen from the second of the pair", self: "a2", prio: map[string]int{"a1": 100, "a2": 100}, steps: []step{
			{hear: map[string]health.State{"a1": ok, "c1": ok}, want: "gwa1", vip: false},
		}},
		{name: "tie broken by name, seen from the first of the pair", self: "a1", prio: map[string]int{"a1": 100, "a2": 100}, steps: []step{
			{hear: map[string]health.State{"a2": ok, "c1": ok}, want: "gwa1", vip: true},
		}},
		{name: "active gateway dies, comes back, takes the route back after the hold-down", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, hear: map[string]health.State{"a1": dead}, want: "gwa2"},
			{at: 2 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa2", wake: 2*time.Second + holdDown},
			{at: 2*time.Second + holdDown - time.Millisecond, want: "gwa2", wake: 2*time.Second + holdDown},
			{at: 2*time.Second + holdDown, want: "gwa1"},
		}},
		{name: "a gateway seen for the first time is not held down", self: "c1", steps: []step{
			{hear: map[string]health.State{"a2": ok}, want: "gwa2"},
			{at: time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa1"},
		}},
		{name: "flapping restarts the hold-down every time", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: 1 * time.Second, hear: map[string]health.State{"a1": dead}, want: "gwa2"},
			{at: 2 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa2", wake: 5 * time.Second},
			{at: 3 * time.Second, hear: map[string]health.State{"a1": dead}, want: "gwa2"},
			{at: 4 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa2", wake: 7 * time.Second},
			{at: 4500 * time.Millisecond, hear: map[string]health.State{"a1": lanOff}, want: "gwa2"},
			{at: 5 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa2", wake: 8 * time.Second},
			{at: 7 * time.Second, want: "gwa2", wake: 8 * time.Second},
			{at: 8 * time.Second, want: "gwa1"},
		}},
		{name: "zombie seen by others: alive, forwarding off", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, hear: map[string]health.State{"a1": fwdOff}, want: "gwa2"},
			{at: 2 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa2", wake: 2*time.Second + holdDown},
			{at: 2*time.Second + holdDown, want: "gwa1"},
		}},
		{name: "zombie seen by others: alive, LAN down", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, hear: map[string]health.State{"a1": lanOff}, want: "gwa2"},
		}},
		{name: "zombie itself: forwarding turned off gives up routes and VIP at once", self: "a1", steps: []step{
			{hear: map[string]health.State{"a2": ok, "c1": ok}, check: fine, want: "gwa1", vip: true},
			{at: 300 * time.Millisecond, check: forwardOff, want: "gwa2", vip: false},
			{at: 600 * time.Millisecond, check: fine, want: "gwa1", vip: true},
		}},
		{name: "LAN check: three failures in a row, one success restores", self: "a1", steps: []step{
			{hear: map[string]health.State{"a2": ok, "c1": ok}, check: fine, want: "gwa1", vip: true},
			{at: 300 * time.Millisecond, check: lanFail, want: "gwa1", vip: true},
			{at: 600 * time.Millisecond, check: lanFail, want: "gwa1", vip: true},
			{at: 900 * time.Millisecond, check: fine, want: "gwa1", vip: true},
			{at: 1200 * time.Millisecond, check: lanFail, want: "gwa1", vip: true},
			{at: 1500 * time.Millisecond, check: lanFail, want: "gwa1", vip: true},
			{at: 1800 * time.Millisecond, check: lanFail, want: "gwa2", vip: false},
			{at: 2100 * time.Millisecond, check: fine, want: "gwa1", vip: true},
		}},
		{name: "LAN check failing on both: nobody carries the route", self: "a2", steps: []step{
			{hear: map[string]health.State{"a1": lanOff, "c1": ok}, check: lanFail, want: "gwa2", vip: true},
			{at: 300 * time.Millisecond, check: lanFail, want: "gwa2", vip: true},
			{at: 600 * time.Millisecond, check: lanFail, want: "", vip: false},
		}},
		{name: "drain moves the route, undrain brings it back without hold-down", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, drain: map[string]bool{"a1": true}, want: "gwa2"},
			{at: 2 * time.Second, drain: map[string]bool{}, want: "gwa1"},
		}},
		{name: "a drained gateway is the last resort", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, drain: map[string]bool{"a1": true}, want: "gwa2"},
			{at: time.Second, hear: map[string]health.State{"a2": dead}, want: "gwa1"},
		}},
		{name: "drained active gateway hands over the VIP", self: "a1", steps: []step{
			{hear: map[string]health.State{"a2": ok, "c1": ok}, want: "gwa1", vip: true},
			{at: time.Second, drain: map[string]bool{"a1": true}, want: "gwa2", vip: false},
			{at: 2 * time.Second, drain: map[string]bool{}, want: "gwa1", vip: true},
		}},
		{name: "drained standby takes the VIP when the active dies", self: "a2", steps: []step{
			{hear: map[string]health.State{"a1": ok, "c1": ok}, drain: map[string]bool{"a2": true}, want: "gwa1", vip: false},
			{at: time.Second, hear: map[string]health.State{"a1": dead}, want: "gwa2", vip: true},
		}},
		// Split brain: both gateways alive, gossip between them cut.
		{name: "split brain: the standby still hears the active through others and keeps off the VIP", self: "a2", steps: []step{
			{hear: map[string]health.State{"a1": ok, "c1": ok}, want: "gwa1", vip: false},
		}},
		{name: "split brain: the active keeps the route and the VIP", self: "a1", steps: []step{
			{hear: map[string]health.State{"a2": dead, "c1": ok}, want: "gwa1", vip: true},
		}},
		{name: "split brain: the client hears both and keeps the active", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
		}},
		{name: "split brain: a standby that hears the active dead takes over (the LAN arbitrates the VIP)", self: "a2", steps: []step{
			{hear: map[string]health.State{"a1": dead, "c1": ok}, want: "gwa2", vip: true},
		}},
		{name: "a gateway cut off from everyone lets the VIP go", self: "a1", steps: []step{
			{hear: map[string]health.State{"a2": ok, "c1": ok}, want: "gwa1", vip: true},
			{at: time.Second, hear: map[string]health.State{"a2": dead, "c1": dead}, want: "gwa1", vip: false},
			{at: 2 * time.Second, hear: map[string]health.State{"c1": ok}, want: "gwa1", vip: true, wake: 2*time.Second + holdDown},
		}},
		{name: "gossip not joined yet: a gateway does not claim the VIP", self: "a1", steps: []step{
			{want: "gwa1", vip: false},
		}},
		{name: "coordinator outage: the last map stays, health alone moves the route", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, hear: map[string]health.State{"a1": dead}, want: "gwa2"},
			{at: 2 * time.Second, hear: map[string]health.State{"a2": dead}, want: ""},
			{at: 3 * time.Second, hear: map[string]health.State{"a2": ok}, want: "gwa2", wake: 3*time.Second + holdDown},
			{at: 3*time.Second + holdDown, want: "gwa2"},
		}},
		{name: "a gateway held down carries the route when no other can", self: "c1", steps: []step{
			{hear: map[string]health.State{"a1": ok, "a2": ok}, want: "gwa1"},
			{at: time.Second, hear: map[string]health.State{"a1": dead, "a2": dead}, want: ""},
			{at: 2 * time.Second, hear: map[string]health.State{"a1": ok}, want: "gwa1", wake: 2*time.Second + holdDown},
			{at: 2500 * time.Millisecond, hear: map[string]health.State{"a2": ok}, want: "gwa1", wake: 2*time.Second + holdDown},
			{at: 2*time.Second + holdDown, want: "gwa1", wake: 2500*time.Millisecond + holdDown},
			{at: 2500*time.Millisecond + holdDown, want: "gwa1"},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
			view := newHealthView(holdDown)
			var self selfCheck
			drained := map[string]bool{}
			for i, s := range tt.steps {
				now := start.Add(s.at)
				if s.hear != nil {
					view.observe(s.hear, now)
				}
				if s.check != nil {
					self.observe(*s.check, true)
				}
				if s.drain != nil {
					drained = s.drain
				}
				v := view
				if tt.noView {
					v = nil
				}
				d := decide(siteMap(tt.self, tt.prio, drained), v, self, now)
				got := d.active[sitePrefix].name
				if got != s.want {
					t.Fatalf("step %d (%s): active %q (%s); want %q", i, s.at, got, d.active[sitePrefix].why, s.want)
				}
				if d.vip != s.vip {
					t.Fatalf("step %d (%s): wants the VIP %v; want %v", i, s.at, d.vip, s.vip)
				}
				var wantWake time.Time
				if s.wake != 0 {
					wantWake = start.Add(s.wake)
				}
				if !d.wake.Equal(wantWake) {
					t.Fatalf("step %d (%s): wake at %v; want %v", i, s.at, d.wake, wantWake)
				}
			}
		})
	}
}

// TestSplitBrainConverges checks that with gossip between the pair cut,
// every peer picks exactly one gateway by its own view, and that at most
// the gateways that hear the other dead want the VIP.
func TestSplitBrainConverges(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	views := map[string]map[string]health.State{
		// The others' indirect probes keep each gateway alive in the
		// other's view: nothing moves.
		"a1": {"a2": ok, "c1": ok},
		"a2": {"a1": ok, "c1": ok},
		"c1": {"a1": ok, "a2": ok},
	}
	for self, heard := range views {
		v := newHealthView(holdDown)
		v.observe(heard, now)
		d := decide(siteMap(self, nil, nil), v, selfCheck{}, now)
		if g := d.active[sitePrefix].name; g != "gwa1" {
			t.Errorf("%s: active %q; want gwa1", self, g)
		}
		if d.vip != (self == "a1") {
			t.Errorf("%s: wants the VIP %v; want only gwa1 to", self, d.vip)
		}
	}
}

func TestSelfCheckForwardingCountsOnceArmed(t *testing.T) {
	var s selfCheck
	if s.observe(checkResult{forwarding: false}, false) || !s.ok() {
		t.Fatal("forwarding off before the router turned it on made the gateway unhealthy")
	}
	if !s.observe(checkResult{forwarding: false}, true) || s.ok() {
		t.Fatal("forwarding turned off after the router turned it on left the gateway healthy")
	}
	if !s.observe(checkResult{forwarding: true}, true) || !s.ok() {
		t.Fatal("forwarding back on did not restore the gateway")
	}
}

// TestJoinSecretStable: a restarted agent proposes the same credential
// secret for the same token (so a lost join's repeat is recognized), and
// another for another token or key.
func TestJoinSecretStable(t *testing.T) {
	k1, _ := wgcfg.GenerateKey()
	k2, _ := wgcfg.GenerateKey()
	a := joinSecret(k1, "tok-a")
	if a != joinSecret(k1, "tok-a") || len(a) != 64 {
		t.Fatalf("secret %q is not stable 32 bytes of hex", a)
	}
	if a == joinSecret(k1, "tok-b") || a == joinSecret(k2, "tok-a") {
		t.Fatal("the secret does not depend on both the token and the key")
	}
}

func TestIsolation(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	dead, alive := health.State{}, health.State{Alive: true, LANOK: true, Forwarding: true}
	gws := map[string]bool{"a2": true, "b1": true}
	allDead := map[string]health.State{"a2": dead, "b1": dead}
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	cases := []struct {
		name                 string
		targets              map[string]bool
		live                 map[string]health.State
		lastProbed, lastFast time.Time
		isolated             bool
		until                time.Time
	}{
		{"no other gateway", nil, nil, time.Time{}, time.Time{}, false, time.Time{}},
		{"one answers", gws, map[string]health.State{"a2": dead, "b1": alive}, time.Time{}, time.Time{}, false, time.Time{}},
		{"one never heard", gws, map[string]health.State{"a2": dead}, time.Time{}, time.Time{}, false, time.Time{}},
		{"clients were sending, probed just now", gws, allDead, ago(100 * time.Millisecond), ago(100 * time.Millisecond), false, now.Add(IsolatedAfter - 100*time.Millisecond)},
		{"clients were sending, silent since", gws, allDead, ago(IsolatedAfter), ago(IsolatedAfter), true, time.Time{}},
		// The partner died and the clients are idle: they probe once a
		// second, which is no sign of a cut.
		{"idle clients, 0.9 s since the last probe", gws, allDead, ago(900 * time.Millisecond), time.Time{}, false, now.Add(IsolatedIdleAfter - 900*time.Millisecond)},
		{"clients went idle a while ago", gws, allDead, ago(900 * time.Millisecond), ago(FastClientsWithin), false, now.Add(IsolatedIdleAfter - 900*time.Millisecond)},
		{"idle clients, silent for the idle window", gws, allDead, ago(IsolatedIdleAfter), time.Time{}, true, time.Time{}},
	}
	for _, tc := range cases {
		iso, until := isolation(tc.targets, tc.live, tc.lastProbed, tc.lastFast, now)
		if iso != tc.isolated || !until.Equal(tc.until) {
			t.Errorf("%s: isolated %v until %v; want %v until %v", tc.name, iso, until, tc.isolated, tc.until)
		}
	}
}

package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
)

// The loop is the one goroutine that owns the agent's state. It waits for
// the next input, folds it in, and when anything that the configuration
// depends on changed, recomputes the whole desired configuration and
// applies the difference (reconcile):
//
//	map update ----------> nm ------------\
//	health changed ------> view ------------> decide (failover.go) -> compute
//	check result --------> self -----------/      -> engine, router, bind, VIP wanted,
//	hold-down end (wake) -----------------/          health metadata, next wake
//	1 s tick -> rotate endpoints that never handshake, save the map, rejoin gossip when alone
//	local request -> answered from the state
//
// Reconciling talks to the OS (engine, router) from the loop, which holds
// no lock while doing so; everything that may block for long (ARP probes,
// gossip joins, claiming the VIP, the coordinators) runs in a worker.

// Inputs of the loop besides the clock and the health source.
type (
	// watchEvent is one message from the map-stream worker: an update,
	// or (update nil) news that the stream opened or closed.
	watchEvent struct {
		update      *api.MapUpdate
		coordinator string // of the open stream; "" when none is open
	}
	// reportEvent says which endpoints the heartbeat has reported.
	reportEvent struct {
		endpoints []string
	}
	// joinRequest asks the joiner to contact seeds through h.
	joinRequest struct {
		h     Health
		seeds []string
	}
)

// tickEvery paces the loop's chores (endpoint rotation, saving the map,
// rejoining gossip while alone).
const tickEvery = time.Second

// state is everything the loop owns. No other goroutine reads or writes it.
type state struct {
	nm   netMap
	want *desired // the configuration last computed; immutable once made
	view *healthView
	self selfCheck
	// fwdArmed: the router has turned forwarding on, so finding it off
	// means someone else turned it off.
	fwdArmed   bool
	health     Health // nil until the map brings keys and an address
	gossipKeys [][]byte
	// live is the gateways' own health (probes); nil until the map brings
	// this peer's address. liveRetry: when to try starting it again.
	live      Liveness
	liveRetry time.Time
	// policyIn is what the engine's policy rules were last made from.
	policyIn *string
	// dnsKey is what the names last handed to the DNS worker were made
	// from (dns.go); nil before.
	dnsKey *dnsKey

	pick      map[string]int            // endpoint rotation per peer ID
	pickSince map[string]time.Time      // when the current pick was made
	lastEP    map[string]netip.AddrPort // the endpoint last configured per peer ID

	endpoints []string // what the heartbeat last reported
	connected string   // coordinator of the open stream
	saved     uint64   // map index last saved to disk
	failovers uint64   // routes moved from one gateway to another (metrics.go)

	wake clock.Timer // the next hold-down end
	tick clock.Ticker
}

func (a *Agent) newState(first *api.MapUpdate, reported []string) *state {
	st := &state{
		view: newHealthView(a.cfg.HoldDown),
		pick: map[string]int{}, pickSince: map[string]time.Time{}, lastEP: map[string]netip.AddrPort{},
		endpoints: reported,
		wake:      clock.Stopped(a.clk),
		tick:      a.clk.NewTicker(tickEvery),
	}
	if first != nil {
		st.nm.apply(first)
	}
	return st
}

// stop stops the state's timers and leaves gossip; after the loop.
func (st *state) stop() {
	st.wake.Stop()
	st.tick.Stop()
	if st.health != nil {
		st.health.Leave(500 * time.Millisecond)
		st.health = nil
	}
	if st.live != nil {
		st.live.Close()
		st.live = nil
	}
}

// loop runs until ctx is done.
func (a *Agent) loop(ctx context.Context, st *state) {
	for {
		var healthCh, liveCh <-chan struct{}
		if st.health != nil {
			healthCh = st.health.Changed()
		}
		if st.live != nil {
			liveCh = st.live.Changed()
		}
		dirty := false
		select {
		case <-ctx.Done():
			return
		case ev := <-a.watchCh:
			dirty = a.onWatch(st, ev)
			// Fold in a burst of deltas before reconciling once.
			for more := true; more; {
				select {
				case ev := <-a.watchCh:
					dirty = a.onWatch(st, ev) || dirty
				default:
					more = false
				}
			}
		case <-healthCh:
			dirty = st.view.observe(gossipReports(st), a.clk.Now())
		case <-liveCh:
			dirty = st.view.observe(st.live.Peers(), a.clk.Now())
		case r := <-a.checkCh:
			if st.self.observe(r, st.fwdArmed) {
				a.log.Warn("gateway health changed", "healthy", st.self.ok(), "forwarding", !st.self.fwdOff, "lan_check", !st.self.lanDown)
				dirty = true
			}
		case <-st.wake.C():
			dirty = true
		case <-st.tick.C():
			a.chores(st)
			dirty = true
		case rep := <-a.reportCh:
			st.endpoints = rep.endpoints
		case req := <-a.reqCh:
			req(st)
		}
		if dirty {
			a.reconcile(st)
		}
	}
}

// onWatch folds in one message of the map stream; it reports whether the
// map changed.
func (a *Agent) onWatch(st *state, ev watchEvent) bool {
	st.connected = ev.coordinator
	u := ev.update
	if u == nil {
		return false
	}
	before := st.nm.peerSet()
	st.nm.apply(u)
	after := st.nm.peerSet()
	for id, name := range after {
		if _, ok := before[id]; !ok {
			a.log.Info("peer added", "name", name)
		}
	}
	for id, name := range before {
		if _, ok := after[id]; !ok {
			a.log.Info("peer removed", "name", name)
		}
	}
	if len(u.Coordinators) > 0 {
		coords := st.nm.coordinators
		a.cc.SetCoordinators(coords)
		if !slices.Equal(coords, a.id.Coordinators) {
			a.id.Coordinators = coords
			if err := a.id.Save(a.cfg.StateDir); err != nil {
				a.log.Warn("save coordinators", "err", err)
			}
		}
	}
	return true
}

func (m *netMap) peerSet() map[string]string {
	out := make(map[string]string, len(m.peers))
	for id, p := range m.peers {
		out[id] = p.Name
	}
	return out
}

// chores runs every tick: rotate endpoints, keep the map on disk (at most
// once a tick), and ask gossip to rejoin while this peer is alone.
func (a *Agent) chores(st *state) {
	a.rotateEndpoints(st)
	if st.nm.index != st.saved && st.nm.self != nil {
		if err := saveMap(a.cfg.StateDir, st.nm.snapshot()); err != nil {
			a.log.Warn("save network map", "err", err)
		} else {
			st.saved = st.nm.index
		}
	}
	if st.health != nil && st.health.Members() == 1 {
		a.requestJoin(st)
	}
	if st.live != nil {
		st.live.Set(a.livePeers(st, a.clk.Now())) // which gateways carry traffic now
	}
}

// requestJoin hands the joiner the current seeds (the others' overlay
// addresses).
func (a *Agent) requestJoin(st *state) {
	var seeds []string
	for _, p := range st.nm.peers {
		if p.Role != api.RoleDevice { // devices do not gossip
			seeds = append(seeds, p.OverlayIP)
		}
	}
	if len(seeds) > 0 {
		slices.Sort(seeds)
		offer(a.joinCh, joinRequest{h: st.health, seeds: seeds})
	}
}

// reconcile decides, computes the whole desired configuration and applies
// the difference to WireGuard and the OS, then hands the VIP follower its
// wish and arms the wake timer for the next hold-down end.
func (a *Agent) reconcile(st *state) {
	now := a.clk.Now()
	var view *healthView
	if st.health != nil {
		view = st.view
	}
	var isoUntil time.Time
	st.self.isolated = false
	if st.live != nil && st.nm.self != nil && len(st.nm.self.Routes) > 0 {
		gws := map[string]bool{}
		for id, p := range st.nm.peers {
			if len(p.Routes) > 0 {
				gws[id] = true
			}
		}
		st.self.isolated, isoUntil = isolation(gws, st.live.Peers(), st.live.LastProbed(), st.live.LastFastProbed(), now)
	}
	dec := decide(&st.nm, view, st.self, now)
	if !isoUntil.IsZero() && (dec.wake.IsZero() || isoUntil.Before(dec.wake)) {
		dec.wake = isoUntil
	}
	nets := localNets(a.cfg.Interface)
	d := compute(&st.nm, buildOptions{
		privateKey: a.priv, listenPort: a.cfg.ListenPort, mtu: a.cfg.MTU,
		localNets: nets, snat: a.cfg.SNAT, endpointPick: st.pick,
		active: dec.active, noEndpoints: a.bind != nil,
	})
	if st.want != nil {
		st.failovers += uint64(logRouteChanges(a.log, st.want.routes, d.routes))
	}
	st.want = d
	for id, p := range st.nm.peers {
		key, _ := wgcfg.ParseKey(p.PublicKey)
		if wp := d.wg.Peer(key); wp != nil && st.lastEP[id] != wp.Endpoint {
			if st.lastEP[id].IsValid() {
				a.log.Info("peer endpoint changed", "name", p.Name, "endpoint", wp.Endpoint)
			}
			st.lastEP[id] = wp.Endpoint
			st.pickSince[id] = now
		}
	}
	for id := range st.lastEP {
		if _, ok := st.nm.peers[id]; !ok {
			delete(st.lastEP, id)
			delete(st.pick, id)
			delete(st.pickSince, id)
		}
	}
	stun := slices.Clone(st.nm.stunServers)
	a.stun.Store(&stun)
	if a.bind != nil {
		// Paths first: WireGuard's first handshake must find one.
		a.bind.SetSTUNServers(parseAddrPorts(st.nm.stunServers))
		exclude := slices.Clone(d.router.Routes) // the overlay and the subnets routed into the mesh
		if st.nm.self != nil {
			for _, r := range st.nm.self.Routes {
				if p, err := netip.ParsePrefix(r.Prefix); err == nil {
					exclude = append(exclude, p)
				}
			}
		}
		a.bind.SetPeers(pathConfigs(&st.nm, nets), exclude)
	}
	// The rules first: a peer the new map adds may send at once.
	a.applyPolicy(st)
	if err := a.eng.Reconfig(d.wg); err != nil && !errors.Is(err, engine.ErrNoChanges) {
		a.log.Warn("configure interface", "err", err)
	}
	// A router error (say, no nf_tables for the MSS clamp) is reported,
	// but health gossip and the VIP still follow the map: failover must not
	// depend on every OS detail being in place.
	if err := a.rtr.Set(d.router); err != nil {
		a.log.Warn("configure interface", "err", err)
	} else if d.router.Forward {
		st.fwdArmed = true
	}
	a.offerDNS(st) // the interface has its address now
	a.selfFlags.Store(selfFlags(st.self))
	a.ensureHealth(st)
	a.ensureLiveness(st, now)
	if a.vip != nil {
		offer(a.vipCh, dec.vip)
	}
	if dec.wake.IsZero() {
		st.wake.Stop()
	} else {
		st.wake.Reset(dec.wake.Sub(now))
	}
}

func parseAddrPorts(ss []string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

// ensureHealth starts health gossip once the map has brought this peer's
// address and the keyring, and keeps the keyring and what this peer says
// of itself current.
func (a *Agent) ensureHealth(st *state) {
	if st.nm.self == nil || len(st.nm.gossipKeys) == 0 {
		return
	}
	meta := health.Meta{ID: st.nm.self.ID, LANOK: st.self.ok(), Role: st.nm.self.Role}
	for _, r := range st.nm.self.Routes {
		meta.Routes = append(meta.Routes, fmt.Sprintf("%s:%d", r.Prefix, r.Priority))
	}
	if st.health == nil {
		h, err := a.cfg.NewHealth(health.Config{Self: meta, BindAddr: st.nm.self.OverlayIP, Port: a.cfg.GossipPort,
			Keys: st.nm.gossipKeys, Logger: a.cfg.Logger})
		if err != nil {
			a.log.Warn("health gossip not started", "err", err)
			return
		}
		st.health, st.gossipKeys = h, st.nm.gossipKeys
		a.log.Info("health gossip started", "addr", st.nm.self.OverlayIP)
		a.requestJoin(st)
		return
	}
	st.health.SetSelf(meta)
	if !slices.EqualFunc(st.gossipKeys, st.nm.gossipKeys, func(x, y []byte) bool { return string(x) == string(y) }) {
		st.gossipKeys = st.nm.gossipKeys
		st.health.SetKeys(st.nm.gossipKeys, 10*time.Second)
	}
}

// applyPolicy hands the engine this peer's receiver rules when what they
// are made from changed.
func (a *Agent) applyPolicy(st *state) {
	f, ok := a.eng.(engine.Filterer)
	if !ok {
		return
	}
	in := policyInputs(&st.nm)
	if st.policyIn != nil && *st.policyIn == in {
		return
	}
	st.policyIn = &in
	rules := receiverRules(&st.nm, a.controlPorts())
	f.SetPolicyRules(rules)
	if rules == nil {
		a.log.Info("no access policy: every peer of the vnet may reach this one")
	} else {
		a.log.Info("access policy applied", "rules", len(rules))
	}
}

// controlPorts are the overlay ports of the mesh's own traffic: health
// gossip and gateway health probes.
func (a *Agent) controlPorts() []uint16 {
	g, l := a.cfg.GossipPort, a.cfg.LivenessPort
	if g == 0 {
		g = health.DefaultPort
	}
	if l == 0 {
		l = liveness.DefaultPort
	}
	return []uint16{uint16(g), uint16(l)}
}

// gossipReports is what gossip says, less the peers whose own statements
// liveness has heard: for those, gossip decides nothing.
func gossipReports(st *state) map[string]health.State {
	r := st.health.Peers()
	if st.live != nil {
		for id := range st.live.Peers() {
			delete(r, id)
		}
	}
	return r
}

// ensureLiveness starts the gateway health probes once the map has brought
// this peer's address, and keeps who probes and is probed current.
func (a *Agent) ensureLiveness(st *state, now time.Time) {
	if st.nm.self == nil {
		return
	}
	if st.live == nil {
		if now.Before(st.liveRetry) {
			return
		}
		addr, err := netip.ParseAddr(st.nm.self.OverlayIP)
		if err != nil {
			return
		}
		l, err := a.cfg.NewLiveness(liveness.Config{PrivateKey: a.priv, Addr: addr, Port: a.cfg.LivenessPort,
			Self: func() byte { return byte(a.selfFlags.Load()) }, Logger: a.cfg.Logger})
		if err != nil {
			st.liveRetry = now.Add(5 * time.Second)
			a.log.Warn("gateway health probes not started; gateways' health comes from gossip", "err", err)
			return
		}
		st.live = l
		a.log.Info("gateway health probes started", "addr", addr)
	}
	st.live.Set(a.livePeers(st, now))
}

// logRouteChanges says when a route moves to another gateway. It returns
// how many routes moved from one gateway to another (failovers; a route
// that gains its first gateway or loses its last is not one).
func logRouteChanges(log *slog.Logger, before, after []api.LocalRoute) int {
	was := map[string]string{}
	for _, r := range before {
		was[r.Prefix] = r.ActiveGateway
	}
	moved := 0
	for _, r := range after {
		if old, ok := was[r.Prefix]; ok && old != r.ActiveGateway {
			log.Info("route moved", "prefix", r.Prefix, "from", old, "to", r.ActiveGateway)
			if old != "" && r.ActiveGateway != "" {
				moved++
			}
		}
	}
	return moved
}

// rotateEndpoints moves a peer that has never completed a handshake on its
// chosen endpoint to its next one (a LAN address that is not shared, say).
func (a *Agent) rotateEndpoints(st *state) {
	if a.bind != nil {
		return // the bind probes every endpoint and picks
	}
	ps, err := a.eng.Status()
	if err != nil {
		return
	}
	hs := map[wgcfg.Key]time.Time{}
	for _, s := range ps {
		hs[s.PublicKey] = s.LastHandshake
	}
	now := a.clk.Now()
	for id, p := range st.nm.peers {
		if len(p.Endpoints) < 2 {
			continue
		}
		key, _ := wgcfg.ParseKey(p.PublicKey)
		since := st.pickSince[id]
		if last := hs[key]; !last.IsZero() && now.Sub(last) < OnlineWithin || since.IsZero() || now.Sub(since) < HandshakeTimeout {
			continue
		}
		st.pick[id]++
	}
}

// errStopped: the agent is not running.
var errStopped = errors.New("the agent is not running")

// do runs f on the loop and waits for it: the local API's way to read the
// state.
func (a *Agent) do(ctx context.Context, f func(*state)) error {
	done := make(chan struct{})
	req := func(st *state) {
		defer close(done)
		f(st)
	}
	select {
	case a.reqCh <- req:
	case <-a.loopDone:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

// offer puts v in ch (capacity one), replacing a value not yet taken.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// send delivers v to the loop unless ctx ends first.
func send[T any](ctx context.Context, ch chan<- T, v T) bool {
	select {
	case ch <- v:
		return true
	case <-ctx.Done():
		return false
	}
}

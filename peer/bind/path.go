package bind

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/pkg/api"
)

// Path kinds as status shows them.
const (
	PathDirect = api.PathDirect
	PathRelay  = api.PathRelay
)

// Timing of path discovery. A direct path in use is pinged every
// ActivePingEvery while the peer carries traffic, and given up for the
// relay once it has gone DeadAfter without a pong; paths are probed all at
// once when a peer appears, when its candidates change, when this host's
// addresses change, and then every ProbeEvery while no direct path works.
const (
	ActivePingEvery = 250 * time.Millisecond
	IdlePingEvery   = 3 * time.Second
	DeadAfter       = 750 * time.Millisecond
	IdleDeadAfter   = 7 * time.Second
	// ActiveFor: a peer counts as carrying traffic this long after the
	// last packet sent to it.
	ActiveFor = 5 * time.Second
	// FastProbeFor is how long after a (re)start probes come every
	// FastProbeEvery; after that every ProbeEvery.
	FastProbeFor   = 10 * time.Second
	FastProbeEvery = 500 * time.Millisecond
	ProbeEvery     = 3 * time.Second
	// DirectProbeEvery: a peer on a direct path still probes its other
	// candidates this often, to find a better one.
	DirectProbeEvery = 30 * time.Second
	// PendingFor is how long a ping waits for its pong.
	PendingFor = 5 * time.Second
)

// candidate is one way to reach a peer: a direct address, or the peer's
// relayed address reached through this host's relay allocation.
type candidate struct {
	addr    netip.AddrPort
	relay   bool
	learned bool // seen as the source of the peer's ping, not announced
	// lastPing and lastPong: when this host last pinged it, and last got
	// an answer; rtt of that answer.
	lastPing, lastPong time.Time
	rtt                time.Duration
	// unanswered is when the first ping since the last pong went out
	// (zero: every ping so far was answered).
	unanswered time.Time
}

// alive: the candidate has answered, and has not gone deadAfter without
// an answer (a pong, or WireGuard traffic from it) while a ping was
// outstanding. The silence counts from the last answer, so a path carrying
// traffic that stops is given up deadAfter after its last packet however
// the pings fall; but from no earlier than ActivePingEvery before the
// first unanswered ping, so a ping after a quiet spell gets its time.
func (c *candidate) alive(now time.Time, deadAfter time.Duration) bool {
	if c.lastPong.IsZero() {
		return false
	}
	if c.unanswered.IsZero() {
		return true
	}
	since := c.lastPong
	if floor := c.unanswered.Add(-ActivePingEvery); floor.After(since) {
		since = floor
	}
	return now.Sub(since) < deadAfter
}

type pending struct {
	addr  netip.AddrPort
	relay bool
	sent  time.Time
}

// peerPaths is everything this host knows about the ways to one peer. It
// is a pure state machine: every method takes the time, so tests drive it
// without a clock or a socket.
type peerPaths struct {
	cands   []*candidate
	cur     *candidate // path in use; nil: none yet
	pending map[disco.TxID]pending
	// startProbe is when fast probing (re)started; lastProbe the last time
	// every candidate was probed.
	startProbe, lastProbe time.Time
	lastSend              time.Time // last data packet sent to this peer
	lastCall              time.Time // last probe of the direct candidates answering a call
	relayUp               bool      // this host has a relay allocation
}

func newPeerPaths() *peerPaths {
	return &peerPaths{pending: map[disco.TxID]pending{}}
}

// setCandidates replaces the announced candidates (direct endpoints from
// the map and the relayed address), keeping what is known of those that
// stay and the learned ones; a change restarts fast probing.
func (p *peerPaths) setCandidates(direct []netip.AddrPort, relay netip.AddrPort, now time.Time) {
	var next []*candidate
	changed := false
	find := func(a netip.AddrPort, r bool) *candidate {
		for _, c := range p.cands {
			if c.addr == a && c.relay == r {
				return c
			}
		}
		return nil
	}
	add := func(a netip.AddrPort, r bool) {
		if c := find(a, r); c != nil {
			c.learned = false
			next = append(next, c)
			return
		}
		changed = true
		next = append(next, &candidate{addr: a, relay: r})
	}
	for _, a := range direct {
		if a.IsValid() {
			add(a, false)
		}
	}
	if relay.IsValid() {
		add(relay, true)
	}
	for _, c := range p.cands {
		if c.learned && !slices.ContainsFunc(next, func(n *candidate) bool { return n.addr == c.addr && !n.relay }) {
			next = append(next, c)
		}
	}
	if len(next) != len(p.cands) {
		changed = true
	}
	p.cands = next
	if p.cur != nil && !slices.Contains(p.cands, p.cur) {
		p.cur = nil
	}
	if changed {
		p.restartProbe(now)
	}
}

func (p *peerPaths) restartProbe(now time.Time) {
	p.startProbe = now
	p.lastProbe = time.Time{}
}

// learn adds addr, the source of an authenticated ping, as a candidate and
// reports whether it is new.
func (p *peerPaths) learn(addr netip.AddrPort) (*candidate, bool) {
	for _, c := range p.cands {
		if c.addr == addr && !c.relay {
			return c, false
		}
	}
	c := &candidate{addr: addr, learned: true}
	p.cands = append(p.cands, c)
	return c, true
}

// probe is one ping to send.
type probe struct {
	addr  netip.AddrPort
	relay bool
	tx    disco.TxID
}

// pingsDue returns the pings to send now: every candidate when a full
// probe is due, else a keep-alive ping of the direct path in use.
func (p *peerPaths) pingsDue(now time.Time) []probe {
	p.expirePending(now)
	var out []probe
	if p.fullProbeDue(now) {
		p.lastProbe = now
		for _, c := range p.cands {
			if c.relay && !p.relayUp {
				continue
			}
			out = append(out, p.ping(c, now))
		}
		return out
	}
	if c := p.cur; c != nil && !c.relay && now.Sub(c.lastPing) >= p.pingEvery(now) {
		out = append(out, p.ping(c, now))
	}
	return out
}

// CallProbeEvery limits how often a call (a ping through the relay)
// makes this host probe the caller's direct candidates.
const CallProbeEvery = 200 * time.Millisecond

// answerCall returns pings of every direct candidate, for a call through
// the relay: the caller is probing this host now, so probing back at once
// opens both NATs. Only direct candidates: a ping through the relay would
// be a call back, and two sides answering each other's calls would never
// stop.
func (p *peerPaths) answerCall(now time.Time) []probe {
	if now.Sub(p.lastCall) < CallProbeEvery {
		return nil
	}
	p.lastCall = now
	var out []probe
	for _, c := range p.cands {
		if !c.relay {
			out = append(out, p.ping(c, now))
		}
	}
	return out
}

// pingTo returns a ping of one candidate (a triggered check).
func (p *peerPaths) ping(c *candidate, now time.Time) probe {
	tx := disco.NewTxID()
	p.pending[tx] = pending{addr: c.addr, relay: c.relay, sent: now}
	c.lastPing = now
	if c.unanswered.IsZero() {
		c.unanswered = now
	}
	return probe{addr: c.addr, relay: c.relay, tx: tx}
}

func (p *peerPaths) active(now time.Time) bool {
	return !p.lastSend.IsZero() && now.Sub(p.lastSend) < ActiveFor
}

func (p *peerPaths) pingEvery(now time.Time) time.Duration {
	if p.active(now) {
		return ActivePingEvery
	}
	return IdlePingEvery
}

func (p *peerPaths) deadAfter(now time.Time) time.Duration {
	if p.active(now) {
		return DeadAfter
	}
	return IdleDeadAfter
}

func (p *peerPaths) fullProbeDue(now time.Time) bool {
	if len(p.cands) == 0 {
		return false
	}
	if p.lastProbe.IsZero() {
		return true
	}
	every := ProbeEvery
	switch {
	case p.cur != nil && !p.cur.relay && p.cur.alive(now, p.deadAfter(now)):
		every = DirectProbeEvery
	case now.Sub(p.startProbe) < FastProbeFor:
		every = FastProbeEvery
	}
	return now.Sub(p.lastProbe) >= every
}

func (p *peerPaths) expirePending(now time.Time) {
	for tx, pd := range p.pending {
		if now.Sub(pd.sent) > PendingFor {
			delete(p.pending, tx)
		}
	}
}

// heard records WireGuard traffic from candidate c at t: as good as a pong
// for liveness (its round-trip time stays that of the last pong).
func (p *peerPaths) heard(c *candidate, t time.Time) {
	if t.After(c.lastPong) {
		c.lastPong = t
		if !c.unanswered.IsZero() && !t.Before(c.unanswered) {
			c.unanswered = time.Time{}
		}
	}
}

// pong records an answer; it returns false for a transaction this host did
// not send or already saw answered (a replay).
func (p *peerPaths) pong(tx disco.TxID, now time.Time) bool {
	pd, ok := p.pending[tx]
	if !ok {
		return false
	}
	delete(p.pending, tx)
	for _, c := range p.cands {
		if c.addr == pd.addr && c.relay == pd.relay {
			c.lastPong = now
			c.unanswered = time.Time{}
			c.rtt = now.Sub(pd.sent)
			return true
		}
	}
	return false
}

// choose picks the path to use: the direct path in use while it answers,
// else the answering direct candidate with the lowest round-trip time, else
// the relay, else (nothing has answered yet and there is no relay) the
// first announced direct candidate, so a flat network needs no relay.
// It returns whether the choice changed.
func (p *peerPaths) choose(now time.Time) bool {
	old := p.cur
	dead := p.deadAfter(now)
	if c := p.cur; c != nil && !c.relay && c.alive(now, dead) {
		return false
	}
	var best *candidate
	for _, c := range p.cands {
		if c.relay || !c.alive(now, dead) {
			continue
		}
		if best == nil || c.rtt < best.rtt {
			best = c
		}
	}
	if best == nil && p.relayUp {
		best = p.relayCand()
	}
	if best == nil {
		best = p.guess()
	}
	p.cur = best
	if best != old && old != nil && !old.relay && (best == nil || best.relay) {
		p.restartProbe(now) // the direct path died: look again, fast
	}
	return best != old
}

func (p *peerPaths) relayCand() *candidate {
	for _, c := range p.cands {
		if c.relay {
			return c
		}
	}
	return nil
}

// guess is the direct candidate to send to when nothing has answered and
// no relay is up: the first announced one (the caller ranks them).
func (p *peerPaths) guess() *candidate {
	for _, c := range p.cands {
		if !c.relay && !c.learned {
			return c
		}
	}
	return nil
}

// RankDirect orders announced endpoints: those on a network this host is
// attached to first, then public addresses, then the rest.
func RankDirect(eps []netip.AddrPort, localNets []netip.Prefix) []netip.AddrPort {
	rank := func(a netip.AddrPort) int {
		for _, n := range localNets {
			if n.Contains(a.Addr()) {
				return 0
			}
		}
		if !a.Addr().IsPrivate() && !cgnat.Contains(a.Addr()) {
			return 1
		}
		return 2
	}
	out := slices.Clone(eps)
	slices.SortStableFunc(out, func(a, b netip.AddrPort) int { return cmp.Compare(rank(a), rank(b)) })
	return out
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

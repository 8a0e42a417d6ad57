package peer

import (
	"net/netip"
	"time"

	"github.com/meshd/meshd/peer/health"
)

// The failover core: what this peer believes of every other peer's health,
// a gateway's own checks, and from those and the network map which gateway
// carries each prefix and whether this gateway owns the LAN VIP. Nothing
// here touches the OS or reads a clock: the time is an argument, so the
// agent's loop and the table tests drive it the same way.
//
// One peer as another sees it (healthView):
//
//	unknown --reported OK--> healthy
//	healthy --dead / LAN down / forwarding off--> down
//	down --reported OK again--> holding (hold-down) --> healthy
//
// so a recovered gateway takes its routes back only after staying OK for
// the hold-down; a gateway that flaps inside it restarts it every time. A
// gateway held down still carries a route that no other gateway can carry
// (activeGateways' last resort).
// Until this peer has heard of any other (gossip has not joined yet), every
// peer counts as healthy and routes follow priority alone; after that a
// peer never heard of is not healthy.

// peerView is what this peer believes of one other peer.
type peerView struct {
	state health.State // as last reported
	// okSince is when the peer last turned OK (alive, LAN and forwarding).
	okSince time.Time
	// wasDown: the peer was seen not OK since this agent started, so its
	// coming back is held down.
	wasDown bool
}

// healthView is this peer's view of the others' health, by peer ID. It is
// owned by the agent's loop.
type healthView struct {
	holdDown time.Duration
	heard    bool // some other peer was reported alive once
	peers    map[string]*peerView
}

func newHealthView(holdDown time.Duration) *healthView {
	if holdDown <= 0 {
		holdDown = health.DefaultHoldDown
	}
	return &healthView{holdDown: holdDown, peers: map[string]*peerView{}}
}

// observe folds in what a health source reports at now (peers it does not
// mention keep their state). It reports whether anything changed.
func (v *healthView) observe(reports map[string]health.State, now time.Time) bool {
	changed := false
	for id, s := range reports {
		p, known := v.peers[id]
		if known && p.state == s {
			continue
		}
		if !known {
			p = &peerView{}
			v.peers[id] = p
		}
		changed = true
		before, after := known && p.state.OK(), s.OK()
		switch {
		case after && !before:
			p.okSince = now
		case before && !after:
			p.wasDown = true
		}
		if s.Alive {
			v.heard = true
		}
		p.state = s
	}
	return changed
}

// holding reports whether p is OK but inside its hold-down at now.
func (v *healthView) holding(p *peerView, now time.Time) bool {
	return p.state.OK() && p.wasDown && now.Sub(p.okSince) < v.holdDown
}

// healthy reports whether peer id may carry routes at now.
func (v *healthView) healthy(id string, now time.Time) bool {
	p, ok := v.peers[id]
	if !ok {
		return !v.heard
	}
	return p.state.OK() && !v.holding(p, now)
}

// nextChange is the earliest time after now at which healthy changes
// without a new report (the end of a hold-down); zero when none.
func (v *healthView) nextChange(now time.Time) time.Time {
	var next time.Time
	for _, p := range v.peers {
		if !v.holding(p, now) {
			continue
		}
		if end := p.okSince.Add(v.holdDown); next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return next
}

// aliveOthers counts the other peers reported alive.
func (v *healthView) aliveOthers() int {
	n := 0
	for _, p := range v.peers {
		if p.state.Alive {
			n++
		}
	}
	return n
}

// lanFailsDown is how many LAN checks in a row must fail (one every
// selfCheckEvery, about 0.15 s) before a gateway gives up its routes.
const lanFailsDown = 3

// checkResult is one round of a gateway's own checks.
type checkResult struct {
	// forwarding: IPv4 forwarding is on.
	forwarding bool
	// lanChecked: the LAN check ran (--lan-check given); lanReachable:
	// the LAN address answered.
	lanChecked, lanReachable bool
}

// selfCheck is a gateway's own health. A gateway whose forwarding is off is
// a zombie (alive, gossiping, passing no traffic): it is unhealthy at once.
// A LAN check must fail lanFailsDown times in a row; one good round
// restores it.
type selfCheck struct {
	lanFails int
	lanDown  bool
	fwdOff   bool
	// isolated: the mesh no longer reaches this gateway (isolation); it
	// keeps its routes but not the VIP.
	isolated bool
}

// observe folds in one round. Forwarding counts only once armed: after the
// router turned it on, so that finding it off means someone turned it off.
// It reports whether ok changed.
func (s *selfCheck) observe(r checkResult, armed bool) bool {
	before := s.ok()
	s.fwdOff = armed && !r.forwarding
	if r.lanChecked {
		if r.lanReachable {
			s.lanFails = 0
		} else {
			s.lanFails++
		}
		s.lanDown = s.lanFails >= lanFailsDown
	}
	return s.ok() != before
}

// ok reports whether this gateway may carry its routes.
func (s selfCheck) ok() bool { return !s.lanDown && !s.fwdOff }

// decision is what the failover core concludes at one instant.
type decision struct {
	// active is the gateway of every announced prefix that has one.
	active map[netip.Prefix]gatewayOf
	// vip: this gateway should own the LAN VIP.
	vip bool
	// wake is when to decide again without a new input (a hold-down
	// ends); zero when nothing is pending.
	wake time.Time
}

// decide applies the shared rule (activeGateways, gateway.Choose) to the
// map, this peer's health view (nil: no health source yet, every peer
// counts as healthy) and its own checks at now.
//
// This gateway owns the VIP exactly while it is the active gateway of one
// of its own routes, unless health runs and no other member answers
// although the map lists some: a gateway cut off from everyone (its
// underlay is down) still computes itself active, but must let the VIP go
// so that the standby, which sees it dead, can take it. A standby that
// sees the active gateway healthy never wants the VIP, whatever it cannot
// hear directly.
func decide(m *netMap, v *healthView, self selfCheck, now time.Time) decision {
	var healthy, holding func(string) bool
	if v != nil {
		healthy = func(id string) bool { return v.healthy(id, now) }
		holding = func(id string) bool { p, ok := v.peers[id]; return ok && v.holding(p, now) }
	}
	d := decision{active: activeGateways(m, healthy, self.ok(), holding)}
	for _, g := range d.active {
		if g.peerID == "" {
			d.vip = true
		}
	}
	if self.isolated {
		d.vip = false
	}
	if v != nil {
		if m.agents() > 0 && v.aliveOthers() == 0 {
			d.vip = false
		}
		d.wake = v.nextChange(now)
	}
	return d
}

// Package liveness decides whether a gateway is alive from what the gateway
// itself says, and nobody else: an observer probes the gateway directly
// through the tunnels, and the gateway answers with a statement about
// itself (its sequence number, whether its LAN check passes, whether it
// forwards). Probe and statement are sealed with NaCl box between the two
// peers' WireGuard static keys (peer/disco's format), so only that gateway
// can make a statement its observer accepts, and the statement answers the
// observer's own random transaction ID, so a replayed or withheld-then-
// released statement counts for nothing. A gateway is alive to an observer
// only while fresh statements keep arriving: gossip, which any holder of
// the vnet's key can write, decides nothing here.
//
// An observer probes fast (Timing.FastEvery) the gateways it sends traffic
// through and its own HA partners, slowly (SlowEvery) the others, so the
// traffic grows with the gateways a peer uses, not with the size of the
// vnet.
//
// The decisions live in tracker, a pure state machine driven by the time it
// is given; Prober does the I/O.
package liveness

import (
	"time"

	"github.com/meshd/meshd/peer/disco"
)

// Timing of probes and of the verdict.
type Timing struct {
	FastEvery, SlowEvery         time.Duration
	FastDeadAfter, SlowDeadAfter time.Duration
	// PendingFor is how long a probe waits for its answer.
	PendingFor time.Duration
}

// DefaultTiming detects a dead gateway in 100-140 ms while it carries the
// observer's traffic: three to four probes in a row unanswered.
var DefaultTiming = Timing{
	FastEvery:     40 * time.Millisecond,
	SlowEvery:     time.Second,
	FastDeadAfter: 140 * time.Millisecond,
	SlowDeadAfter: 3500 * time.Millisecond,
	PendingFor:    3 * time.Second,
}

// MinMissed is how many probes in a row must go unanswered before a
// target can be dead.
const MinMissed = 3

// Observation is what an observer knows of one target.
type Observation struct {
	// Alive: the target has answered, and not gone the dead-after time
	// without an answer while a probe was outstanding.
	Alive bool `json:"alive"`
	// LANOK and FwdOK are what the target's last statement said.
	LANOK bool `json:"lan_ok"`
	FwdOK bool `json:"fwd_ok"`
	// Seq is the last statement's number; LastHeard when it came.
	Seq       uint64        `json:"seq"`
	LastHeard time.Time     `json:"last_heard"`
	RTT       time.Duration `json:"rtt"`
}

// Healthy: alive, LAN check passing, forwarding.
func (o Observation) Healthy() bool { return o.Alive && o.LANOK && o.FwdOK }

// tracker is one observer's view of one target.
type tracker struct {
	fast      bool
	pending   map[disco.TxID]time.Time
	lastSent  time.Time
	lastHeard time.Time
	// unanswered is when the first probe since the last answer went out;
	// missed counts the probes sent since.
	unanswered time.Time
	missed     int
	// wentFast: the next probe is the first since probing went fast;
	// fastSince is when it went out.
	wentFast  bool
	fastSince time.Time
	seq       uint64
	flags     byte
	rtt       time.Duration
}

func newTracker() *tracker { return &tracker{pending: map[disco.TxID]time.Time{}} }

func (t *tracker) every(tm Timing) time.Duration {
	if t.fast {
		return tm.FastEvery
	}
	return tm.SlowEvery
}

func (t *tracker) deadAfter(tm Timing) time.Duration {
	if t.fast {
		return tm.FastDeadAfter
	}
	return tm.SlowDeadAfter
}

// setFast changes the probe rate; going fast probes at once.
func (t *tracker) setFast(fast bool) {
	if fast && !t.fast {
		t.lastSent = time.Time{}
		t.wentFast = true
	}
	t.fast = fast
}

// due reports whether a probe should go now.
func (t *tracker) due(now time.Time, tm Timing) bool {
	return t.lastSent.IsZero() || now.Sub(t.lastSent) >= t.every(tm)
}

// sent records probe tx going out at now.
func (t *tracker) sent(tx disco.TxID, now time.Time, tm Timing) {
	for k, at := range t.pending {
		if now.Sub(at) > tm.PendingFor {
			delete(t.pending, k)
		}
	}
	t.pending[tx] = now
	t.lastSent = now
	if t.wentFast {
		t.wentFast, t.fastSince = false, now
	}
	if t.unanswered.IsZero() {
		t.unanswered = now
	}
	t.missed++
}

// answer takes a statement; it counts only for a probe this observer sent
// and has not seen answered, and only if its number is higher than any
// before. It reports whether it counted.
func (t *tracker) answer(m *disco.Message, now time.Time) bool {
	at, ok := t.pending[m.TxID]
	if !ok || m.Type != disco.TypeStatus || m.Seq <= t.seq {
		return false
	}
	delete(t.pending, m.TxID)
	t.seq, t.flags = m.Seq, m.Flags
	t.lastHeard, t.unanswered, t.missed = now, time.Time{}, 0
	t.rtt = now.Sub(at)
	return true
}

// observe is the verdict at now. The silence counts from the last answer,
// but from no earlier than one probe interval before the first unanswered
// probe, so a probe after a quiet spell (going fast) gets its time; and
// at least MinMissed probes must have gone unanswered, so an observer that
// could not send (its own process starved) does not blame the target.
func (t *tracker) observe(now time.Time, tm Timing) Observation {
	o := Observation{Seq: t.seq, LastHeard: t.lastHeard, RTT: t.rtt,
		LANOK: t.flags&disco.StatusLANOK != 0, FwdOK: t.flags&disco.StatusFwdOK != 0}
	if t.lastHeard.IsZero() {
		return o
	}
	if t.unanswered.IsZero() {
		o.Alive = true
		return o
	}
	since := t.lastHeard
	if floor := t.unanswered.Add(-t.every(tm)); floor.After(since) {
		since = floor
	}
	o.Alive = now.Sub(since) < t.deadAfter(tm) || t.missed < MinMissed
	// Just gone fast (traffic started through this target): its path may
	// be waking up, so the first answers get twice the dead time.
	if t.fast && !t.fastSince.IsZero() && t.fastSince.After(t.lastHeard) && now.Sub(t.fastSince) < 2*tm.FastDeadAfter {
		o.Alive = true
	}
	return o
}

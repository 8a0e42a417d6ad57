package bind

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshd/meshd/peer/disco"
)

var (
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lanEP = netip.MustParseAddrPort("198.19.1.10:41641")
	pubEP = netip.MustParseAddrPort("198.18.0.101:41641")
	relEP = netip.MustParseAddrPort("198.18.0.11:50000")
)

// answer pongs every pending ping to addr at now.
func answer(p *peerPaths, addr netip.AddrPort, now time.Time) {
	for tx, pd := range p.pending {
		if pd.addr == addr {
			p.pong(tx, now)
		}
	}
}

func TestPathChoice(t *testing.T) {
	tests := []struct {
		name    string
		relayUp bool
		// answers: candidate -> round-trip time of its pong (absent: no pong)
		answers  map[netip.AddrPort]time.Duration
		wantPath string
		wantAddr netip.AddrPort
	}{
		{"nothing answers, no relay: first candidate", false, nil, PathDirect, lanEP},
		{"nothing answers, relay up: relay", true, nil, PathRelay, relEP},
		{"direct answers: direct before relay", true, map[netip.AddrPort]time.Duration{pubEP: 30 * time.Millisecond, relEP: time.Millisecond}, PathDirect, pubEP},
		{"lowest round trip among direct", true, map[netip.AddrPort]time.Duration{pubEP: 30 * time.Millisecond, lanEP: 2 * time.Millisecond}, PathDirect, lanEP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeerPaths()
			p.relayUp = tt.relayUp
			p.setCandidates([]netip.AddrPort{lanEP, pubEP}, relEP, t0)
			pings := p.pingsDue(t0)
			want := 2
			if tt.relayUp {
				want = 3
			}
			if len(pings) != want {
				t.Fatalf("first probe pings %d candidates; want %d", len(pings), want)
			}
			for addr, rtt := range tt.answers {
				answer(p, addr, t0.Add(rtt))
			}
			p.choose(t0.Add(50 * time.Millisecond))
			if p.cur == nil {
				t.Fatalf("no path; want %s %v", tt.wantPath, tt.wantAddr)
			}
			got := PathDirect
			if p.cur.relay {
				got = PathRelay
			}
			if got != tt.wantPath || p.cur.addr != tt.wantAddr {
				t.Fatalf("path %s %v; want %s %v", got, p.cur.addr, tt.wantPath, tt.wantAddr)
			}
		})
	}
}

// onDirect is a peer with a relay whose public candidate answered at t0 and
// is the path in use.
func onDirect() *peerPaths {
	p := newPeerPaths()
	p.relayUp = true
	p.setCandidates([]netip.AddrPort{pubEP}, relEP, t0)
	p.pingsDue(t0)
	answer(p, pubEP, t0.Add(time.Millisecond))
	p.choose(t0.Add(time.Millisecond))
	return p
}

// TestDirectDies: with traffic flowing, a direct path whose pings go
// unanswered for DeadAfter moves to the relay, and probing restarts fast.
func TestDirectDies(t *testing.T) {
	p := onDirect()
	if p.cur == nil || p.cur.addr != pubEP {
		t.Fatalf("want direct first, got %+v", p.cur)
	}
	now := t0.Add(time.Second)
	p.lastSend = now
	var movedAt time.Time
	for i := 0; i < 100; i++ {
		now = now.Add(tickEvery)
		p.lastSend = now
		p.pingsDue(now) // nothing answers any more
		p.choose(now)
		if p.cur.relay {
			movedAt = now
			break
		}
	}
	if movedAt.IsZero() {
		t.Fatal("never fell back to the relay")
	}
	// The first unanswered keep-alive ping goes out up to ActivePingEvery
	// after the cut (t0+1s); the move follows DeadAfter later.
	if d := movedAt.Sub(t0.Add(time.Second)); d > ActivePingEvery+DeadAfter+tickEvery {
		t.Fatalf("moved to the relay %v after the cut; want at most %v", d, ActivePingEvery+DeadAfter+tickEvery)
	}
	if !p.fullProbeDue(movedAt) {
		t.Fatal("a dead direct path must trigger a full probe at once")
	}
}

// TestDirectDiesUnderTraffic: a direct path carrying traffic both ways is
// given up DeadAfter after the last packet it brought, whenever the
// keep-alive pings fall.
func TestDirectDiesUnderTraffic(t *testing.T) {
	p := onDirect()
	now := t0
	cut := t0.Add(2 * time.Second)
	var movedAt time.Time
	for i := 0; i < 400; i++ {
		now = now.Add(10 * time.Millisecond) // a 100 pps stream both ways
		p.lastSend = now
		if now.Before(cut) {
			p.heard(p.cur, now)
		}
		p.pingsDue(now)
		p.choose(now)
		if now.Before(cut) && p.cur.relay {
			t.Fatalf("fell back to the relay at %v while traffic flowed", now.Sub(t0))
		}
		if p.cur.relay {
			movedAt = now
			break
		}
	}
	if movedAt.IsZero() {
		t.Fatal("never fell back to the relay")
	}
	if d := movedAt.Sub(cut); d > DeadAfter+10*time.Millisecond {
		t.Fatalf("moved to the relay %v after the last packet; want at most %v", d, DeadAfter+10*time.Millisecond)
	}
}

// TestIdleNoFalseDeath: an idle peer pinged every IdlePingEvery is not
// declared dead when traffic resumes just before its next ping.
func TestIdleNoFalseDeath(t *testing.T) {
	p := newPeerPaths()
	p.relayUp = true
	p.setCandidates([]netip.AddrPort{pubEP}, relEP, t0)
	now := t0
	for i := 0; i < 400; i++ { // 20 s idle, every ping answered
		for _, pr := range p.pingsDue(now) {
			if pr.addr == pubEP {
				p.pong(pr.tx, now.Add(time.Millisecond))
			}
		}
		p.choose(now)
		now = now.Add(tickEvery)
	}
	p.lastSend = now // traffic resumes
	p.choose(now)
	if p.cur == nil || p.cur.relay {
		t.Fatalf("idle direct path given up when traffic resumed: %+v", p.cur)
	}
}

func TestReplayedPong(t *testing.T) {
	p := newPeerPaths()
	p.setCandidates([]netip.AddrPort{pubEP}, netip.AddrPort{}, t0)
	pings := p.pingsDue(t0)
	if !p.pong(pings[0].tx, t0.Add(time.Millisecond)) {
		t.Fatal("the first pong must count")
	}
	if p.pong(pings[0].tx, t0.Add(2*time.Millisecond)) {
		t.Fatal("a replayed pong counted")
	}
	if p.pong(disco.NewTxID(), t0.Add(2*time.Millisecond)) {
		t.Fatal("a pong for a ping never sent counted")
	}
}

func TestLearnedCandidate(t *testing.T) {
	p := newPeerPaths()
	p.setCandidates([]netip.AddrPort{pubEP}, netip.AddrPort{}, t0)
	learned := netip.MustParseAddrPort("198.18.0.102:61000") // the peer's NAT mapping towards us
	c, isNew := p.learn(learned)
	if !isNew || !c.learned {
		t.Fatal("a new source must be learned")
	}
	if _, again := p.learn(learned); again {
		t.Fatal("learned twice")
	}
	// A map update keeps learned candidates.
	p.setCandidates([]netip.AddrPort{pubEP}, netip.AddrPort{}, t0.Add(time.Second))
	found := false
	for _, c := range p.cands {
		found = found || c.addr == learned
	}
	if !found {
		t.Fatal("a map update dropped the learned candidate")
	}
	// The learned address is not a guess: only announced ones are.
	p2 := newPeerPaths()
	p2.learn(learned)
	p2.choose(t0)
	if p2.cur != nil {
		t.Fatalf("an unanswered learned address was used as a guess: %+v", p2.cur)
	}
}

// TestTrafficKeepsPathAlive: WireGuard traffic from the direct path counts
// as an answer, so a busy socket that delays pongs keeps its path; when
// the traffic stops too, the path dies as usual.
func TestTrafficKeepsPathAlive(t *testing.T) {
	p := onDirect()
	now := t0
	for i := 0; i < 60; i++ { // 3 s of traffic, no pong
		now = now.Add(tickEvery)
		p.lastSend = now
		p.heard(p.cur, now)
		p.pingsDue(now)
		p.choose(now)
		if p.cur.relay {
			t.Fatalf("moved to the relay at %v while traffic came in", now.Sub(t0))
		}
	}
	for i := 0; i < 40; i++ { // traffic stops
		now = now.Add(tickEvery)
		p.lastSend = now
		p.pingsDue(now)
		p.choose(now)
	}
	if !p.cur.relay {
		t.Fatal("still direct 2 s after traffic and pongs stopped")
	}
}

// TestAnswerCall: a call through the relay is answered with probes of the
// direct candidates only (never a call back, or two sides would call each
// other without end), at most every CallProbeEvery.
func TestAnswerCall(t *testing.T) {
	p := newPeerPaths()
	p.relayUp = true
	p.setCandidates([]netip.AddrPort{lanEP, pubEP}, relEP, t0)
	got := p.answerCall(t0)
	if len(got) != 2 {
		t.Fatalf("answered with %d probes; want the 2 direct candidates", len(got))
	}
	for _, pr := range got {
		if pr.relay {
			t.Fatal("a call was answered through the relay")
		}
	}
	if again := p.answerCall(t0.Add(CallProbeEvery / 2)); len(again) != 0 {
		t.Fatalf("answered again after %v: %d probes", CallProbeEvery/2, len(again))
	}
	if later := p.answerCall(t0.Add(CallProbeEvery)); len(later) != 2 {
		t.Fatalf("not answered after %v", CallProbeEvery)
	}
}

package liveness

import (
	"testing"
	"time"

	"github.com/meshd/meshd/peer/disco"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// run drives a tracker in 10 ms steps from start to end: it probes when
// due, and the target answers every probe after rtt while answering(now)
// is true. It returns the first time the verdict is dead (zero if never).
func run(tr *tracker, tm Timing, start, end time.Time, rtt time.Duration, answering func(time.Time) bool) (deadAt time.Time) {
	type inflight struct {
		tx disco.TxID
		at time.Time
	}
	var q []inflight
	seq := uint64(0)
	for now := start; now.Before(end); now = now.Add(10 * time.Millisecond) {
		for len(q) > 0 && !q[0].at.After(now) {
			seq++
			tr.answer(&disco.Message{Type: disco.TypeStatus, TxID: q[0].tx, Seq: seq, Flags: disco.StatusLANOK | disco.StatusFwdOK}, q[0].at)
			q = q[1:]
		}
		if tr.due(now, tm) {
			tx := disco.NewTxID()
			tr.sent(tx, now, tm)
			if answering(now) {
				q = append(q, inflight{tx, now.Add(rtt)})
			}
		}
		if o := tr.observe(now, tm); !o.Alive && !tr.lastHeard.IsZero() && deadAt.IsZero() {
			deadAt = now
		}
	}
	return deadAt
}

func TestTrackerVerdicts(t *testing.T) {
	tm := DefaultTiming
	cases := []struct {
		name string
		fast bool
		// the target stops answering at stop (zero: never)
		stop    time.Duration
		rtt     time.Duration
		wantMax time.Duration // dead no later than stop + wantMax
		never   bool          // never dead
	}{
		{"fast, answering", true, 0, 5 * time.Millisecond, 0, true},
		{"fast, slow answers within the dead time", true, 0, 120 * time.Millisecond, 0, true},
		{"fast, dies", true, time.Second, 2 * time.Millisecond, tm.FastDeadAfter + 20*time.Millisecond, false},
		{"slow, dies", false, 5 * time.Second, 2 * time.Millisecond, tm.SlowDeadAfter + tm.SlowEvery, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			tr.setFast(tc.fast)
			answering := func(now time.Time) bool { return tc.stop == 0 || now.Before(t0.Add(tc.stop)) }
			deadAt := run(tr, tm, t0, t0.Add(15*time.Second), tc.rtt, answering)
			if tc.never {
				if !deadAt.IsZero() {
					t.Fatalf("declared dead at %v; the target kept answering", deadAt.Sub(t0))
				}
				return
			}
			if deadAt.IsZero() {
				t.Fatal("never declared dead")
			}
			// The last answer comes at most one interval before the stop.
			if d := deadAt.Sub(t0.Add(tc.stop)); d > tc.wantMax {
				t.Fatalf("dead %v after the target stopped; want at most %v", d, tc.wantMax)
			}
		})
	}
}

// TestGoingFastGivesTheProbeItsTime: a target last heard a second ago (slow
// probing) is not dead the moment probing goes fast (traffic starts through
// it): its first fast probes get twice the dead time; it is dead if they
// go unanswered.
func TestGoingFastGivesTheProbeItsTime(t *testing.T) {
	tm := DefaultTiming
	tr := newTracker()
	tx := disco.NewTxID()
	tr.sent(tx, t0, tm)
	tr.answer(&disco.Message{Type: disco.TypeStatus, TxID: tx, Seq: 1}, t0.Add(time.Millisecond))
	now := t0.Add(900 * time.Millisecond)
	tr.setFast(true)
	if !tr.due(now, tm) {
		t.Fatal("going fast must probe at once")
	}
	grace := 2 * tm.FastDeadAfter // the path to it may be waking up
	for at := now; !at.After(now.Add(grace)); at = at.Add(tm.FastEvery) {
		tr.sent(disco.NewTxID(), at, tm)
	}
	if !tr.observe(now.Add(grace-time.Millisecond), tm).Alive {
		t.Fatal("dead before the first fast probes had their time")
	}
	if tr.observe(now.Add(grace), tm).Alive {
		t.Fatal("alive although no fast probe was answered for twice the dead time")
	}
}

// TestStarvedObserverBlamesNobody: an observer that could send only one
// probe in the dead time (its own process did not run) keeps the target
// alive until MinMissed probes have gone unanswered.
func TestStarvedObserverBlamesNobody(t *testing.T) {
	tm := DefaultTiming
	tr := newTracker()
	tr.setFast(true)
	tx := disco.NewTxID()
	tr.sent(tx, t0, tm)
	tr.answer(&disco.Message{Type: disco.TypeStatus, TxID: tx, Seq: 1}, t0)
	tr.sent(disco.NewTxID(), t0.Add(tm.FastEvery), tm)
	late := t0.Add(time.Second) // the observer ran again only now
	if !tr.observe(late, tm).Alive {
		t.Fatal("dead after one unanswered probe")
	}
	tr.sent(disco.NewTxID(), late, tm)
	tr.sent(disco.NewTxID(), late.Add(tm.FastEvery), tm)
	if tr.observe(late.Add(tm.FastEvery), tm).Alive {
		t.Fatal("alive after MinMissed unanswered probes and a second of silence")
	}
}

// TestStatementsCountOnce: only an answer to an outstanding probe counts,
// once, and only with a higher number than any before.
func TestStatementsCountOnce(t *testing.T) {
	tm := DefaultTiming
	tr := newTracker()
	a, b := disco.NewTxID(), disco.NewTxID()
	tr.sent(a, t0, tm)
	tr.sent(b, t0.Add(50*time.Millisecond), tm)
	st := func(tx disco.TxID, seq uint64, flags byte) *disco.Message {
		return &disco.Message{Type: disco.TypeStatus, TxID: tx, Seq: seq, Flags: flags}
	}
	steps := []struct {
		name string
		m    *disco.Message
		want bool
	}{
		{"never asked for", st(disco.NewTxID(), 10, 0), false},
		{"not a statement", &disco.Message{Type: disco.TypeProbe, TxID: a}, false},
		{"answers a", st(a, 10, disco.StatusLANOK|disco.StatusFwdOK), true},
		{"a again (replayed)", st(a, 11, 0), false},
		{"b with an older number", st(b, 9, 0), false},
	}
	for _, s := range steps {
		if got := tr.answer(s.m, t0.Add(60*time.Millisecond)); got != s.want {
			t.Fatalf("%s: counted %v; want %v", s.name, got, s.want)
		}
	}
	if o := tr.observe(t0.Add(60*time.Millisecond), tm); !o.Alive || !o.LANOK || !o.FwdOK || o.Seq != 10 {
		t.Fatalf("observation %+v; want alive, LAN and forwarding OK from statement 10", o)
	}
}

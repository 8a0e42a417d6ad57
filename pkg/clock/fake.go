package clock

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Fake is a Clock whose time moves only when Advance or Set is called. It
// is safe for use by several goroutines.
type Fake struct {
	mu     sync.Mutex
	now    time.Time    // guarded by mu
	timers []*fakeTimer // guarded by mu: the armed ones
	seq    uint64       // guarded by mu: arming order, to fire equal deadlines in order
}

var _ Clock = (*Fake)(nil)

// NewFake returns a Fake that reads start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now implements Clock.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer implements Clock.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	f.mu.Lock()
	f.arm(t, d)
	f.mu.Unlock()
	return t
}

// NewTicker implements Clock.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &fakeTimer{f: f, c: make(chan time.Time, 1), period: d}
	f.mu.Lock()
	f.arm(t, d)
	f.mu.Unlock()
	return fakeTicker{t}
}

// Advance moves the time forward by d, firing every timer and ticker whose
// deadline falls within, in deadline order; a ticker fires once for each
// period it crosses (ticks its receiver has not taken are dropped).
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.advanceTo(f.now.Add(d))
	f.mu.Unlock()
}

// Set moves the time to t (never backwards), like Advance.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	if t.After(f.now) {
		f.advanceTo(t)
	}
	f.mu.Unlock()
}

// Timers is how many timers and tickers are armed: a test can wait for a
// goroutine to arm its timer before advancing the time.
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// Next is the earliest deadline of an armed timer; zero when none is.
func (f *Fake) Next() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.timers) == 0 {
		return time.Time{}
	}
	return f.timers[0].when
}

func (f *Fake) advanceTo(end time.Time) {
	for len(f.timers) > 0 && !f.timers[0].when.After(end) {
		t := f.timers[0]
		f.timers = f.timers[1:]
		f.now = t.when
		select {
		case t.c <- t.when:
		default: // a tick the receiver has not taken yet: dropped
		}
		if t.period > 0 {
			f.arm(t, t.period)
		} else {
			t.armed = false
		}
	}
	f.now = end
}

// arm schedules t at now+d; f.mu is held.
func (f *Fake) arm(t *fakeTimer, d time.Duration) {
	f.disarm(t)
	f.seq++
	t.when, t.seq, t.armed = f.now.Add(d), f.seq, true
	i, _ := slices.BinarySearchFunc(f.timers, t, func(a, b *fakeTimer) int {
		if c := a.when.Compare(b.when); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	f.timers = slices.Insert(f.timers, i, t)
}

// disarm unschedules t; f.mu is held. It reports whether t was armed.
func (f *Fake) disarm(t *fakeTimer) bool {
	if !t.armed {
		return false
	}
	t.armed = false
	if i := slices.Index(f.timers, t); i >= 0 {
		f.timers = slices.Delete(f.timers, i, i+1)
	}
	return true
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	period time.Duration // tickers only
	when   time.Time     // guarded by f.mu
	seq    uint64        // guarded by f.mu
	armed  bool          // guarded by f.mu
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.drain()
	return t.f.disarm(t)
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.drain()
	was := t.armed
	t.f.arm(t, d)
	return was
}

// drain takes a fired value nobody received (time.Timer's Go 1.23
// semantics: no stale value after Stop or Reset).
func (t *fakeTimer) drain() {
	select {
	case <-t.c:
	default:
	}
}

type fakeTicker struct{ t *fakeTimer }

func (k fakeTicker) C() <-chan time.Time { return k.t.c }
func (k fakeTicker) Stop()               { k.t.Stop() }

// Package clock is the time source long-lived components take instead of
// calling the time package directly, so that a test can move time by hand
// (Fake) and check hold-downs, timeouts and retries without sleeping.
//
// Real is the system clock. Fake keeps its own time, which moves only when
// the test calls Advance; timers and tickers made from it fire then, in
// deadline order.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	// Now is the current time.
	Now() time.Time
	// NewTimer returns a timer that sends the time on its channel once d
	// has passed.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that sends the time every d (d > 0),
	// dropping ticks a slow receiver misses, like time.Ticker.
	NewTicker(d time.Duration) Ticker
}

// Timer is a time.Timer behind an interface.
type Timer interface {
	// C delivers the time when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was
	// still running. After Stop no stale value is left on C.
	Stop() bool
	// Reset makes the timer fire d from now, whether or not it ran; no
	// stale value is left on C.
	Reset(d time.Duration) bool
}

// Ticker is a time.Ticker behind an interface.
type Ticker interface {
	// C delivers the ticks.
	C() <-chan time.Time
	// Stop turns the ticker off.
	Stop()
}

// Real is the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (t realTicker) C() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()               { t.t.Stop() }

// Sleep waits for d on c, or until ctx is done; it reports whether the
// whole d passed. The timer it uses is stopped before it returns.
func Sleep(ctx context.Context, c Clock, d time.Duration) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// Stopped returns a timer of c that is not running (Reset starts it).
func Stopped(c Clock) Timer {
	t := c.NewTimer(time.Hour)
	t.Stop()
	return t
}

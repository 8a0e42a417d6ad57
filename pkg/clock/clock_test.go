package clock

import (
	"context"
	"testing"
	"time"
)

func fired(c <-chan time.Time) (time.Time, bool) {
	select {
	case t := <-c:
		return t, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimer(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	tm := f.NewTimer(time.Second)
	f.Advance(999 * time.Millisecond)
	if _, ok := fired(tm.C()); ok {
		t.Fatal("timer fired before its deadline")
	}
	f.Advance(time.Millisecond)
	if at, ok := fired(tm.C()); !ok || !at.Equal(start.Add(time.Second)) {
		t.Fatalf("got %v, %v; want the timer to fire at %v", at, ok, start.Add(time.Second))
	}
	if f.Timers() != 0 {
		t.Fatalf("got %d armed timers after firing; want 0", f.Timers())
	}
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a fired timer reported it running")
	}
	if !tm.Stop() {
		t.Fatal("Stop of a running timer reported it stopped")
	}
	f.Advance(time.Hour)
	if _, ok := fired(tm.C()); ok {
		t.Fatal("a stopped timer fired")
	}
	// A fired value nobody took is dropped by Reset.
	tm.Reset(time.Second)
	f.Advance(time.Second)
	tm.Reset(time.Second)
	if _, ok := fired(tm.C()); ok {
		t.Fatal("a stale value was left after Reset")
	}
}

func TestFakeOrderAndTicker(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tk := f.NewTicker(300 * time.Millisecond)
	defer tk.Stop()
	late, early := f.NewTimer(2*time.Second), f.NewTimer(time.Second)
	if got := f.Next(); !got.Equal(time.Unix(0, 0).Add(300 * time.Millisecond)) {
		t.Fatalf("next deadline %v; want the ticker's", got)
	}
	ticks := 0
	for range 10 {
		f.Advance(300 * time.Millisecond)
		if _, ok := fired(tk.C()); ok {
			ticks++
		}
	}
	if ticks != 10 {
		t.Fatalf("got %d ticks in 10 periods; want 10", ticks)
	}
	a, _ := fired(early.C())
	b, _ := fired(late.C())
	if !a.Before(b) {
		t.Fatalf("early fired at %v, late at %v", a, b)
	}
	if got := f.Now(); !got.Equal(time.Unix(3, 0)) {
		t.Fatalf("now %v; want 3s after the start", got)
	}
}

func TestSleep(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	done := make(chan bool)
	go func() { done <- Sleep(context.Background(), f, time.Second) }()
	deadline := time.Now().Add(5 * time.Second)
	for f.Timers() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Sleep armed no timer")
		}
		time.Sleep(time.Millisecond) // polling interval, bounded by the deadline
	}
	f.Advance(time.Second)
	if !<-done {
		t.Fatal("Sleep reported an interruption")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, f, time.Second) {
		t.Fatal("Sleep ignored a done context")
	}
	if f.Timers() != 0 {
		t.Fatalf("Sleep left %d timers armed", f.Timers())
	}
}

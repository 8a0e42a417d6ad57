package router

import "sync"

// Fake is a Router that applies plans to a model and records the commands
// the Linux router would have run.
type Fake struct {
	Dev string

	mu    sync.Mutex
	state State    // guarded by mu
	ops   []string // guarded by mu
	up    bool     // guarded by mu
}

var _ Router = (*Fake)(nil)

// Up implements Router.
func (f *Fake) Up() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up = true
	f.ops = append(f.ops, "link set "+f.Dev+" up")
	return nil
}

// Set implements Router.
func (f *Fake) Set(cfg *Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := MakePlan(f.state, cfg)
	f.ops = append(f.ops, p.Ops(f.Dev)...)
	f.state = apply(f.state, cfg)
	return nil
}

// Close implements Router.
func (f *Fake) Close() error { return f.Set(nil) }

// Ops returns the commands recorded so far and forgets them.
func (f *Fake) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ops
	f.ops = nil
	return out
}

// State returns what the fake has installed.
func (f *Fake) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// apply is the state after cfg is fully applied.
func apply(_ State, cfg *Config) State {
	if cfg == nil {
		return State{}
	}
	s := State{SNAT: cfg.SNAT, ClampMSS: cfg.ClampMSS, Forward: cfg.Forward}
	s.Addrs = append(s.Addrs, cfg.Addrs...)
	s.Routes = append(s.Routes, cfg.Routes...)
	sortPrefixes(s.Addrs)
	sortPrefixes(s.Routes)
	return s
}

package router

import (
	"net/netip"
	"slices"
	"sync"
)

// Fake is a Router that keeps a model of the OS instead of changing it: Set
// plans against the model with MakePlan, like the Linux router, applies the
// plan to the model and records the commands it stands for
// ("route add 10.1.0.0/24 dev meshd0"). Make one with NewFake.
type Fake struct {
	dev string

	mu    sync.Mutex
	state State    // guarded by mu
	up    bool     // guarded by mu
	ops   []string // guarded by mu
}

var _ Router = (*Fake)(nil)

// NewFake returns a Fake for interface dev, which starts down with
// DefaultMTU (as a new WireGuard interface does) and nothing installed.
func NewFake(dev string) *Fake {
	return &Fake{dev: dev, state: State{MTU: DefaultMTU}}
}

// Up implements Router.
func (f *Fake) Up() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		f.up = true
		f.ops = append(f.ops, "link set "+f.dev+" up")
	}
	return nil
}

// Set implements Router.
func (f *Fake) Set(cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := MakePlan(f.state, cfg)
	f.ops = append(f.ops, p.Ops(f.dev)...)
	f.state = f.state.Apply(p)
	return nil
}

// Close implements Router.
func (f *Fake) Close() error { return f.Set(nil) }

// Occupy models routes that another owner installed for dsts: Set leaves
// those destinations alone from now on.
func (f *Fake) Occupy(dsts ...netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Occupied = append(f.state.Occupied, dsts...)
	sortPrefixes(f.state.Occupied)
	f.state.Occupied = slices.Compact(f.state.Occupied)
}

// Ops returns the commands recorded since the last call and forgets them.
func (f *Fake) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ops
	f.ops = nil
	return out
}

// State returns the model: what the fake has installed.
func (f *Fake) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.Apply(Plan{}) // a copy
}

// IsUp reports whether Up has been called.
func (f *Fake) IsUp() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up
}

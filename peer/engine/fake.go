package engine

import (
	"sync"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/policy"
)

// Fake is an Engine that records the configurations it is given.
type Fake struct {
	IfName string

	applied applied

	mu    sync.Mutex
	calls int               // guarded by mu: Reconfig calls that changed something
	rules []policy.AddrRule // guarded by mu: the policy rules last set
	sets  int               // guarded by mu: SetPolicyRules calls
}

var (
	_ Engine   = (*Fake)(nil)
	_ Filterer = (*Fake)(nil)
)

// SetPolicyRules implements Filterer.
func (f *Fake) SetPolicyRules(rules []policy.AddrRule) {
	f.mu.Lock()
	f.rules = rules
	f.sets++
	f.mu.Unlock()
}

// PolicyDropped implements Filterer.
func (f *Fake) PolicyDropped() uint64 { return 0 }

// PolicyRules returns the rules last set and how many times they were.
func (f *Fake) PolicyRules() ([]policy.AddrRule, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules, f.sets
}

// Name implements Engine.
func (f *Fake) Name() string { return f.IfName }

// Reconfig implements Engine.
func (f *Fake) Reconfig(cfg *wgcfg.Config) error {
	return f.applied.reconfig(cfg, func(*wgcfg.Config) error {
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		return nil
	})
}

// Status implements Engine: every configured peer, never handshaken.
func (f *Fake) Status() ([]PeerStatus, error) {
	var out []PeerStatus
	if cfg := f.applied.get(); cfg != nil {
		for _, p := range cfg.Peers {
			out = append(out, PeerStatus{PublicKey: p.PublicKey, Endpoint: p.Endpoint})
		}
	}
	return out, nil
}

// Applied returns a copy of the last configuration and how many changing
// Reconfig calls there were.
func (f *Fake) Applied() (*wgcfg.Config, int) {
	cfg := f.applied.get()
	f.mu.Lock()
	defer f.mu.Unlock()
	return cfg, f.calls
}

// Close implements Engine.
func (f *Fake) Close() error { return nil }

package engine

import (
	"sync"

	"github.com/meshd/meshd/peer/wgcfg"
)

// Fake is an Engine that records the configurations it is given.
type Fake struct {
	IfName string

	mu      sync.Mutex
	applied *wgcfg.Config // guarded by mu
	calls   int           // guarded by mu: Reconfig calls that changed something
}

var _ Engine = (*Fake)(nil)

// Name implements Engine.
func (f *Fake) Name() string { return f.IfName }

// Reconfig implements Engine.
func (f *Fake) Reconfig(cfg *wgcfg.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.applied != nil && f.applied.Equal(cfg) {
		return ErrNoChanges
	}
	f.applied = cfg.Clone()
	f.calls++
	return nil
}

// Status implements Engine: every configured peer, never handshaken.
func (f *Fake) Status() ([]PeerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []PeerStatus
	if f.applied != nil {
		for _, p := range f.applied.Peers {
			out = append(out, PeerStatus{PublicKey: p.PublicKey, Endpoint: p.Endpoint})
		}
	}
	return out, nil
}

// Applied returns a copy of the last configuration and how many changing
// Reconfig calls there were.
func (f *Fake) Applied() (*wgcfg.Config, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied.Clone(), f.calls
}

// Close implements Engine.
func (f *Fake) Close() error { return nil }

package engine

import (
	"sync"
	"time"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/policy"
)

// Fake is an Engine that records the configurations it is given.
type Fake struct {
	IfName string

	applied applied

	mu    sync.Mutex
	calls int                      // guarded by mu: Reconfig calls that changed something
	rules []policy.AddrRule        // guarded by mu: the policy rules last set
	sets  int                      // guarded by mu: SetPolicyRules calls
	stats map[wgcfg.Key]PeerStatus // guarded by mu: what Status reports per peer (SetStats)
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

// Status implements Engine: every configured peer, never handshaken
// unless SetStats said otherwise.
func (f *Fake) Status() ([]PeerStatus, error) {
	var out []PeerStatus
	if cfg := f.applied.get(); cfg != nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, p := range cfg.Peers {
			s := f.stats[p.PublicKey]
			s.PublicKey, s.Endpoint = p.PublicKey, p.Endpoint
			out = append(out, s)
		}
	}
	return out, nil
}

// SetStats makes Status report a handshake at last and the byte counts
// rx and tx for the peer with key k.
func (f *Fake) SetStats(k wgcfg.Key, last time.Time, rx, tx uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stats == nil {
		f.stats = map[wgcfg.Key]PeerStatus{}
	}
	f.stats[k] = PeerStatus{LastHandshake: last, RxBytes: rx, TxBytes: tx}
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

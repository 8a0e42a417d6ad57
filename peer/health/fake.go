package health

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// Fake stands in for Gossip in tests: the test says what this peer hears
// of the others (Set, Cut), and reads back what the peer said of itself
// (Self) and how often it tried to join (Joins). Its methods match
// Gossip's.
type Fake struct {
	changed chan struct{}

	mu     sync.Mutex
	peers  map[string]State // guarded by mu
	self   Meta             // guarded by mu
	keys   [][]byte         // guarded by mu
	joins  int              // guarded by mu
	seeds  []string         // guarded by mu: of the last Join
	closed bool             // guarded by mu
}

// NewFake returns a Fake that has heard of nobody.
func NewFake() *Fake {
	return &Fake{changed: make(chan struct{}, 1), peers: map[string]State{}}
}

// Set records what this peer now hears of peer id and signals Changed.
func (f *Fake) Set(id string, s State) {
	f.mu.Lock()
	f.peers[id] = s
	f.mu.Unlock()
	f.kick()
}

// Alive is Set with a healthy state: alive, LAN and forwarding OK.
func (f *Fake) Alive(id string) { f.Set(id, State{Alive: true, LANOK: true, Forwarding: true}) }

// Dead is Set with the peer gone.
func (f *Fake) Dead(id string) { f.Set(id, State{}) }

func (f *Fake) kick() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// Kick signals Changed without changing anything (a test's nudge to look
// again).
func (f *Fake) Kick() { f.kick() }

// Changed is signalled whenever Set changes something.
func (f *Fake) Changed() <-chan struct{} { return f.changed }

// Peers reports what Set recorded.
func (f *Fake) Peers() map[string]State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.peers)
}

// Members counts the alive peers and this one.
func (f *Fake) Members() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 1
	for _, s := range f.peers {
		if s.Alive {
			n++
		}
	}
	return n
}

// SetSelf records m.
func (f *Fake) SetSelf(m Meta) {
	f.mu.Lock()
	f.self = m
	f.mu.Unlock()
}

// Self is what the peer last said of itself.
func (f *Fake) Self() Meta {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.self
}

// SetKeys records the keyring.
func (f *Fake) SetKeys(keys [][]byte, grace time.Duration) {
	f.mu.Lock()
	f.keys = slices.Clone(keys)
	f.mu.Unlock()
}

// Keys is the keyring last set.
func (f *Fake) Keys() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.keys)
}

// Join counts the attempt and answers that nobody did.
func (f *Fake) Join(seeds []string) (int, error) {
	f.mu.Lock()
	f.joins++
	f.seeds = slices.Clone(seeds)
	f.mu.Unlock()
	return 0, nil
}

// Joins is how many times Join was called.
func (f *Fake) Joins() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.joins
}

// Leave records that the peer left.
func (f *Fake) Leave(time.Duration) {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

// Left reports whether Leave was called.
func (f *Fake) Left() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Package health tells the agent which peers are alive, as seen through the
// mesh itself: every peer of a vnet is a memberlist member bound to its
// overlay address, so gossip and probes travel inside the WireGuard tunnels
// and a peer that is up but cannot pass traffic through the mesh looks
// dead. Gossip is encrypted with the keyring the coordinators distribute.
//
// Node metadata is one version byte and a small JSON document (Meta).
// memberlist delegates never block: they record the change under a lock and
// signal the agent through a channel of capacity one.
//
// The package reports facts, not decisions: for each peer it has heard of,
// whether it is alive and whether it says its LAN and forwarding are fine
// (State). What the agent makes of them (hold-down, which gateway carries a
// route) is the agent's; Fake stands in for gossip in its tests.
package health

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// MetaVersion is the first byte of every node's metadata.
const MetaVersion = 1

// DefaultPort is the gossip port, on the overlay address.
const DefaultPort = 7946

// DefaultHoldDown is how long a gateway that came back must stay alive
// before it carries routes again (the agent applies it).
const DefaultHoldDown = 3 * time.Second

// Meta is what a peer tells the others about itself.
type Meta struct {
	ID string `json:"id"`
	// LANOK is false when a gateway cannot forward to its LAN: its LAN
	// check fails or IPv4 forwarding is off.
	LANOK bool `json:"lan_ok"`
	// Role and Routes repeat the network map, for status and debugging.
	Role   string   `json:"role,omitempty"`
	Routes []string `json:"routes,omitempty"`
}

func encodeMeta(m Meta) []byte {
	b, _ := json.Marshal(m)
	return append([]byte{MetaVersion}, b...)
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) < 1 || b[0] != MetaVersion {
		return m, errors.New("unknown metadata version")
	}
	err := json.Unmarshal(b[1:], &m)
	return m, err
}

// Config configures a Gossip.
type Config struct {
	Self     Meta     // required: ID set
	BindAddr string   // required: the overlay address
	Port     int      // optional: DefaultPort
	Keys     [][]byte // required: the keyring, primary first
	Logger   *slog.Logger
	// Timing, optional: the package defaults below.
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration
}

// Timing defaults, chosen for a LAN or WAN mesh of tens to hundreds of
// peers: a dead member is detected in ProbeInterval + ProbeTimeout + the
// suspicion time (SuspicionMult x log10(N) x ProbeInterval, at least
// 2 x 100 ms), about 0.3-0.5 s, while a probe has to fail through indirect
// checks before a member is even suspected, which keeps a busy host from
// being declared dead by one late packet.
const (
	DefaultProbeInterval  = 100 * time.Millisecond
	DefaultProbeTimeout   = 60 * time.Millisecond
	DefaultSuspicionMult  = 2
	DefaultGossipInterval = 30 * time.Millisecond
)

// State is what a health source says of one peer.
type State struct {
	// Alive: the peer answers (directly or through others' probes).
	Alive bool
	// LANOK: the peer says it reaches its LAN (gateways; true otherwise).
	LANOK bool
	// Forwarding: the peer says IPv4 forwarding is on (gateways; true
	// otherwise). Gossip metadata folds it into LANOK, so from gossip it
	// is always true and a zombie shows as LANOK false.
	Forwarding bool
}

// OK reports whether the peer is alive and says it can forward.
func (s State) OK() bool { return s.Alive && s.LANOK && s.Forwarding }

// member is what Gossip knows of one other peer.
type member struct {
	meta  Meta
	alive bool
	// downs counts the times the member was seen going down.
	downs int
}

// Gossip is one peer's membership in its vnet's gossip.
type Gossip struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	ring *memberlist.Keyring

	keyMu       sync.Mutex
	want        [][]byte             // guarded by keyMu: the ring last given, primary first
	arrived     map[string]time.Time // guarded by keyMu: when each key of want was first given
	switchAfter time.Duration        // guarded by keyMu
	switchT     *time.Timer          // guarded by keyMu: the next switch of primary, or nil
	keysClosed  bool                 // guarded by keyMu: Leave was called

	mu      sync.Mutex
	self    Meta               // guarded by mu
	members map[string]*member // guarded by mu: by peer ID
	closed  bool               // guarded by mu: Leave was called
	changed chan struct{}
	// updates counts UpdateNode calls in flight (SetSelf); Leave waits.
	updates sync.WaitGroup
}

// New starts gossip on cfg.BindAddr.
func New(cfg Config) (*Gossip, error) {
	if cfg.Self.ID == "" || cfg.BindAddr == "" || len(cfg.Keys) == 0 {
		return nil, errors.New("health: peer id, bind address and a gossip key are required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.SuspicionMult == 0 {
		cfg.SuspicionMult = DefaultSuspicionMult
	}
	if cfg.GossipInterval == 0 {
		cfg.GossipInterval = DefaultGossipInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Gossip{cfg: cfg, log: cfg.Logger.With("component", "health"), self: cfg.Self,
		members: map[string]*member{}, changed: make(chan struct{}, 1)}
	ring, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	g.ring = ring
	g.want = cfg.Keys
	g.arrived = map[string]time.Time{} // the first keys are in use already
	for _, k := range cfg.Keys {
		g.arrived[string(k)] = time.Time{}
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Self.ID
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.Port
	mc.AdvertiseAddr = cfg.BindAddr
	mc.AdvertisePort = cfg.Port
	mc.Keyring = ring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.SuspicionMaxTimeoutMult = 3
	mc.GossipInterval = cfg.GossipInterval
	mc.GossipNodes = 3
	mc.PushPullInterval = 15 * time.Second
	mc.TCPTimeout = 2 * time.Second
	mc.IndirectChecks = 2
	mc.Delegate = delegate{g}
	mc.Events = events{g}
	mc.Logger = log.New(slogWriter{g.log}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.Port)), err)
	}
	g.ml = ml
	return g, nil
}

// Changed is signalled whenever membership or metadata changes.
func (g *Gossip) Changed() <-chan struct{} { return g.changed }

func (g *Gossip) kick() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// Join contacts seeds (overlay IPs, or host:port); it returns how many
// answered.
func (g *Gossip) Join(seeds []string) (int, error) {
	var addrs []string
	for _, s := range seeds {
		if _, _, err := net.SplitHostPort(s); err == nil {
			addrs = append(addrs, s) // already host:port
			continue
		}
		addrs = append(addrs, net.JoinHostPort(s, strconv.Itoa(g.cfg.Port)))
	}
	if len(addrs) == 0 {
		return 0, nil
	}
	return g.ml.Join(addrs)
}

// SetSelf replaces this peer's metadata and gossips it.
func (g *Gossip) SetSelf(m Meta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if fmt.Sprint(g.self) == fmt.Sprint(m) || g.closed {
		return
	}
	g.self = m
	// UpdateNode waits for the broadcast to go out (at most a second);
	// the caller must not.
	g.updates.Add(1)
	go func() {
		defer g.updates.Done()
		g.ml.UpdateNode(time.Second)
	}()
}

// SetKeys installs the keyring the coordinators sent, primary first, with no
// gap in membership:
//
//   - every key listed is accepted at once;
//   - a listed key newer than the one this peer encrypts with becomes the
//     primary switchAfter after it first arrived, so every member of the
//     vnet has it by then (the coordinators keep the previous key listed
//     for longer than that);
//   - a key no longer listed stops being accepted at once, unless this peer
//     still encrypts with it (it goes when the switch comes).
//
// A removed peer, which keeps only the old keys, can no longer read the
// others once they switch, nor be read once the old key is dropped.
func (g *Gossip) SetKeys(keys [][]byte, switchAfter time.Duration) {
	var want [][]byte
	for _, k := range keys {
		if memberlist.ValidateKey(k) == nil {
			want = append(want, slices.Clone(k))
		}
	}
	if len(want) == 0 {
		return
	}
	g.keyMu.Lock()
	defer g.keyMu.Unlock()
	if g.keysClosed {
		return
	}
	now := time.Now()
	arrived := make(map[string]time.Time, len(want))
	for _, k := range want {
		at, ok := g.arrived[string(k)]
		if !ok {
			at = now
		}
		arrived[string(k)] = at
		if err := g.ring.AddKey(k); err != nil {
			g.log.Warn("add gossip key", "err", err)
		}
	}
	g.want, g.arrived, g.switchAfter = want, arrived, switchAfter
	g.rekeyLocked(now)
}

// rekeyLocked switches to the newest listed key that every member has had
// time to learn, drops keys no longer listed, and arms the timer for the
// next switch; g.keyMu is held.
func (g *Gossip) rekeyLocked(now time.Time) {
	cur := g.ring.GetPrimaryKey()
	// next is when the next newer key may become primary; g.want is
	// newest first.
	var next time.Time
	for _, k := range g.want {
		if bytes.Equal(k, cur) {
			break // only newer keys replace the primary
		}
		if at := g.arrived[string(k)].Add(g.switchAfter); now.Before(at) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if err := g.ring.UseKey(k); err != nil {
			g.log.Warn("switch gossip key", "err", err)
			break
		}
		g.log.Info("gossip key rotated")
		break
	}
	g.dropKeysLocked()
	if g.switchT != nil {
		g.switchT.Stop()
		g.switchT = nil
	}
	if !next.IsZero() && !bytes.Equal(g.ring.GetPrimaryKey(), g.want[0]) {
		g.switchT = time.AfterFunc(next.Sub(now), func() {
			g.keyMu.Lock()
			defer g.keyMu.Unlock()
			if !g.keysClosed {
				g.rekeyLocked(time.Now())
			}
		})
	}
}

// dropKeysLocked removes from the ring every key that is neither listed nor
// the primary; g.keyMu is held. memberlist's RemoveKey shifts the ring's
// backing array in place while its readers hold no lock, unless the key is
// the last one: so keys go from the tail, and a listed key behind one that
// goes is added back right away.
func (g *Gossip) dropKeysLocked() {
	have := slices.Clone(g.ring.GetKeys())
	listed := func(k []byte) bool {
		return slices.ContainsFunc(g.want, func(w []byte) bool { return bytes.Equal(w, k) })
	}
	first := slices.IndexFunc(have, func(k []byte) bool { return !listed(k) })
	if first == 0 { // the primary: it stays until the switch
		first = slices.IndexFunc(have[1:], func(k []byte) bool { return !listed(k) })
		if first >= 0 {
			first++
		}
	}
	if first < 0 {
		return
	}
	for i := len(have) - 1; i >= first; i-- {
		g.ring.RemoveKey(have[i])
	}
	for _, k := range have[first:] {
		if listed(k) {
			g.ring.AddKey(k)
		}
	}
}

// Keys returns the keys gossip accepts now, the one it encrypts with first.
func (g *Gossip) Keys() [][]byte {
	g.keyMu.Lock()
	defer g.keyMu.Unlock()
	var out [][]byte
	for _, k := range g.ring.GetKeys() {
		out = append(out, slices.Clone(k))
	}
	return out
}

// Peers reports every peer Gossip has heard of, by peer ID.
func (g *Gossip) Peers() map[string]State {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]State, len(g.members))
	for id, m := range g.members {
		out[id] = State{Alive: m.alive, LANOK: m.meta.LANOK, Forwarding: true}
	}
	return out
}

// Members is the number of alive members, self included.
func (g *Gossip) Members() int { return g.ml.NumMembers() }

// Leave announces departure and stops gossip.
// Gossip is done once Leave returns: no goroutine or timer of its own is
// left.
func (g *Gossip) Leave(timeout time.Duration) {
	g.keyMu.Lock()
	g.keysClosed = true
	if g.switchT != nil {
		g.switchT.Stop()
	}
	g.keyMu.Unlock()
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.ml.Leave(timeout)
	g.ml.Shutdown()
	g.updates.Wait()
}

// observe records a member's state.
func (g *Gossip) observe(n *memberlist.Node, alive bool) {
	if n.Name == g.cfg.Self.ID {
		return
	}
	meta, err := decodeMeta(n.Meta)
	if err != nil && alive {
		g.log.Debug("ignoring member with unreadable metadata", "member", n.Name, "err", err)
		return
	}
	g.mu.Lock()
	m, ok := g.members[n.Name]
	if !ok {
		m = &member{}
		g.members[n.Name] = m
	}
	if alive {
		m.meta = meta
	} else if m.alive {
		m.downs++
	}
	m.alive = alive
	g.mu.Unlock()
	g.kick()
}

// delegate and events are memberlist's callbacks; they never block.
type delegate struct{ g *Gossip }

func (d delegate) NodeMeta(limit int) []byte {
	d.g.mu.Lock()
	b := encodeMeta(d.g.self)
	d.g.mu.Unlock()
	if len(b) > limit {
		b = encodeMeta(Meta{ID: d.g.self.ID, LANOK: d.g.self.LANOK})
	}
	return b
}
func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

type events struct{ g *Gossip }

func (e events) NotifyJoin(n *memberlist.Node)   { e.g.observe(n, true) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.g.observe(n, false) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.g.observe(n, true) }

// slogWriter feeds memberlist's log lines to slog at debug level (warnings
// about failed probes are expected when a member dies).
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

var _ io.Writer = slogWriter{}

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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
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
}

// Gossip is one peer's membership in its vnet's gossip.
type Gossip struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	ring *memberlist.Keyring

	mu      sync.Mutex
	self    Meta               // guarded by mu
	members map[string]*member // guarded by mu: by peer ID
	rotate  *time.Timer        // guarded by mu: the pending switch to a new primary key
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

// SetKeys installs a new keyring, primary first. The previous primary keeps
// encrypting for grace so that peers that have not yet heard of the new key
// still understand this one; then the new key takes over.
func (g *Gossip) SetKeys(keys [][]byte, grace time.Duration) {
	if len(keys) == 0 {
		return
	}
	for _, k := range keys {
		g.ring.AddKey(k)
	}
	primary := keys[0]
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	if g.rotate != nil {
		g.rotate.Stop()
	}
	g.rotate = time.AfterFunc(grace, func() {
		if err := g.ring.UseKey(primary); err != nil {
			g.log.Warn("switch gossip key", "err", err)
			return
		}
		// Drop keys the coordinators no longer list.
		for _, k := range g.ring.GetKeys() {
			keep := false
			for _, w := range keys {
				if string(w) == string(k) {
					keep = true
				}
			}
			if !keep {
				g.ring.RemoveKey(k)
			}
		}
		g.log.Info("gossip key rotated")
	})
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
	g.mu.Lock()
	g.closed = true
	if g.rotate != nil {
		g.rotate.Stop()
	}
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

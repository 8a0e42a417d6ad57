// Package peer is the meshd agent that runs on every device and site
// gateway: it joins the mesh with a token, keeps its WireGuard key local,
// holds a network-map watch on the coordinators, and reconciles WireGuard
// and the OS routes to the map. It glues together the control client, the
// engine, the router and endpoint discovery; each of those owns one OS
// boundary.
//
//	start -> identity (load, or join with the token) -> engine + router up
//	      -> watch loop (full map, then deltas; reconnect with backoff and
//	         resume from the last index) -> reconcile on every change
//	      -> ctx done or peer removed -> remove routes, close interface
package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/endpoints"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/vip"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
)

// Defaults of Config.
const (
	DefaultInterface = "meshd0"
	// DefaultListenPort is a gateway's WireGuard port (the one to forward
	// on a NAT in front of it). A client picks a random port once and
	// keeps it in its state dir (ListenPortFile), so two clients behind
	// one NAT do not compete for one port mapping.
	DefaultListenPort = 51820
	// ListenPortFile in the state dir holds a client's random port.
	ListenPortFile = "listen-port"
	// HeartbeatEvery is how often the agent tells the coordinators it is
	// alive and refreshes its endpoints.
	HeartbeatEvery = 10 * time.Second
	// HandshakeTimeout is how long a chosen endpoint may go without a
	// handshake before the agent tries the peer's next endpoint.
	HandshakeTimeout = 6 * time.Second
	// OnlineWithin: a peer whose last handshake is this recent is online
	// (WireGuard re-handshakes every 2 minutes on a live session).
	OnlineWithin = 3 * time.Minute
)

// SocketName is the local API socket in the state dir.
const SocketName = "meshd.sock"

// Config is the internal configuration of an agent.
type Config struct {
	StateDir string // required
	// Token is the join token; required only until the first join.
	Token      string
	Name       string      // optional: the host name
	Interface  string      // optional: DefaultInterface
	ListenPort uint16      // optional: DefaultListenPort
	MTU        int         // optional: engine.DefaultMTU
	WGMode     string      // optional: engine.ModeAuto
	Routes     []api.Route // optional: subnets this peer announces (a gateway)
	SNAT       bool        // optional: masquerade mesh traffic leaving the LAN side
	// LANVIP is the virtual IP the active gateway owns on LANDev; optional.
	LANVIP netip.Prefix
	LANDev string // required with LANVIP or LANCheck
	// LANCheck is a LAN address a gateway must reach (ARP) to stay
	// healthy; optional.
	LANCheck   netip.Addr
	HoldDown   time.Duration // optional: health.DefaultHoldDown
	GossipPort int           // optional: health.DefaultPort
	Logger     *slog.Logger

	// NewEngine, NewRouter and Endpoints replace the OS (tests); optional.
	NewEngine func(name string) (engine.Engine, error)
	NewRouter func(name string) (router.Router, error)
	Endpoints func(ctx context.Context, stun []string) []string
}

// Agent is one running peer.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	priv wgcfg.Key
	id   *controlclient.Identity
	cc   *controlclient.Client

	eng engine.Engine
	rtr router.Router

	mu         sync.Mutex
	nm         netMap                    // guarded by mu
	want       *desired                  // guarded by mu: last computed configuration
	endpoints  []string                  // guarded by mu: what we last reported
	connected  string                    // guarded by mu: coordinator of the open stream
	pick       map[string]int            // guarded by mu: endpoint rotation per peer ID
	pickSince  map[string]time.Time      // guarded by mu: when the current pick was made
	lastEP     map[string]netip.AddrPort // guarded by mu: the endpoint last configured per peer ID
	gossip     *health.Gossip            // guarded by mu: nil until the map brings keys and an address
	gossipKeys [][]byte                  // guarded by mu: the keyring gossip uses
	changed    chan struct{}             // signals the reconcile loop

	// bind is the userspace engine's socket layer: paths, probes, relay;
	// nil with the kernel engine or an injected one.
	bind      *bind.Conn
	ownEngine bool
	// relayReported is the relayed address last reported; guarded by mu.
	relayReported string
	hbKick        chan struct{} // asks the heartbeat loop to report now

	vip   vip.VIP     // nil without --lan-vip
	lanOK atomic.Bool // the LAN check passes (true without one)
	// fwdArmed: the router has turned forwarding on, so finding it off
	// means someone else turned it off.
	fwdArmed atomic.Bool
}

// New checks cfg and loads (or creates) the peer's key. Run joins if needed.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("a state dir is required (--state-dir)")
	}
	if cfg.Interface == "" {
		cfg.Interface = DefaultInterface
	}
	if len(cfg.Interface) > 15 {
		return nil, fmt.Errorf("interface name %q is longer than 15 characters", cfg.Interface)
	}
	if cfg.MTU == 0 {
		cfg.MTU = engine.DefaultMTU
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if (cfg.LANVIP.IsValid() || cfg.LANCheck.IsValid()) && cfg.LANDev == "" {
		addr := cfg.LANVIP.Addr()
		if !addr.IsValid() {
			addr = cfg.LANCheck
		}
		dev, err := lanDevFor(addr)
		if err != nil {
			return nil, err
		}
		cfg.LANDev = dev
	}
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no --name given and no host name: %w", err)
		}
		cfg.Name = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if cfg.ListenPort == 0 {
		if len(cfg.Routes) > 0 {
			cfg.ListenPort = DefaultListenPort
		} else {
			p, err := loadOrPickPort(filepath.Join(cfg.StateDir, ListenPortFile))
			if err != nil {
				return nil, err
			}
			cfg.ListenPort = p
		}
	}
	ownEngine := cfg.NewEngine == nil
	if cfg.NewRouter == nil {
		cfg.NewRouter = func(name string) (router.Router, error) { return router.New(name, cfg.Logger) }
	}
	if cfg.Endpoints == nil {
		port := cfg.ListenPort
		iface := cfg.Interface
		cfg.Endpoints = func(ctx context.Context, stun []string) []string {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			eps, err := endpoints.Discover(ctx, port, stun, []string{iface})
			if err != nil {
				cfg.Logger.Debug("endpoint discovery", "err", err)
			}
			return eps
		}
	}
	a := &Agent{
		cfg: cfg, log: cfg.Logger.With("component", "agent"),
		pick: map[string]int{}, pickSince: map[string]time.Time{}, lastEP: map[string]netip.AddrPort{},
		changed: make(chan struct{}, 1), hbKick: make(chan struct{}, 1), ownEngine: ownEngine,
	}
	if ownEngine {
		a.cfg.NewEngine = func(name string) (engine.Engine, error) {
			return engine.New(a.cfg.WGMode, name, a.cfg.MTU, a.cfg.Logger, a.bind)
		}
	}
	priv, err := loadOrCreateKey(filepath.Join(cfg.StateDir, controlclient.KeyFile))
	if err != nil {
		return nil, err
	}
	a.priv = priv
	return a, nil
}

// loadOrPickPort reads a client's listen port from path, or picks a random
// one in 41642-60999 and keeps it there.
func loadOrPickPort(path string) (uint16, error) {
	if b, err := os.ReadFile(path); err == nil {
		var p uint16
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &p); err == nil && p != 0 {
			return p, nil
		}
	}
	p := uint16(41642 + rand.N(60999-41642+1))
	if err := controlclient.WriteFile(path, []byte(fmt.Sprintf("%d\n", p))); err != nil {
		return 0, fmt.Errorf("write listen port: %w", err)
	}
	return p, nil
}

// loadOrCreateKey keeps the WireGuard private key in the state dir; it never
// leaves the host.
func loadOrCreateKey(path string) (wgcfg.Key, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := wgcfg.ParseKey(strings.TrimSpace(string(b)))
		if err != nil {
			return k, fmt.Errorf("read %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return wgcfg.Key{}, fmt.Errorf("read private key: %w", err)
	}
	k, err := wgcfg.GenerateKey()
	if err != nil {
		return k, err
	}
	if err := controlclient.WriteFile(path, []byte(k.String()+"\n")); err != nil {
		return k, fmt.Errorf("write private key: %w", err)
	}
	return k, nil
}

// PublicKey is the peer's WireGuard public key.
func (a *Agent) PublicKey() wgcfg.Key { return a.priv.Public() }

// Run brings the peer up and keeps it in step with the network map until
// ctx is done or the peer is removed.
func (a *Agent) Run(ctx context.Context) (err error) {
	first, err := a.identity(ctx)
	if err != nil {
		return err
	}
	a.log = a.log.With("peer", a.id.Name, "vnet", a.id.VNet)
	if a.cc, err = controlclient.New(a.id); err != nil {
		return err
	}
	if a.ownEngine && a.cfg.WGMode != engine.ModeKernel {
		pin := a.cc.Pin()
		a.bind = bind.New(bind.Config{PrivateKey: a.priv, Logger: a.cfg.Logger, Exclude: []string{a.cfg.Interface},
			TLSConfig: func(string) *tls.Config { return tlspin.ClientConfig(pin) }})
		defer a.bind.Shutdown()
	} else if a.cfg.WGMode == engine.ModeKernel {
		a.log.Warn("kernel WireGuard: no relay and no hole punching; peers are reached at their announced endpoints only")
	}
	if a.eng, err = a.cfg.NewEngine(a.cfg.Interface); err != nil {
		return err
	}
	defer a.eng.Close()
	if a.rtr, err = a.cfg.NewRouter(a.eng.Name()); err != nil {
		return err
	}
	defer func() {
		if cerr := a.rtr.Close(); cerr != nil {
			a.log.Warn("remove routes", "err", cerr)
		}
	}()
	if err := a.rtr.Up(); err != nil {
		return err
	}
	a.lanOK.Store(true)
	if a.cfg.LANVIP.IsValid() {
		if a.vip, err = vip.New(vip.Config{Addr: a.cfg.LANVIP, Dev: a.cfg.LANDev}, a.log); err != nil {
			return err
		}
		defer a.vip.Release()
	}
	defer func() {
		a.mu.Lock()
		g := a.gossip
		a.mu.Unlock()
		if g != nil {
			g.Leave(500 * time.Millisecond)
		}
	}()
	if first == nil {
		// A restart: start from the map saved last time, so the mesh comes
		// up even with every coordinator down; the watch resumes from it.
		saved, err := loadMap(a.cfg.StateDir)
		if err != nil {
			a.log.Warn("ignoring the saved network map", "err", err)
		}
		first = saved
	}
	if first != nil {
		a.mu.Lock()
		a.nm.apply(first)
		a.mu.Unlock()
	}
	if err := a.reconcile(); err != nil {
		a.log.Warn("configure interface", "err", err)
	}
	a.log.Info("peer up", "interface", a.eng.Name(), "overlay_ip", a.id.OverlayIP, "listen_port", a.cfg.ListenPort, "public_key", a.PublicKey().String())

	ln, err := a.serveLocal(ctx)
	if err != nil {
		return err
	}
	defer ln.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	loops := []func(context.Context) error{a.watchLoop, a.heartbeatLoop, a.reconcileLoop}
	if len(a.cfg.Routes) > 0 {
		loops = append(loops, a.selfCheckLoop)
	}
	if a.bind != nil {
		loops = append(loops, a.relayLoop, a.discoveryLoop)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loop(ctx); err != nil {
				cancel(err)
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	a.log.Info("peer down")
	return nil
}

// identity loads the saved identity, or joins with the token and saves it.
// It returns the join's first map, if it joined.
func (a *Agent) identity(ctx context.Context) (*api.MapUpdate, error) {
	id, err := controlclient.LoadIdentity(a.cfg.StateDir)
	if err == nil {
		a.id = id
		if a.cfg.Name != id.Name && a.cfg.Name != "" {
			a.log.Info("keeping the name this peer joined with", "name", id.Name, "asked", a.cfg.Name)
		}
		return nil, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if a.cfg.Token == "" {
		return nil, fmt.Errorf("this peer has not joined yet: give --token or --token-file (state dir %s has no identity)", a.cfg.StateDir)
	}
	eps := a.endpointsToReport(ctx, nil)
	// The map comes from the watch opened right after; leaving it out of
	// the join answer keeps joins cheap in a large vnet.
	req := api.JoinRequest{Name: a.cfg.Name, PublicKey: a.PublicKey().String(), Routes: a.cfg.Routes, Endpoints: eps, OmitMap: true}
	id, resp, err := controlclient.Join(ctx, a.cfg.Token, req)
	if err != nil {
		return nil, err
	}
	if err := id.Save(a.cfg.StateDir); err != nil {
		return nil, fmt.Errorf("save identity: %w", err)
	}
	a.id = id
	a.mu.Lock()
	a.endpoints = eps
	a.mu.Unlock()
	a.log.Info("joined", "peer", id.Name, "vnet", id.VNet, "overlay_ip", id.OverlayIP)
	return resp.Map, nil
}

// watchLoop holds the network-map watch, reconnecting with backoff and
// resuming from the last index; with every coordinator down the mesh keeps
// running on the last map.
func (a *Agent) watchLoop(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		a.mu.Lock()
		since := a.nm.index
		a.mu.Unlock()
		start := time.Now()
		err := a.cc.Watch(ctx, since, a.onUpdate)
		a.setConnected("")
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, controlclient.ErrRemoved) || errors.Is(err, controlclient.ErrCredentialRefused) {
			a.log.Error("stopping", "reason", err)
			return err
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		a.log.Warn("network map watch interrupted; the mesh keeps running on the last map", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (a *Agent) setConnected(u string) {
	a.mu.Lock()
	a.connected = u
	a.mu.Unlock()
}

// onUpdate folds a map update in and wakes the reconcile loop.
func (a *Agent) onUpdate(u *api.MapUpdate) {
	a.mu.Lock()
	before := a.nm.peerSet()
	a.nm.apply(u)
	after := a.nm.peerSet()
	coords := a.nm.coordinators
	a.mu.Unlock()
	if urls := a.cc.Coordinators(); len(urls) > 0 {
		a.setConnected(urls[0])
	}
	for id, name := range after {
		if _, ok := before[id]; !ok {
			a.log.Info("peer added", "name", name)
		}
	}
	for id, name := range before {
		if _, ok := after[id]; !ok {
			a.log.Info("peer removed", "name", name)
		}
	}
	if len(u.Coordinators) > 0 {
		a.cc.SetCoordinators(coords)
		if !slices.Equal(coords, a.id.Coordinators) {
			a.id.Coordinators = coords
			if err := a.id.Save(a.cfg.StateDir); err != nil {
				a.log.Warn("save coordinators", "err", err)
			}
		}
	}
	a.kick()
}

func (m *netMap) peerSet() map[string]string {
	out := make(map[string]string, len(m.peers))
	for id, p := range m.peers {
		out[id] = p.Name
	}
	return out
}

func (a *Agent) kick() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// reconcileLoop applies the map whenever it changes, and every second
// checks handshakes to rotate endpoints that do not answer.
func (a *Agent) reconcileLoop(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var saved uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.changed:
		case <-tick.C:
			a.rotateEndpoints()
			// Keep the map on disk, at most once a second.
			a.mu.Lock()
			var snap *api.MapUpdate
			if a.nm.index != saved && a.nm.self != nil {
				snap, saved = a.nm.snapshot(), a.nm.index
			}
			a.mu.Unlock()
			if snap != nil {
				if err := saveMap(a.cfg.StateDir, snap); err != nil {
					a.log.Warn("save network map", "err", err)
				}
			}
		}
		if err := a.reconcile(); err != nil {
			a.log.Warn("configure interface", "err", err)
		}
	}
}

// reconcile computes the whole desired configuration and applies the
// difference to WireGuard and the OS.
func (a *Agent) reconcile() error {
	a.mu.Lock()
	now := time.Now()
	var healthy func(string) bool
	g := a.gossip
	if g != nil {
		healthy = func(id string) bool { return g.Healthy(id, now) }
	}
	nets := localNets(a.cfg.Interface)
	d := compute(&a.nm, buildOptions{
		privateKey: a.priv, listenPort: a.cfg.ListenPort, mtu: a.cfg.MTU,
		localNets: nets, snat: a.cfg.SNAT, endpointPick: a.pick,
		healthy: healthy, selfUnhealthy: !a.lanOK.Load(), noEndpoints: a.bind != nil,
	})
	var paths []bind.PeerConfig
	var stunServers []netip.AddrPort
	var exclude []netip.Prefix
	if a.bind != nil {
		paths = pathConfigs(&a.nm, nets)
		exclude = slices.Clone(d.router.Routes) // the overlay and the subnets routed into the mesh
		if a.nm.self != nil {
			for _, r := range a.nm.self.Routes {
				if p, err := netip.ParsePrefix(r.Prefix); err == nil {
					exclude = append(exclude, p)
				}
			}
		}
		for _, s := range a.nm.stunServers {
			if ap, err := netip.ParseAddrPort(s); err == nil {
				stunServers = append(stunServers, ap)
			}
		}
	}
	if a.want != nil {
		logRouteChanges(a.log, a.want.routes, d.routes)
	}
	a.want = d
	for id, p := range a.nm.peers {
		key, _ := wgcfg.ParseKey(p.PublicKey)
		if wp := d.wg.Peer(key); wp != nil && a.lastEP[id] != wp.Endpoint {
			if a.lastEP[id].IsValid() {
				a.log.Info("peer endpoint changed", "name", p.Name, "endpoint", wp.Endpoint)
			}
			a.lastEP[id] = wp.Endpoint
			a.pickSince[id] = now
		}
	}
	for id := range a.lastEP {
		if _, ok := a.nm.peers[id]; !ok {
			delete(a.lastEP, id)
			delete(a.pick, id)
			delete(a.pickSince, id)
		}
	}
	a.mu.Unlock()
	if a.bind != nil {
		// Paths first: WireGuard's first handshake must find one.
		a.bind.SetSTUNServers(stunServers)
		a.bind.SetPeers(paths, exclude)
	}
	err := a.eng.Reconfig(d.wg)
	if err != nil && !errors.Is(err, engine.ErrNoChanges) {
		return err
	}
	// A router error (say, no nf_tables for the MSS clamp) is reported,
	// but health gossip and the VIP still follow the map: failover must not
	// depend on every OS detail being in place.
	rerr := a.rtr.Set(d.router)
	if rerr == nil && d.router.Forward {
		a.fwdArmed.Store(true)
	}
	if a.ensureGossip() {
		a.kick() // recompute with health
	}
	a.followVIP(d)
	if g != nil {
		if next := g.NextHoldDownEnd(now); !next.IsZero() {
			time.AfterFunc(time.Until(next)+10*time.Millisecond, a.kick)
		}
	}
	return rerr
}

// followVIP makes this gateway own the LAN VIP exactly while it is the
// active gateway of one of the routes it announces.
func (a *Agent) followVIP(d *desired) {
	if a.vip == nil {
		return
	}
	active := false
	for _, r := range d.routes {
		if r.Local && r.ActiveGateway == a.id.Name {
			active = true
		}
	}
	// A gateway cut off from every other member (its underlay is down)
	// still computes itself active; it must let the VIP go so that the
	// standby, which sees it dead, can take it.
	a.mu.Lock()
	g, others := a.gossip, len(a.nm.peers)
	a.mu.Unlock()
	if g != nil && others > 0 && g.Members() == 1 {
		active = false
	}
	if !active {
		a.vip.Release()
		return
	}
	if err := a.vip.Claim(); err != nil {
		// Another host still answers for the VIP (the old owner has not
		// let go yet, or the pair cannot gossip): try again shortly.
		a.log.Debug("virtual IP not free yet", "err", err)
		time.AfterFunc(100*time.Millisecond, a.kick)
	}
}

// ensureGossip starts health gossip once the map has brought this peer's
// address and the keyring, keeps the keyring current and the metadata
// fresh, and rejoins when this peer is alone.
func (a *Agent) ensureGossip() (started bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nm.self == nil || len(a.nm.gossipKeys) == 0 {
		return false
	}
	meta := health.Meta{ID: a.nm.self.ID, LANOK: a.lanOK.Load(), Role: a.nm.self.Role}
	for _, r := range a.nm.self.Routes {
		meta.Routes = append(meta.Routes, fmt.Sprintf("%s:%d", r.Prefix, r.Priority))
	}
	var seeds []string
	for _, p := range a.nm.peers {
		seeds = append(seeds, p.OverlayIP)
	}
	if a.gossip == nil {
		g, err := health.New(health.Config{Self: meta, BindAddr: a.nm.self.OverlayIP, Port: a.cfg.GossipPort,
			Keys: a.nm.gossipKeys, HoldDown: a.cfg.HoldDown, Logger: a.cfg.Logger})
		if err != nil {
			a.log.Warn("health gossip not started", "err", err)
			return false
		}
		a.gossip, a.gossipKeys = g, a.nm.gossipKeys
		go func() {
			for range g.Changed() {
				a.kick()
			}
		}()
		go g.Join(seeds)
		a.log.Info("health gossip started", "addr", a.nm.self.OverlayIP)
		return true
	}
	a.gossip.SetSelf(meta)
	if !slices.EqualFunc(a.gossipKeys, a.nm.gossipKeys, func(x, y []byte) bool { return string(x) == string(y) }) {
		a.gossipKeys = a.nm.gossipKeys
		a.gossip.SetKeys(a.nm.gossipKeys, 10*time.Second)
	}
	if a.gossip.Members() == 1 && len(seeds) > 0 {
		go a.gossip.Join(seeds)
	}
	return false
}

// logRouteChanges says when a route moves to another gateway.
func logRouteChanges(log *slog.Logger, before, after []api.LocalRoute) {
	was := map[string]string{}
	for _, r := range before {
		was[r.Prefix] = r.ActiveGateway
	}
	for _, r := range after {
		if old, ok := was[r.Prefix]; ok && old != r.ActiveGateway {
			log.Info("route moved", "prefix", r.Prefix, "from", old, "to", r.ActiveGateway)
		}
	}
}

// selfCheckLoop is a gateway's own health: IPv4 forwarding must be on (a
// gateway whose forwarding is off is a zombie: alive, gossiping, passing no
// traffic) and, with --lan-check, the LAN address must answer ARP. Three
// failed LAN checks in a row (about 0.9 s) mark the gateway unhealthy; a
// disabled forwarding does at once; one good round marks it healthy. Its
// peers learn it through gossip metadata and move its routes.
func (a *Agent) selfCheckLoop(ctx context.Context) error {
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		fwd := true
		if a.fwdArmed.Load() {
			var err error
			if fwd, err = router.ForwardingEnabled(); err != nil {
				a.log.Debug("forwarding check", "err", err)
			}
		}
		lan := true
		if a.cfg.LANCheck.IsValid() {
			ok, err := vip.Reachable(a.cfg.LANDev, a.cfg.LANCheck, 200*time.Millisecond)
			if err != nil {
				a.log.Debug("lan check", "err", err)
			}
			if ok {
				fails = 0
			} else {
				fails++
			}
			lan = fails < 3
		}
		healthy := fwd && lan
		if healthy != a.lanOK.Load() {
			a.lanOK.Store(healthy)
			a.log.Warn("gateway health changed", "healthy", healthy, "forwarding", fwd, "lan_check", lan)
			a.kick()
		}
	}
}

// rotateEndpoints moves a peer that has never completed a handshake on its
// chosen endpoint to its next one (a LAN address that is not shared, say).
func (a *Agent) rotateEndpoints() {
	if a.bind != nil {
		return // the bind probes every endpoint and picks
	}
	st, err := a.eng.Status()
	if err != nil {
		return
	}
	hs := map[wgcfg.Key]time.Time{}
	for _, s := range st {
		hs[s.PublicKey] = s.LastHandshake
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	rotated := false
	for id, p := range a.nm.peers {
		if len(p.Endpoints) < 2 {
			continue
		}
		key, _ := wgcfg.ParseKey(p.PublicKey)
		since := a.pickSince[id]
		if last := hs[key]; !last.IsZero() && now.Sub(last) < OnlineWithin || since.IsZero() || now.Sub(since) < HandshakeTimeout {
			continue
		}
		a.pick[id]++
		rotated = true
	}
	if rotated {
		a.kick()
	}
}

// heartbeatLoop reports liveness, endpoints and the relayed address:
// every HeartbeatEvery, and at once when the bind's discovery changes.
func (a *Agent) heartbeatLoop(ctx context.Context) error {
	tick := time.NewTicker(HeartbeatEvery)
	defer tick.Stop()
	for {
		a.mu.Lock()
		stun := a.nm.stunServers
		reported, reportedRelay := a.endpoints, a.relayReported
		a.mu.Unlock()
		var eps []string
		var relay *string
		if a.bind != nil {
			d := a.bind.Discovery()
			eps = a.filterEndpoints(addrStrings(d.Endpoints()))
			if r := addrString(d.Relay); r != reportedRelay {
				relay = &r
			}
		} else {
			eps = a.endpointsToReport(ctx, stun)
		}
		var send []string
		if eps != nil && !slices.Equal(eps, reported) {
			send = eps
		}
		err := a.cc.Heartbeat(ctx, send, relay)
		switch {
		case errors.Is(err, controlclient.ErrCredentialRefused):
			a.log.Error("stopping", "reason", err)
			return err
		case err != nil:
			a.log.Debug("heartbeat", "err", err)
		default:
			a.mu.Lock()
			if send != nil {
				a.endpoints = send
			}
			if relay != nil {
				a.relayReported = *relay
			}
			a.mu.Unlock()
			if send != nil || relay != nil {
				a.log.Info("endpoints reported", "endpoints", send, "relay", relay)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-a.hbKick:
			if err != nil {
				// Do not hammer coordinators that refuse; the ticker retries.
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		}
	}
}

// discoveryLoop reports at once what the bind learns of this host's
// reachability (a new reflexive address, a relay allocation, a move to
// another network), after a short pause that lets a burst settle.
func (a *Agent) discoveryLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.bind.Changed():
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		select {
		case a.hbKick <- struct{}{}:
		default:
		}
	}
}

// relayLoop keeps the bind supplied with relays and a fresh credential.
func (a *Agent) relayLoop(ctx context.Context) error {
	for {
		wait := 5 * time.Second
		rc, err := a.cc.Relay(ctx)
		switch {
		case errors.Is(err, controlclient.ErrCredentialRefused):
			a.log.Error("stopping", "reason", err)
			return err
		case err != nil:
			a.log.Debug("relay credentials", "err", err)
		default:
			a.bind.SetRelays(*rc)
			if left := time.Until(rc.Expires); left > 0 {
				wait = max(left/2, 10*time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func addrStrings(as []netip.AddrPort) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// pathConfigs lists every peer's candidates for the bind: its announced
// endpoints (those on a shared LAN first) and its relayed address.
func pathConfigs(m *netMap, nets []netip.Prefix) []bind.PeerConfig {
	out := make([]bind.PeerConfig, 0, len(m.peers))
	for _, p := range m.peers {
		key, err := wgcfg.ParseKey(p.PublicKey)
		if err != nil {
			continue
		}
		pc := bind.PeerConfig{Key: key}
		var eps []netip.AddrPort
		for _, e := range p.Endpoints {
			if ap, err := netip.ParseAddrPort(e); err == nil {
				eps = append(eps, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			}
		}
		pc.Endpoints = bind.RankDirect(eps, nets)
		if ap, err := netip.ParseAddrPort(p.Relay); err == nil {
			pc.Relay = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		out = append(out, pc)
	}
	return out
}

// endpointsToReport discovers this peer's endpoints, leaving out addresses
// inside the subnets it announces: those are the site LAN behind the mesh,
// and a tunnel over the LAN between the two gateways of a site would keep
// them gossiping when one has lost its uplink, hiding the failure.
func (a *Agent) endpointsToReport(ctx context.Context, stun []string) []string {
	return a.filterEndpoints(a.cfg.Endpoints(ctx, stun))
}

// filterEndpoints leaves out addresses inside the subnets this peer
// announces (see endpointsToReport).
func (a *Agent) filterEndpoints(eps []string) []string {
	if len(a.cfg.Routes) == 0 || eps == nil {
		return eps
	}
	out := []string{}
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		inside := false
		for _, r := range a.cfg.Routes {
			if p, perr := netip.ParsePrefix(r.Prefix); err == nil && perr == nil && p.Contains(ap.Addr()) {
				inside = true
			}
		}
		if !inside {
			out = append(out, e)
		}
	}
	return out
}

// localNets lists the prefixes of this host's interfaces (except the mesh
// interface and other tunnels), to recognise a peer endpoint on a shared
// LAN.
func localNets(exclude string) []netip.Prefix {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, ifc := range ifs {
		if ifc.Name == exclude || ifc.Flags&net.FlagUp == 0 || ifc.Flags&(net.FlagLoopback|net.FlagPointToPoint) != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(n.String()); err == nil {
					out = append(out, p.Masked())
				}
			}
		}
	}
	return out
}

// lanDevFor finds the one interface with an IPv4 address whose subnet holds
// addr: the LAN interface when --lan-dev is not given.
func lanDevFor(addr netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	var found []string
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil {
				continue
			}
			p, err := netip.ParsePrefix(ipn.String())
			if err == nil && p.Bits() < 32 && p.Masked().Contains(addr) {
				found = append(found, ifc.Name)
				break
			}
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("no interface has an address in the subnet of %s: give --lan-dev (the LAN interface)", addr)
	default:
		return "", fmt.Errorf("interfaces %s all have addresses in the subnet of %s: give --lan-dev", strings.Join(found, ", "), addr)
	}
}

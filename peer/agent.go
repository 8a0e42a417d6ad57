// Package peer is the meshd agent that runs on every device and site
// gateway: it joins the mesh with a token, keeps its WireGuard key local,
// holds a network-map watch on the coordinators, and reconciles WireGuard
// and the OS routes to the map and to the health of the gateways. It glues
// together the control client, the engine, the router, health gossip, the
// LAN VIP and endpoint discovery; each of those owns one OS boundary and
// sits behind an interface with a fake beside it (seams.go), and time comes
// from a clock.Clock, so the whole agent runs in tests without root.
//
//	start -> identity (load, or join with the token) -> engine + router up
//	      -> the loop (one goroutine owns all state; see loop.go)
//	      -> ctx done or peer removed -> every goroutine stopped, VIP
//	         released, gossip left, routes removed, interface closed
//
// The loop is fed by the workers (workers.go), each of which only sends it
// events or reads what it published:
//
//	watch     (map stream, reconnects)  --map updates------>\
//	heartbeat (endpoints, relay addr)   --what was reported-->\
//	self-check (forwarding, LAN check)  --check results------> loop --> engine, router, bind
//	health source                       --"changed"---------->/     \-> vip follower (claim/release)
//	local API (`meshd status`, ping)    --requests---------->/       \-> gossip joiner
//	clock: hold-down end, 1 s tick      ------------------->/
package peer

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/endpoints"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/vip"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
	"github.com/meshd/meshd/pkg/metrics"
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
	// LANVIP is the virtual IP the active gateway owns on LANDev (IPv4 or
	// IPv6); optional.
	LANVIP netip.Prefix
	// LANVIP6 is a second, IPv6, virtual IP beside an IPv4 LANVIP (a
	// dual-stack LAN); optional.
	LANVIP6 netip.Prefix
	LANDev  string // required with LANVIP or LANCheck
	// LANCheck is a LAN address a gateway must reach (ARP) to stay
	// healthy; optional.
	LANCheck   netip.Addr
	HoldDown   time.Duration // optional: health.DefaultHoldDown
	GossipPort int           // optional: health.DefaultPort
	// LivenessPort is the UDP port of gateway health probes on the overlay
	// address; optional: liveness.DefaultPort.
	LivenessPort int
	// DNS answers the mesh's names on the overlay address (dns.go).
	DNS DNSConfig
	// MetricsListener is where Prometheus metrics are served at /metrics
	// in plain HTTP (metrics.go); optional. Run closes it.
	MetricsListener net.Listener
	Logger          *slog.Logger

	// The rest replace the OS and the network (tests); all optional.
	NewEngine func(name string) (engine.Engine, error)
	NewRouter func(name string) (router.Router, error)
	Endpoints func(ctx context.Context, stun []string) []string
	// NewControl replaces the coordinator client (controlclient.New).
	// With it the agent runs no bind (no relay, no hole punching).
	NewControl func(id *controlclient.Identity) (Control, error)
	// NewHealth replaces health gossip (health.New).
	NewHealth func(cfg health.Config) (Health, error)
	// NewLiveness replaces the gateway health probes (liveness.New).
	NewLiveness func(cfg liveness.Config) (Liveness, error)
	// NewVIP replaces the LAN VIP (vip.New).
	NewVIP func(cfg vip.Config) (vip.VIP, error)
	// Checker replaces the forwarding sysctl and the ARP LAN check.
	Checker Checker
	// Clock replaces the system clock.
	Clock clock.Clock
}

// Agent is one running peer. Its fields are set by New and Run before the
// loop starts and not changed afterwards; the state the loop owns lives in
// a state value no other goroutine sees (loop.go).
type Agent struct {
	cfg  Config
	log  *slog.Logger
	clk  clock.Clock
	priv wgcfg.Key
	id   *controlclient.Identity // Coordinators is written by the loop only
	cc   Control

	eng engine.Engine
	rtr router.Router
	vip vip.VIP // nil without --lan-vip

	// bind is the userspace engine's socket layer: paths, probes, relay;
	// nil with the kernel engine or an injected one.
	bind      *bind.Conn
	ownEngine bool
	// nameGiven: Config.Name was given, not taken from the host name.
	nameGiven bool
	// joined: this run joined (rather than loading a saved identity).
	joined bool

	// Inputs of the loop.
	watchCh  chan watchEvent  // map stream
	checkCh  chan checkResult // a gateway's own checks
	reportCh chan reportEvent // what the heartbeat reported
	reqCh    chan func(*state)
	loopDone chan struct{} // closed when the loop has returned (or will never run)
	loopOnce sync.Once
	// Outputs of the loop to workers (latest value wins).
	vipCh  chan bool
	joinCh chan joinRequest
	hbKick chan struct{} // asks the heartbeat to report now
	dnsCh  chan dnsWant  // the names to serve (dns.go)
	// stun is the STUN servers of the last map, for the heartbeat.
	stun atomic.Pointer[[]string]
	// selfFlags is what this peer's health statements say of it
	// (disco.StatusLANOK, StatusFwdOK); written by the loop.
	selfFlags atomic.Uint32
	// up is set once Run has the engine, the router and the local socket
	// up: a join is rolled back only before.
	up atomic.Bool
	// metricsReg holds the agent's collectors (metrics.go).
	metricsReg *prometheus.Registry
}

// New checks cfg and loads (or creates) the peer's key. Run joins if needed.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("a state dir is required (--state-dir)")
	}
	if cfg.Interface == "" {
		cfg.Interface = DefaultInterface
	}
	if err := ValidInterfaceName(cfg.Interface); err != nil {
		return nil, err
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
	nameGiven := cfg.Name != ""
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
	if cfg.HoldDown <= 0 {
		cfg.HoldDown = health.DefaultHoldDown
	}
	if err := cfg.DNS.normalize(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Checker == nil {
		cfg.Checker = osChecker{}
	}
	if cfg.NewHealth == nil {
		cfg.NewHealth = newGossip
	}
	if cfg.NewLiveness == nil {
		cfg.NewLiveness = newProberLiveness
	}
	if cfg.NewVIP == nil {
		log := cfg.Logger
		cfg.NewVIP = func(c vip.Config) (vip.VIP, error) { return vip.New(c, log) }
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
		cfg: cfg, log: cfg.Logger.With("component", "agent"), clk: cfg.Clock, ownEngine: ownEngine, nameGiven: nameGiven,
		watchCh: make(chan watchEvent, 16), checkCh: make(chan checkResult), reportCh: make(chan reportEvent),
		reqCh: make(chan func(*state)), loopDone: make(chan struct{}),
		vipCh: make(chan bool, 1), joinCh: make(chan joinRequest, 1), hbKick: make(chan struct{}, 1),
		dnsCh: make(chan dnsWant, 1),
	}
	a.metricsReg = metrics.NewRegistry()
	a.metricsReg.MustRegister(&agentCollector{a: a})
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

// Run brings the peer up and keeps it in step with the network map and the
// gateways' health until ctx is done or the peer is removed. When Run
// returns, every goroutine and timer it started has stopped.
//
// When this run joined and then fails before the peer is up (the engine,
// the router or the local socket cannot be set up), the join is rolled
// back: the peer removes itself from the mesh with its new credential,
// which gives the join token its use back, and forgets the identity it
// saved, so the next run joins again with the same token (and the name
// it is given then).
func (a *Agent) Run(ctx context.Context) (err error) {
	defer a.loopEnded()
	if a.cfg.MetricsListener != nil {
		defer a.cfg.MetricsListener.Close()
	}
	first, reported, err := a.identity(ctx)
	if err != nil {
		return err
	}
	if a.joined {
		defer func() {
			if err != nil && !a.up.Load() {
				a.rollbackJoin(err)
			}
		}()
	}
	a.log = a.log.With("peer", a.id.Name, "vnet", a.id.VNet)
	if a.cfg.NewControl != nil {
		if a.cc, err = a.cfg.NewControl(a.id); err != nil {
			return err
		}
	} else {
		c, err := controlclient.New(a.id)
		if err != nil {
			return err
		}
		a.cc = c
		if a.ownEngine && a.cfg.WGMode != engine.ModeKernel {
			pin := c.Pin()
			a.bind = bind.New(bind.Config{PrivateKey: a.priv, Logger: a.cfg.Logger, Exclude: []string{a.cfg.Interface},
				TLSConfig: func(string) *tls.Config { return tlspin.ClientConfig(pin) }})
			defer a.bind.Shutdown()
		}
	}
	if a.cfg.WGMode == engine.ModeKernel {
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
	if a.cfg.LANVIP.IsValid() {
		if a.vip, err = a.cfg.NewVIP(vip.Config{Addr: a.cfg.LANVIP, Dev: a.cfg.LANDev}); err != nil {
			return err
		}
		if a.cfg.LANVIP6.IsValid() {
			v6, err := a.cfg.NewVIP(vip.Config{Addr: a.cfg.LANVIP6, Dev: a.cfg.LANDev})
			if err != nil {
				return err
			}
			a.vip = vip.All(a.vip, v6)
		}
		defer a.vip.Release()
	}
	if first == nil {
		// A restart: start from the map saved last time, so the mesh comes
		// up even with every coordinator down; the watch resumes from it.
		saved, err := loadMap(a.cfg.StateDir)
		if err != nil {
			a.log.Warn("ignoring the saved network map", "err", err)
		}
		first = saved
	}
	st := a.newState(first, reported)
	defer st.stop()
	a.reconcile(st)
	a.log.Info("peer up", "interface", a.eng.Name(), "overlay_ip", a.id.OverlayIP, "listen_port", a.cfg.ListenPort, "public_key", a.PublicKey().String())

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	srv, err := a.serveLocal()
	if err != nil {
		return err
	}
	a.up.Store(true)
	var wg sync.WaitGroup
	// Workers stop when ctx is done; one that fails ends the agent.
	start := func(f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				cancel(err)
			}
		})
	}
	since := st.nm.index
	start(func(ctx context.Context) error { return a.watchLoop(ctx, since) })
	start(func(ctx context.Context) error { return a.heartbeatLoop(ctx, reported) })
	start(a.joinLoop)
	start(srv.run)
	if len(a.cfg.Routes) > 0 {
		start(a.selfCheckLoop)
	}
	if a.vip != nil {
		start(a.vipLoop)
	}
	if a.cfg.DNS.Enabled {
		start(a.dnsLoop)
	}
	if a.cfg.MetricsListener != nil {
		start(a.serveMetrics)
	}
	if a.bind != nil {
		start(a.relayLoop)
		start(a.discoveryLoop)
	}
	a.loop(ctx, st)
	a.loopEnded()
	cancel(nil)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	a.log.Info("peer down")
	return nil
}

func (a *Agent) loopEnded() { a.loopOnce.Do(func() { close(a.loopDone) }) }

// identity loads the saved identity, or joins with the token and saves it.
// It returns the join's first map and the endpoints it reported, if it
// joined.
func (a *Agent) identity(ctx context.Context) (*api.MapUpdate, []string, error) {
	id, err := controlclient.LoadIdentity(a.cfg.StateDir)
	if err == nil {
		if a.nameGiven {
			if err := SameIdentity(id, a.cfg.Name, a.cfg.StateDir); err != nil {
				return nil, nil, err
			}
		}
		a.id = id
		return nil, nil, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	if a.cfg.Token == "" {
		return nil, nil, fmt.Errorf("this peer has not joined yet: give --token or --token-file (state dir %s has no identity)", a.cfg.StateDir)
	}
	eps := a.endpointsToReport(ctx, nil)
	// The map comes from the watch opened right after; leaving it out of
	// the join answer keeps joins cheap in a large vnet.
	req := api.JoinRequest{Name: a.cfg.Name, PublicKey: a.PublicKey().String(), Routes: a.cfg.Routes, Endpoints: eps, OmitMap: true,
		CredentialSecret: joinSecret(a.priv, a.cfg.Token)}
	id, resp, err := controlclient.Join(ctx, a.cfg.Token, req)
	if err != nil {
		return nil, nil, err
	}
	if err := id.Save(a.cfg.StateDir); err != nil {
		return nil, nil, fmt.Errorf("save identity: %w", err)
	}
	a.id, a.joined = id, true
	a.log.Info("joined", "peer", id.Name, "vnet", id.VNet, "overlay_ip", id.OverlayIP)
	return resp.Map, eps, nil
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
		if err != nil || p.Role == api.RoleDevice { // a device answers no probes: WireGuard roams to it
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

// lanDevFor finds the one interface with an address of addr's family
// whose subnet holds addr: the LAN interface when --lan-dev is not given.
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
			if !ok || (ipn.IP.To4() == nil) == addr.Is4() {
				continue
			}
			p, err := netip.ParsePrefix(ipn.String())
			if err == nil && p.Bits() < p.Addr().BitLen() && p.Masked().Contains(addr) {
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

// joinSecret is the credential secret a join with tok proposes: derived
// from the peer's private key and the token, so that an agent restarted
// after a join whose answer was lost repeats it with the same secret and
// gets its identity back, even from a single-use token the lost attempt
// used up.
func joinSecret(priv wgcfg.Key, tok string) string {
	m := hmac.New(sha256.New, priv[:])
	m.Write([]byte("meshd join credential\x00"))
	m.Write([]byte(tok))
	return hex.EncodeToString(m.Sum(nil))
}

// leaver is a Control that can remove its own peer from the mesh
// (controlclient.Client.Leave).
type leaver interface {
	Leave(ctx context.Context) error
}

// RollbackTimeout bounds the self-removal that undoes a join.
const RollbackTimeout = 10 * time.Second

// rollbackJoin undoes the join of this run after cause made the first start
// fail: the peer removes itself with its new credential (the coordinators
// give the join token its use back, since the peer never came up) and the
// identity and map saved since are deleted, so the next run joins afresh
// with the same token. When the coordinators cannot be told, the identity
// stays: the next run comes up with it and wastes nothing either.
func (a *Agent) rollbackJoin(cause error) {
	var l leaver
	switch c := a.cc.(type) {
	case leaver:
		l = c
	case nil:
		if c, err := controlclient.New(a.id); err == nil {
			l = c
		}
	}
	if l == nil {
		a.log.Warn("first start failed after the join; the next start uses the identity it saved", "err", cause)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), RollbackTimeout)
	defer cancel()
	if err := l.Leave(ctx); err != nil && !errors.Is(err, controlclient.ErrCredentialRefused) {
		a.log.Warn("first start failed after the join and the join could not be undone; the next start uses the identity it saved", "err", err, "cause", cause)
		return
	}
	for _, f := range []string{controlclient.IdentityFile, MapFile} {
		if err := os.Remove(filepath.Join(a.cfg.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("forget the identity of the undone join", "file", f, "err", err)
		}
	}
	a.log.Info("first start failed: the join was undone (the peer is removed and the token keeps its use); fix the cause and start again", "cause", cause)
}

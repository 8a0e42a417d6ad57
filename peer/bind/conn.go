// Package bind is the socket layer of the userspace engine: a conn.Bind for
// wireguard-go whose one UDP socket carries WireGuard, path probes (package
// disco), STUN and TURN, and which sends each peer's packets over the best
// path it has found: a direct address that answers probes, else the
// peer's relayed address through this host's TURN allocation.
//
// WireGuard is given one fixed endpoint per peer ("peer:" and the key in
// hex) with roaming off; the bind decides where that endpoint's packets go,
// so moving a peer between paths never touches WireGuard's sessions and
// loses no packet.
//
// One goroutine (run) owns every peer's path state; the receive paths, the
// relay and the API methods send it events. The path in use is published
// per peer through an atomic pointer that Send reads.
//
//	new peer / candidates change / local addresses change
//	   -> probe every candidate at once (and ping through the relay, which
//	      carries this host's candidates: the other side probes back)
//	   -> relay (or first candidate) until a direct candidate answers
//	   -> direct, lowest RTT; pinged every 250 ms while traffic flows
//	   -> no pong for 750 ms: back to the relay, probe again fast
package bind

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/endpoints"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// EndpointPrefix starts the endpoint string the engine gives WireGuard for
// a peer whose path this bind chooses.
const EndpointPrefix = "peer:"

// EndpointString is the endpoint WireGuard is configured with for key.
func EndpointString(key wgcfg.Key) string { return EndpointPrefix + key.Hex() }

// Config configures a Conn.
type Config struct {
	PrivateKey wgcfg.Key    // required
	Logger     *slog.Logger // optional
	// LocalAddrs lists this host's usable addresses; optional (tests),
	// defaults to the host's interfaces except Exclude.
	LocalAddrs func() []netip.Addr
	// Exclude names interfaces whose addresses are never candidates (the
	// mesh interface); optional.
	Exclude []string
	// TLSConfig returns the TLS configuration for a TURN server reached
	// over TLS (host is its host name or address); optional.
	TLSConfig func(host string) *tls.Config
	// Std replaces the UDP socket pair (NewUDP; tests); optional.
	Std conn.Bind
}

// PeerConfig is what the map says about one peer's paths.
type PeerConfig struct {
	Key wgcfg.Key
	// Endpoints are the peer's announced direct candidates, best first.
	Endpoints []netip.AddrPort
	// Relay is the peer's relayed address; zero when it has none.
	Relay netip.AddrPort
}

// PathStatus is the path in use to one peer.
type PathStatus struct {
	Path string         // PathDirect, PathRelay, or "" (none yet)
	Addr netip.AddrPort // the direct address, or the peer's relayed address
	RTT  time.Duration  // of the last pong on that path; 0: not measured
}

// Discovery is what this host learned about its own reachability.
type Discovery struct {
	Port uint16 // the bound UDP port
	// Local are this host's addresses with the bound port.
	Local []netip.AddrPort
	// Reflexive maps each STUN server to the address it saw this socket
	// at.
	Reflexive map[netip.AddrPort]netip.AddrPort
	// Relay is this host's relayed address; zero without an allocation.
	Relay netip.AddrPort
	// RelayServer is the TURN URL the allocation is on.
	RelayServer string
}

// Endpoints are the distinct direct candidates to announce: local
// addresses, then reflexive ones.
func (d *Discovery) Endpoints() []netip.AddrPort {
	out := slices.Clone(d.Local)
	var refl []netip.AddrPort
	for _, a := range d.Reflexive {
		refl = append(refl, a)
	}
	slices.SortFunc(refl, func(a, b netip.AddrPort) int { return a.Compare(b) })
	for _, a := range refl {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// VariesByDestination reports whether STUN servers saw different ports:
// the NAT maps per destination, and reflexive addresses are no use to
// peers.
func (d *Discovery) VariesByDestination() bool {
	var first netip.AddrPort
	for _, a := range d.Reflexive {
		if !first.IsValid() {
			first = a
		} else if a != first {
			return true
		}
	}
	return false
}

// peerEndpoint is the endpoint WireGuard holds for a peer.
type peerEndpoint struct {
	key      wgcfg.Key
	path     atomic.Pointer[sendPath]
	lastSend atomic.Int64 // unix nanoseconds of the last Send
	// lastRecv: unix nanoseconds of the last WireGuard packet that came
	// from the direct path in use (traffic proves the path works as well
	// as a pong, and keeps working when a busy socket delays pongs).
	lastRecv atomic.Int64
	// lastInit is the last handshake initiation sent while the peer had no
	// path, replayed once one appears.
	initMu   sync.Mutex
	lastInit []byte // guarded by initMu
	initAt   time.Time
	hasInit  atomic.Bool // lastInit != nil, for Send's fast path
	// initSent: unix nanoseconds of the last handshake initiation
	// WireGuard sent, 0 once a session is up or the peer's initiation was
	// answered.
	initSent atomic.Int64
	// crossDrops: when the last CrossDropMax initiations of the peer's
	// were dropped for crossing this host's; guarded by initMu.
	crossDrops []time.Time
	// initPassed: unix nanoseconds of the last initiation of the peer's
	// handed to WireGuard, 0 once answered; holdUntil: when to send an
	// initiation held back for crossing it (0: none held).
	initPassed atomic.Int64
	holdUntil  atomic.Int64
}

type sendPath struct {
	addr  netip.AddrPort
	relay bool
	ep    conn.Endpoint // direct only
	// verified: the relay, or a direct address that answered a probe
	// (not a first guess).
	verified bool
}

var _ conn.Endpoint = (*peerEndpoint)(nil)

func (e *peerEndpoint) ClearSrc()           {}
func (e *peerEndpoint) SrcToString() string { return "" }
func (e *peerEndpoint) DstToString() string {
	if p := e.path.Load(); p != nil {
		return p.addr.String()
	}
	return EndpointString(e.key)
}
func (e *peerEndpoint) DstToBytes() []byte { return e.key[:] }
func (e *peerEndpoint) DstIP() netip.Addr {
	if p := e.path.Load(); p != nil {
		return p.addr.Addr()
	}
	return netip.Addr{}
}
func (e *peerEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

type initSource struct {
	from  netip.AddrPort
	relay bool
	at    time.Time
}

// WireGuard message sizes and types this bind looks at.
const (
	wgInitiation   = 1
	wgResponse     = 2
	wgTransport    = 4
	wgInitiationSz = 148
	wgResponseSz   = 92
)

func isWG(b []byte, typ byte) bool {
	return len(b) >= 4 && b[0] == typ && b[1]|b[2]|b[3] == 0
}

// noteInit remembers where a handshake initiation came from, and reports
// whether WireGuard is to see pkt: false for an initiation that crosses
// this host's own and loses the tie (see dropCrossed).
func (c *Conn) noteInit(pkt []byte, from netip.AddrPort, relay bool) bool {
	if len(pkt) != wgInitiationSz || !isWG(pkt, wgInitiation) {
		return true
	}
	now := time.Now()
	if c.crossed(pkt, now) {
		return false
	}
	idx := binary.LittleEndian.Uint32(pkt[4:8])
	c.initMu.Lock()
	defer c.initMu.Unlock()
	if len(c.initSrc) >= 4096 {
		for k, v := range c.initSrc {
			if now.Sub(v.at) > 5*time.Second {
				delete(c.initSrc, k)
			}
		}
		if len(c.initSrc) >= 4096 {
			clear(c.initSrc)
		}
	}
	c.initSrc[idx] = initSource{from: from, relay: relay, at: now}
	return true
}

// crossed reports whether initiation pkt, arriving at now, crosses the
// initiation this host sent to the same peer and is to be dropped; one
// that passes is noted, for Send to hold back an initiation of this
// host's that would cross it.
func (c *Conn) crossed(pkt []byte, now time.Time) bool {
	if c.opener == nil {
		return false // a bare Conn of a test
	}
	k, ok := c.opener.sender(pkt)
	if !ok {
		return false
	}
	c.epMu.Lock()
	pe := c.eps[k]
	c.epMu.Unlock()
	if pe == nil {
		// WireGuard may learn the peer before it takes this initiation
		// from its queue: note it for Send.
		c.initMu.Lock()
		if len(c.passed) >= 4096 {
			for pk, at := range c.passed {
				if now.Sub(at) >= CrossWindow {
					delete(c.passed, pk)
				}
			}
			if len(c.passed) >= 4096 {
				clear(c.passed)
			}
		}
		c.passed[k] = now
		c.initMu.Unlock()
		return false
	}
	pe.initMu.Lock()
	drop := dropCrossed(wgcfg.Key(c.pubKey), k, unixTime(pe.initSent.Load()), pe.crossDrops, now)
	if drop {
		pe.crossDrops = append(pe.crossDrops, now)
		if len(pe.crossDrops) > CrossDropMax {
			pe.crossDrops = pe.crossDrops[1:]
		}
	}
	pe.initMu.Unlock()
	if !drop {
		pe.initPassed.Store(now.UnixNano())
		return false
	}
	c.log.Debug("dropped a handshake initiation crossing this host's", "peer", k.String())
	return true
}

// initPassed is when an unanswered initiation of pe's peer was last
// handed to WireGuard (zero: none), also one handed over before the peer
// had an endpoint.
func (c *Conn) initPassed(pe *peerEndpoint) time.Time {
	c.initMu.Lock()
	at, ok := c.passed[pe.key]
	delete(c.passed, pe.key)
	c.initMu.Unlock()
	if p := unixTime(pe.initPassed.Load()); !ok || p.After(at) {
		return p
	}
	pe.initPassed.CompareAndSwap(0, at.UnixNano())
	return at
}

// unixTime is the time of ns nanoseconds since the epoch; zero for 0.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// responsePath returns where to send a handshake response: back to the
// source of the initiation it answers.
func (c *Conn) responsePath(b []byte) (*sendPath, bool) {
	if len(b) != wgResponseSz || !isWG(b, wgResponse) {
		return nil, false
	}
	idx := binary.LittleEndian.Uint32(b[8:12])
	c.initMu.Lock()
	src, ok := c.initSrc[idx]
	delete(c.initSrc, idx)
	c.initMu.Unlock()
	if !ok || time.Since(src.at) > 5*time.Second {
		return nil, false
	}
	p := &sendPath{addr: src.from, relay: src.relay, verified: true}
	if !src.relay {
		p.ep = stdEndpoint(src.from)
	}
	return p, true
}

// inbound is a packet for the loop.
type inbound struct {
	pkt      []byte
	from     netip.AddrPort
	viaRelay bool
}

// Conn is the bind. New starts its loop; Shutdown stops it.
type Conn struct {
	cfg     Config
	log     *slog.Logger
	std     conn.Bind
	pubKey  [32]byte
	privKey [32]byte

	port    atomic.Uint32 // bound port; 0 while closed
	servers atomic.Pointer[map[netip.AddrPort]bool]
	// direct maps the direct path in use of each peer to its endpoint,
	// for the receive path to mark traffic; written by the loop.
	direct atomic.Pointer[map[netip.AddrPort]*peerEndpoint]

	epMu sync.Mutex
	eps  map[wgcfg.Key]*peerEndpoint // guarded by epMu

	// initMu guards initSrc: where recent handshake initiations came
	// from, by the sender index they carry, so the response goes back the
	// way the initiation came even when no path to that peer is known
	// yet.
	initMu  sync.Mutex
	initSrc map[uint32]initSource
	// passed: when an initiation of a peer WireGuard had no endpoint for
	// yet was handed over (see crossed); guarded by initMu.
	passed map[wgcfg.Key]time.Time
	// opener finds the sender of a handshake initiation.
	opener *initOpener

	discoIn chan inbound
	stunIn  chan inbound
	events  chan func(*loopState)
	relayIn chan inbound
	changed chan struct{}
	relay   *relayMgr
	openCh  chan struct{} // a new socket was opened
	// sockMu guards sockDone, closed by Close to end the receive functions
	// of the socket Open made.
	sockMu   sync.Mutex
	sockDone chan struct{}
	closing  chan struct{}
	loopDone chan struct{}
	bufPool  sync.Pool
}

var _ conn.Bind = (*Conn)(nil)

// New returns a bind; WireGuard opens it.
func New(cfg Config) *Conn {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Std == nil {
		cfg.Std = NewUDP()
	}
	if cfg.LocalAddrs == nil {
		exclude := cfg.Exclude
		cfg.LocalAddrs = func() []netip.Addr {
			addrs, _ := endpoints.Addrs(exclude...)
			return addrs
		}
	}
	c := &Conn{
		cfg: cfg, log: cfg.Logger.With("component", "bind"), std: cfg.Std,
		eps:      map[wgcfg.Key]*peerEndpoint{},
		initSrc:  map[uint32]initSource{},
		passed:   map[wgcfg.Key]time.Time{},
		discoIn:  make(chan inbound, 256),
		stunIn:   make(chan inbound, 64),
		events:   make(chan func(*loopState), 16),
		relayIn:  make(chan inbound, 1024),
		changed:  make(chan struct{}, 1),
		openCh:   make(chan struct{}, 1),
		closing:  make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	c.privKey = cfg.PrivateKey
	c.pubKey = cfg.PrivateKey.Public()
	c.opener = newInitOpener(c.privKey, c.pubKey)
	c.bufPool.New = func() any { b := make([]byte, 65536); return &b }
	empty := map[netip.AddrPort]bool{}
	c.servers.Store(&empty)
	noDirect := map[netip.AddrPort]*peerEndpoint{}
	c.direct.Store(&noDirect)
	c.relay = newRelayMgr(c)
	go c.run()
	return c
}

// Changed signals (coalesced) that Discovery changed: announce it.
func (c *Conn) Changed() <-chan struct{} { return c.changed }

func (c *Conn) signalChanged() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Shutdown stops the loop and the relay; WireGuard closes the socket.
func (c *Conn) Shutdown() {
	select {
	case <-c.closing:
		return
	default:
	}
	close(c.closing)
	<-c.loopDone
	c.relay.stop()
}

// Open implements conn.Bind.
func (c *Conn) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := c.std.Open(port)
	if err != nil {
		return nil, 0, err
	}
	c.port.Store(uint32(actual))
	done := make(chan struct{})
	c.sockMu.Lock()
	c.sockDone = done
	c.sockMu.Unlock()
	out := make([]conn.ReceiveFunc, 0, len(fns)+1)
	for _, fn := range fns {
		out = append(out, c.wrapReceive(fn))
	}
	out = append(out, func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return c.receiveRelay(done, packets, sizes, eps)
	})
	select {
	case c.openCh <- struct{}{}:
	default:
	}
	return out, actual, nil
}

// Close implements conn.Bind.
func (c *Conn) Close() error {
	c.port.Store(0)
	c.sockMu.Lock()
	if c.sockDone != nil {
		close(c.sockDone)
		c.sockDone = nil
	}
	c.sockMu.Unlock()
	return c.std.Close()
}

// SetMark implements conn.Bind.
func (c *Conn) SetMark(mark uint32) error { return c.std.SetMark(mark) }

// BatchSize implements conn.Bind.
func (c *Conn) BatchSize() int { return c.std.BatchSize() }

// ParseEndpoint implements conn.Bind: "peer:KEYHEX" is a peer whose path
// this bind chooses; anything else is a plain address.
func (c *Conn) ParseEndpoint(s string) (conn.Endpoint, error) {
	if h, ok := strings.CutPrefix(s, EndpointPrefix); ok {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("bind: bad peer endpoint %q", s)
		}
		return c.endpoint(wgcfg.Key(b)), nil
	}
	return c.std.ParseEndpoint(s)
}

func (c *Conn) endpoint(k wgcfg.Key) *peerEndpoint {
	c.epMu.Lock()
	defer c.epMu.Unlock()
	e, ok := c.eps[k]
	if !ok {
		e = &peerEndpoint{key: k}
		c.eps[k] = e
	}
	return e
}

// Send implements conn.Bind.
func (c *Conn) Send(bufs [][]byte, ep conn.Endpoint) error {
	pe, ok := ep.(*peerEndpoint)
	if !ok {
		return c.std.Send(bufs, ep)
	}
	pe.lastSend.Store(time.Now().UnixNano())
	// Keep the last handshake initiation until a session is up (the first
	// transport message goes out) or the peer's own initiation is answered,
	// to send again as soon as the peer can take it: the peer may not have
	// known this host yet (a new peer reaches the others' maps a moment
	// after its first handshake), or no path may have worked. Otherwise
	// WireGuard retries only after 5 s.
	held := false
	for _, b := range bufs {
		if len(b) < 4 || b[1]|b[2]|b[3] != 0 {
			continue
		}
		switch b[0] {
		case wgInitiation:
			now := time.Now()
			pe.initMu.Lock()
			pe.lastInit, pe.initAt = slices.Clone(b), now
			pe.hasInit.Store(true)
			pe.initMu.Unlock()
			if len(bufs) == 1 && holdCrossing(wgcfg.Key(c.pubKey), pe.key, c.initPassed(pe), now) {
				// WireGuard is about to answer the peer's initiation; this
				// one goes out later unless that answer does.
				pe.holdUntil.Store(now.Add(ResendAfter).UnixNano())
				held = true
			} else {
				pe.initSent.Store(now.UnixNano())
			}
		case wgTransport, wgResponse:
			pe.initSent.Store(0)
			pe.initPassed.Store(0)
			pe.holdUntil.Store(0)
			if b[0] == wgResponse {
				c.initMu.Lock()
				delete(c.passed, pe.key)
				c.initMu.Unlock()
			}
			// A session is up, or this host just answered the peer's own
			// initiation: sending ours again would cross it, and each side
			// would drop the other's response.
			if pe.hasInit.Load() {
				pe.initMu.Lock()
				pe.lastInit = nil
				pe.hasInit.Store(false)
				pe.initMu.Unlock()
			}
		}
	}
	if held {
		return nil
	}
	if len(bufs) == 1 {
		// A handshake response goes back the way its initiation came: the
		// path this host would choose may not be known to work yet.
		if rp, ok := c.responsePath(bufs[0]); ok {
			return c.sendOn(bufs, rp)
		}
	}
	p := pe.path.Load()
	return c.sendOn(bufs, p)
}

// sendOn writes bufs on path p (nil: dropped, no path yet).
func (c *Conn) sendOn(bufs [][]byte, p *sendPath) error {
	if p == nil {
		return nil
	}
	if p.relay {
		return c.relay.send(bufs, p.addr)
	}
	return c.std.Send(bufs, p.ep)
}

// sendDirect writes one packet from the socket.
func (c *Conn) sendDirect(pkt []byte, to netip.AddrPort) error {
	if c.port.Load() == 0 {
		return net.ErrClosed
	}
	return c.std.Send([][]byte{pkt}, &conn.StdNetEndpoint{AddrPort: to})
}

// wrapReceive takes disco, STUN and TURN packets out of a batch before
// WireGuard sees it (their size becomes 0, which WireGuard skips).
func (c *Conn) wrapReceive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := fn(packets, sizes, eps)
			if err != nil || n == 0 {
				return n, err
			}
			kept := 0
			direct := c.direct.Load()
			now := time.Now().UnixNano()
			for i := range n {
				pkt := packets[i][:sizes[i]]
				from := addrOf(eps[i])
				if n, ep, ok := c.unwrapChannelData(packets[i], sizes[i], from); ok {
					sizes[i] = n
					if n > 0 {
						eps[i] = ep
						kept++
					}
					continue
				}
				if c.takeNonWG(pkt, from) {
					sizes[i] = 0
					continue
				}
				if !c.noteInit(pkt, from, false) {
					sizes[i] = 0
					continue
				}
				kept++
				if pe := (*direct)[from]; pe != nil {
					pe.lastRecv.Store(now)
				}
			}
			if kept > 0 {
				return n, nil
			}
		}
	}
}

// takeNonWG hands disco, STUN and TURN packets from from to their
// handlers and reports whether it took pkt.
func (c *Conn) takeNonWG(pkt []byte, from netip.AddrPort) bool {
	if len(pkt) == 0 {
		return false
	}
	if disco.Looks(pkt) {
		select {
		case c.discoIn <- inbound{pkt: slices.Clone(pkt), from: from}:
		default:
		}
		return true
	}
	servers := *c.servers.Load()
	cur := c.relay.cur.Load()
	if len(servers) == 0 && cur == nil && c.relay.allocating.Load() == 0 {
		return false
	}
	if !servers[from] && (cur == nil || cur.server != from) && !c.relay.allocatingOn(from) {
		return false // only STUN and TURN servers send anything but WireGuard and disco
	}
	if stun.IsMessage(pkt) && isBindingSuccess(pkt) {
		// The loop keeps what answers its own requests and hands the rest
		// to the relay client.
		select {
		case c.stunIn <- inbound{pkt: slices.Clone(pkt), from: from}:
		default:
		}
		return true
	}
	c.relay.handleInbound(slices.Clone(pkt), from)
	return true
}

func addrOf(ep conn.Endpoint) netip.AddrPort {
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		return netip.AddrPortFrom(se.Addr().Unmap(), se.Port())
	}
	ap, _ := netip.ParseAddrPort(ep.DstToString())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// receiveRelay hands WireGuard the packets that came through the relay.
func (c *Conn) receiveRelay(done chan struct{}, packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	var in inbound
	select {
	case in = <-c.relayIn:
	case <-done:
		return 0, net.ErrClosed
	case <-c.closing:
		return 0, net.ErrClosed
	}
	n := 0
	for {
		sizes[n] = copy(packets[n], in.pkt)
		eps[n] = &conn.StdNetEndpoint{AddrPort: in.from}
		n++
		if n == len(packets) {
			return n, nil
		}
		select {
		case in = <-c.relayIn:
		default:
			return n, nil
		}
	}
}

// SetPeers replaces the peers and their candidates; it returns once every
// peer has a path (if it can have one), so WireGuard's first handshake
// goes somewhere. No address inside exclude is ever a path, learned or
// announced, nor announced as this host's: those are the overlay and the
// subnets routed into the mesh (a probe there would travel inside the
// tunnels it is meant to find a path for) and a gateway's own LAN.
func (c *Conn) SetPeers(peers []PeerConfig, exclude []netip.Prefix) {
	done := make(chan struct{})
	c.do(func(s *loopState) {
		s.exclude, s.adv = exclude, nil
		s.setPeers(peers)
		close(done)
	})
	select {
	case <-done:
	case <-c.closing:
	}
}

// SetSTUNServers sets the STUN servers the socket learns its reflexive
// address from.
func (c *Conn) SetSTUNServers(servers []netip.AddrPort) {
	c.do(func(s *loopState) { s.setSTUN(servers) })
}

// SetRelays hands the relay manager the relays and credentials to use.
func (c *Conn) SetRelays(cfg api.RelayConfig) { c.relay.setConfig(cfg) }

// LastSend is when WireGuard last sent to the peer with key k (zero:
// never).
func (c *Conn) LastSend(k wgcfg.Key) time.Time {
	c.epMu.Lock()
	e := c.eps[k]
	c.epMu.Unlock()
	if e == nil {
		return time.Time{}
	}
	if ns := e.lastSend.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Paths reports the path in use to every peer.
func (c *Conn) Paths() map[wgcfg.Key]PathStatus {
	out := map[wgcfg.Key]PathStatus{}
	c.query(func(s *loopState) {
		for k, p := range s.peers {
			if p.paths.cur == nil {
				out[k] = PathStatus{}
				continue
			}
			ps := PathStatus{Path: PathDirect, Addr: p.paths.cur.addr, RTT: p.paths.cur.rtt}
			if p.paths.cur.relay {
				ps.Path = PathRelay
			}
			out[k] = ps
		}
	})
	return out
}

// Discovery reports what this host knows of its own reachability.
func (c *Conn) Discovery() Discovery {
	var d Discovery
	c.query(func(s *loopState) { d = s.discovery() })
	return d
}

// PingResult is the answer to one Ping.
type PingResult struct {
	Path string
	Addr netip.AddrPort
	RTT  time.Duration
}

// Ping probes every candidate of a peer at once and returns the first
// answer (which path answered, and the round-trip time).
func (c *Conn) Ping(ctx context.Context, key wgcfg.Key) (PingResult, error) {
	ch := make(chan PingResult, 1)
	var err error
	c.query(func(s *loopState) { err = s.userPing(key, ch) })
	if err != nil {
		return PingResult{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return PingResult{}, fmt.Errorf("no answer from the peer on any path: %w", ctx.Err())
	case <-c.closing:
		return PingResult{}, net.ErrClosed
	}
}

// ErrUnknownPeer is returned for a key the bind has no peer for.
var ErrUnknownPeer = errors.New("no such peer")

func (c *Conn) do(f func(*loopState)) {
	select {
	case c.events <- f:
	case <-c.closing:
	}
}

func (c *Conn) query(f func(*loopState)) {
	done := make(chan struct{})
	c.do(func(s *loopState) { f(s); close(done) })
	select {
	case <-done:
	case <-c.closing:
	}
}

package bind

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/pion/transport/v4/stdnet"
	"github.com/pion/turn/v4"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/endpoints"
	"github.com/meshd/meshd/pkg/api"
)

// Relay timing: an allocation attempt over UDP gets AllocateUDPWithin,
// over TLS AllocateTLSWithin; a credential is renewed RenewBefore its
// expiry.
const (
	AllocateUDPWithin = 1500 * time.Millisecond
	AllocateTLSWithin = 3 * time.Second
	// TLSAfter is how long UDP is tried alone before TLS joins in.
	TLSAfter = 300 * time.Millisecond
	// PreferWithin is how long a relay earlier in the coordinators' order
	// may take after the first one answered, and still be chosen.
	PreferWithin = 250 * time.Millisecond
	RenewBefore  = 5 * time.Minute
)

// relayURL is one parsed TURN URL.
type relayURL struct {
	raw      string
	host     string
	hostPort string
	tls      bool
	tcp      bool
	username string
	password string
	pinned   bool
}

func parseRelayURL(s api.RelayServer) (relayURL, error) {
	r := relayURL{raw: s.URL, username: s.Username, password: s.Password, pinned: s.Pinned}
	scheme, rest, ok := strings.Cut(s.URL, ":")
	if !ok {
		return r, fmt.Errorf("relay url %q: no scheme", s.URL)
	}
	hp, query, _ := strings.Cut(rest, "?")
	hp = strings.TrimPrefix(hp, "//")
	q, _ := url.ParseQuery(query)
	switch scheme {
	case "turn":
		r.tcp = q.Get("transport") == "tcp"
	case "turns":
		r.tls, r.tcp = true, true
	default:
		return r, fmt.Errorf("relay url %q: scheme %q is not turn or turns", s.URL, scheme)
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		port = "3478"
		if r.tls {
			port = "5349"
		}
		host = hp
	}
	r.host, r.hostPort = host, net.JoinHostPort(host, port)
	return r, nil
}

// allocation is one TURN allocation in use.
type allocation struct {
	url    relayURL
	server netip.AddrPort // the server's UDP address (UDP allocations)
	client *turn.Client
	rconn  net.PacketConn
	tcp    net.Conn // TURN over TCP/TLS
	addr   netip.AddrPort
	dead   atomic.Bool
	done   chan struct{} // closed when the reader stops

	// serverEP is server for the socket's sends; chans the channels the
	// client bound (UDP allocations; chandata.go).
	serverEP conn.Endpoint
	chanMu   sync.Mutex // serializes writers of chans
	chans    atomic.Pointer[chanTable]
}

func (a *allocation) close() {
	if a.rconn != nil {
		a.rconn.Close()
	}
	if a.client != nil {
		a.client.Close()
	}
	if a.tcp != nil {
		a.tcp.Close()
	}
}

// relayMgr keeps one TURN allocation up for the Conn: on a UDP TURN
// server through the shared socket when UDP works, over TLS when it does
// not. Its goroutine is started by newRelayMgr and stopped by stop.
type relayMgr struct {
	c *Conn

	cur atomic.Pointer[allocation]

	mu      sync.Mutex
	cfg     api.RelayConfig         // guarded by mu
	permits []netip.Addr            // guarded by mu: relay IPs to permit
	pending map[string]*turn.Client // guarded by mu: UDP clients by server, while allocating
	// allocating counts the entries of pending, so the receive path looks
	// there only while an allocation is under way.
	allocating atomic.Int32

	chans    chanState
	chanPool sync.Pool // *chanBufs
	// fastSent and fastRecv count packets the fast path carried.
	fastSent, fastRecv atomic.Uint64

	kick    chan struct{}
	discoQ  chan outPkt
	stopped chan struct{}
	done    chan struct{}
}

type outPkt struct {
	pkt []byte
	to  netip.AddrPort
}

func newRelayMgr(c *Conn) *relayMgr {
	m := &relayMgr{c: c, kick: make(chan struct{}, 1), discoQ: make(chan outPkt, 256),
		stopped: make(chan struct{}), done: make(chan struct{}), pending: map[string]*turn.Client{}}
	m.chanPool.New = func() any { return &chanBufs{} }
	go m.run()
	return m
}

func (m *relayMgr) stop() {
	close(m.stopped)
	<-m.done
}

func (m *relayMgr) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *relayMgr) setConfig(cfg api.RelayConfig) {
	m.mu.Lock()
	m.cfg = cfg
	m.mu.Unlock()
	m.poke()
}

func (m *relayMgr) permit(ips []netip.Addr) {
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	m.mu.Lock()
	changed := !slices.Equal(ips, m.permits)
	m.permits = ips
	m.mu.Unlock()
	if changed {
		m.poke()
	}
}

// networkChanged drops a UDP allocation: it rode the old address.
func (m *relayMgr) networkChanged() {
	if a := m.cur.Load(); a != nil && !a.url.tcp {
		a.dead.Store(true)
	}
	m.poke()
}

// send writes WireGuard packets to a peer's relayed address.
func (m *relayMgr) send(bufs [][]byte, to netip.AddrPort) error {
	a := m.cur.Load()
	if a == nil || a.dead.Load() {
		return nil // dropped; the path moves once the loop sees it
	}
	if a.server.IsValid() {
		if b := a.channelTo(to, time.Now()); b != nil {
			return m.sendChannelData(a, b, bufs)
		}
	}
	ua := net.UDPAddrFromAddrPort(to)
	for _, b := range bufs {
		if _, err := a.rconn.WriteTo(b, ua); err != nil {
			return err
		}
	}
	return nil
}

// sendDisco queues a probe for the relay (WriteTo may block on a
// permission, which the loop must not).
func (m *relayMgr) sendDisco(pkt []byte, to netip.AddrPort) {
	select {
	case m.discoQ <- outPkt{pkt, to}:
	default:
	}
}

// allocatingOn reports whether a UDP allocation on server is under way.
func (m *relayMgr) allocatingOn(server netip.AddrPort) bool {
	if m.allocating.Load() == 0 {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending[server.String()] != nil
}

// handleInbound passes a packet from a UDP TURN server to its client.
func (m *relayMgr) handleInbound(pkt []byte, from netip.AddrPort) {
	var cl *turn.Client
	if a := m.cur.Load(); a != nil && a.server == from {
		cl = a.client
		m.noteChannelBound(pkt, from, a)
	} else {
		m.mu.Lock()
		cl = m.pending[from.String()]
		m.mu.Unlock()
	}
	if cl != nil {
		cl.HandleInbound(pkt, net.UDPAddrFromAddrPort(from))
	}
}

func (m *relayMgr) run() {
	defer close(m.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	go m.discoWriter()
	backoff := time.Duration(0)
	var nextTry time.Time
	var permitted []netip.Addr
	for {
		select {
		case <-m.stopped:
			if a := m.cur.Swap(nil); a != nil {
				a.close()
			}
			return
		case <-m.kick:
		case <-tick.C:
		}
		m.mu.Lock()
		cfg, permits := m.cfg, slices.Clone(m.permits)
		m.mu.Unlock()
		a := m.cur.Load()
		now := time.Now()
		renew := a != nil && !cfg.Expires.IsZero() && a.url.username != usernameFor(cfg, a.url.raw) && time.Until(cfg.Expires) > RenewBefore && credExpiring(a.url.username, now)
		if a != nil && (a.dead.Load() || renew) {
			m.cur.Store(nil)
			a.close()
			m.c.do(func(s *loopState) { s.setRelay(netip.AddrPort{}, "", nil) })
			a, permitted = nil, nil
		}
		if a == nil && len(cfg.Servers) > 0 && m.c.port.Load() != 0 && now.After(nextTry) {
			na, err := m.allocate(cfg)
			if err != nil {
				backoff = min(max(2*backoff, time.Second), 10*time.Second)
				nextTry = time.Now().Add(backoff)
				m.c.log.Warn("no relay allocation", "err", err, "retry_in", backoff)
				continue
			}
			backoff = 0
			a = na
			m.cur.Store(a)
			go m.reader(a)
			var udp []netip.AddrPort
			if a.server.IsValid() {
				udp = []netip.AddrPort{a.server}
			}
			m.c.log.Info("relay allocation", "server", a.url.raw, "relayed", a.addr)
			addr, raw := a.addr, a.url.raw
			m.c.do(func(s *loopState) { s.setRelay(addr, raw, udp) })
		}
		if a != nil && !slices.Equal(permits, permitted) && len(permits) > 0 {
			addrs := make([]net.Addr, 0, len(permits))
			for _, ip := range permits {
				addrs = append(addrs, &net.UDPAddr{IP: ip.AsSlice()})
			}
			if err := a.client.CreatePermission(addrs...); err != nil {
				m.c.log.Debug("relay permissions", "err", err)
			} else {
				permitted = permits
			}
		}
	}
}

func usernameFor(cfg api.RelayConfig, url string) string {
	for _, s := range cfg.Servers {
		if s.URL == url {
			return s.Username
		}
	}
	return ""
}

// credExpiring reads the expiry of a TURN REST username.
func credExpiring(username string, now time.Time) bool {
	var exp int64
	if _, err := fmt.Sscanf(username, "%d:", &exp); err != nil {
		return false
	}
	return time.Unix(exp, 0).Sub(now) < RenewBefore
}

func (m *relayMgr) discoWriter() {
	for {
		select {
		case <-m.stopped:
			return
		case o := <-m.discoQ:
			if a := m.cur.Load(); a != nil && !a.dead.Load() {
				a.rconn.WriteTo(o.pkt, net.UDPAddrFromAddrPort(o.to))
			}
		}
	}
}

// reader moves relayed packets to the Conn until the allocation ends.
func (m *relayMgr) reader(a *allocation) {
	defer close(a.done)
	for {
		bp := m.c.bufPool.Get().(*[]byte)
		n, from, err := a.rconn.ReadFrom(*bp)
		if err != nil {
			m.c.bufPool.Put(bp)
			if !a.dead.Swap(true) {
				m.c.log.Info("relay allocation ended", "err", err)
			}
			m.poke()
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			m.c.bufPool.Put(bp)
			continue
		}
		ap := ua.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		pkt := slices.Clone((*bp)[:n])
		m.c.bufPool.Put(bp)
		in := inbound{pkt: pkt, from: ap, viaRelay: true}
		if disco.Looks(pkt) {
			select {
			case m.c.discoIn <- in:
			default:
			}
			continue
		}
		if !m.c.noteInit(pkt, ap, true) {
			continue
		}
		select {
		case m.c.relayIn <- in:
		case <-m.stopped:
			return
		}
	}
}

// allocate tries the UDP servers at once, then the TCP/TLS ones.
func (m *relayMgr) allocate(cfg api.RelayConfig) (*allocation, error) {
	var udp, tcp []relayURL
	for _, s := range cfg.Servers {
		u, err := parseRelayURL(s)
		if err != nil {
			continue
		}
		if u.tcp {
			tcp = append(tcp, u)
		} else {
			udp = append(udp, u)
		}
	}
	// UDP first; TLS starts TLSAfter later in parallel (UDP may be
	// blocked, and its attempts then only time out). A UDP allocation that
	// comes before the TLS one wins.
	type res struct {
		a   *allocation
		err error
	}
	udpCh, tcpCh := make(chan res, 1), make(chan res, 1)
	cancelTCP := make(chan struct{})
	if len(udp) > 0 {
		go func() {
			a, err := m.race(udp, AllocateUDPWithin, m.allocateUDP)
			udpCh <- res{a, err}
		}()
	} else {
		udpCh <- res{err: errors.New("no UDP relay")}
	}
	if len(tcp) > 0 {
		go func() {
			select {
			case <-time.After(TLSAfter):
			case <-cancelTCP:
				tcpCh <- res{err: errors.New("not needed")}
				return
			}
			a, err := m.race(tcp, AllocateTLSWithin, m.allocateTCP)
			tcpCh <- res{a, err}
		}()
	} else {
		tcpCh <- res{err: errors.New("no TCP relay")}
	}
	var errs []error
	var u, t *res
	for u == nil || t == nil {
		select {
		case r := <-udpCh:
			u = &r
			if r.err == nil {
				close(cancelTCP)
				if t == nil {
					go func() {
						if rt := <-tcpCh; rt.a != nil {
							rt.a.close()
						}
					}()
				}
				return r.a, nil
			}
			errs = append(errs, r.err)
		case r := <-tcpCh:
			t = &r
			if r.err == nil {
				if u == nil {
					// TLS first: UDP may still answer, but it was slower
					// than a TLS handshake, so UDP is most likely blocked.
					go func() {
						if ru := <-udpCh; ru.a != nil {
							ru.a.close()
						}
					}()
				}
				return r.a, nil
			}
			errs = append(errs, r.err)
		}
	}
	return nil, errors.Join(errs...)
}

// race runs fn on every url at once. urls come in the coordinators' order
// of preference (the peers of a vnet share it, so they meet on one relay):
// the first allocation wins unless one earlier in that order follows
// within PreferWithin.
func (m *relayMgr) race(urls []relayURL, within time.Duration, fn func(context.Context, relayURL) (*allocation, error)) (*allocation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	type res struct {
		i   int
		a   *allocation
		err error
	}
	ch := make(chan res, len(urls))
	for i, u := range urls {
		go func() {
			a, err := fn(ctx, u)
			ch <- res{i, a, err}
		}()
	}
	var won *allocation
	wonAt := len(urls)
	var errs []error
	var grace <-chan time.Time
	pending := len(urls)
	for pending > 0 && wonAt > 0 {
		select {
		case r := <-ch:
			pending--
			switch {
			case r.err != nil:
				errs = append(errs, r.err)
			case r.i < wonAt:
				if won != nil {
					won.close()
				}
				won, wonAt = r.a, r.i
				if grace == nil {
					grace = time.After(PreferWithin)
				}
			default:
				r.a.close()
			}
		case <-grace:
			pending = 0
		}
	}
	cancel()
	// The attempts still running end with ctx; what they allocated anyway
	// is released.
	go func() {
		for range pending {
			if r := <-ch; r.a != nil && r.a != won {
				r.a.close()
			}
		}
	}()
	if won != nil {
		return won, nil
	}
	return nil, errors.Join(errs...)
}

// allocateUDP allocates on a UDP TURN server through the shared socket.
func (m *relayMgr) allocateUDP(ctx context.Context, u relayURL) (*allocation, error) {
	server, err := endpoints.Resolve(ctx, u.hostPort)
	if err != nil {
		return nil, err
	}
	std, err := stdnet.NewNet()
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server.String(), TURNServerAddr: server.String(),
		Username: u.username, Password: u.password, RTO: 100 * time.Millisecond,
		Conn: &sockShim{c: m.c}, LoggerFactory: quietLogs{}, Net: anyFamilyNet{std},
	})
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	m.mu.Lock()
	m.pending[server.String()] = cl
	m.allocating.Add(1)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.pending, server.String())
		m.allocating.Add(-1)
		m.mu.Unlock()
	}()
	a := &allocation{url: u, server: server, serverEP: stdEndpoint(server), client: cl, done: make(chan struct{})}
	if err := allocateWithin(ctx, a); err != nil {
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	// The server's packets reach the client through the socket only once
	// the loop knows its address; until then handleInbound finds it in
	// pending.
	return a, nil
}

// allocateTCP allocates over a TCP or TLS connection of its own.
func (m *relayMgr) allocateTCP(ctx context.Context, u relayURL) (*allocation, error) {
	d := &net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", u.hostPort)
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	var c net.Conn = raw
	if u.tls {
		var tc *tls.Config
		if u.pinned && m.c.cfg.TLSConfig != nil {
			tc = m.c.cfg.TLSConfig(u.host) // a coordinator: its certificate is pinned
		}
		if tc == nil {
			tc = &tls.Config{ServerName: u.host}
		}
		tconn := tls.Client(raw, tc)
		if err := tconn.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("relay %s: %w", u.raw, err)
		}
		c = tconn
	}
	std, err := stdnet.NewNet()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: u.hostPort, TURNServerAddr: u.hostPort,
		Username: u.username, Password: u.password,
		Conn: turn.NewSTUNConn(c), LoggerFactory: quietLogs{}, Net: anyFamilyNet{std},
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	if err := cl.Listen(); err != nil {
		cl.Close()
		c.Close()
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	a := &allocation{url: u, client: cl, tcp: c, done: make(chan struct{})}
	if err := allocateWithin(ctx, a); err != nil {
		c.Close()
		return nil, fmt.Errorf("relay %s: %w", u.raw, err)
	}
	return a, nil
}

// allocateWithin runs the client's Allocate, closing the client when ctx
// ends first (pion retransmits for far longer).
func allocateWithin(ctx context.Context, a *allocation) error {
	type res struct {
		pc  net.PacketConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		pc, err := a.client.Allocate()
		ch <- res{pc, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			a.client.Close()
			return r.err
		}
		ua, ok := r.pc.LocalAddr().(*net.UDPAddr)
		if !ok {
			r.pc.Close()
			a.client.Close()
			return errors.New("relayed address is not UDP")
		}
		ap := ua.AddrPort()
		a.rconn, a.addr = r.pc, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		return nil
	case <-ctx.Done():
		a.client.Close()
		if r := <-ch; r.pc != nil {
			r.pc.Close()
		}
		return ctx.Err()
	}
}

// anyFamilyNet is the network the TURN client resolves its server's
// address with: the standard one, except that an address of either family
// resolves (the client asks for "udp4" only, and a relay may be on IPv6).
// The address is an IP literal over UDP (endpoints.Resolve); over TCP it
// is the URL's host, resolved again only to name the server in the
// client's messages (the connection is already made).
type anyFamilyNet struct{ *stdnet.Net }

func (anyFamilyNet) ResolveUDPAddr(_, address string) (*net.UDPAddr, error) {
	return net.ResolveUDPAddr("udp", address)
}

// sockShim lets a TURN client write through the shared socket; what the
// server sends back reaches the client through handleInbound.
type sockShim struct{ c *Conn }

func (s *sockShim) ReadFrom([]byte) (int, net.Addr, error) {
	<-s.c.closing
	return 0, nil, net.ErrClosed
}
func (s *sockShim) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("bind: turn write to %v", addr)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	s.c.relay.noteChannelBind(p, ap)
	if err := s.c.sendDirect(p, ap); err != nil {
		return 0, err
	}
	return len(p), nil
}
func (s *sockShim) Close() error { return nil }
func (s *sockShim) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4zero, Port: int(s.c.port.Load())}
}
func (s *sockShim) SetDeadline(time.Time) error      { return nil }
func (s *sockShim) SetReadDeadline(time.Time) error  { return nil }
func (s *sockShim) SetWriteDeadline(time.Time) error { return nil }

func stdEndpoint(a netip.AddrPort) conn.Endpoint { return &conn.StdNetEndpoint{AddrPort: a} }

func isBindingSuccess(pkt []byte) bool {
	return len(pkt) >= 2 && pkt[0] == 0x01 && pkt[1] == 0x01
}

// quietLogs keeps pion's loggers silent.
type quietLogs struct{}

func (quietLogs) NewLogger(string) logging.LeveledLogger {
	return logging.NewDefaultLeveledLoggerForScope("", logging.LogLevelDisabled, discard{})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// RelayLatency measures the round-trip time to every relay now, by URL, in
// milliseconds (-1: no answer): a STUN binding for a UDP relay (from a
// socket of its own), a TCP connect for the others.
func (c *Conn) RelayLatency(ctx context.Context) map[string]float64 {
	c.relay.mu.Lock()
	servers := slices.Clone(c.relay.cfg.Servers)
	c.relay.mu.Unlock()
	out := map[string]float64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range servers {
		u, err := parseRelayURL(s)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rtt, err := probeRelay(ctx, u)
			ms := -1.0
			if err == nil {
				ms = float64(rtt.Microseconds()) / 1000
			}
			mu.Lock()
			out[u.raw] = ms
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func probeRelay(ctx context.Context, u relayURL) (time.Duration, error) {
	start := time.Now()
	if u.tcp {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.hostPort)
		if err != nil {
			return 0, err
		}
		c.Close()
		return time.Since(start), nil
	}
	server, err := endpoints.Resolve(ctx, u.hostPort)
	if err != nil {
		return 0, err
	}
	pc, err := net.ListenUDP("udp", nil)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	buf := make([]byte, 1500)
	for wait := 200 * time.Millisecond; ctx.Err() == nil; wait *= 2 {
		start = time.Now()
		pc.WriteToUDPAddrPort(req.Raw, server)
		pc.SetReadDeadline(time.Now().Add(wait))
		for {
			n, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			m := &stun.Message{Raw: buf[:n]}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				return time.Since(start), nil
			}
		}
	}
	return 0, ctx.Err()
}

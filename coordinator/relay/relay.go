// Package relay is a coordinator's TURN server (RFC 8656, built on
// pion/turn): it answers STUN binding requests on its UDP socket, as the
// plain STUN server did before it, and relays datagrams for peers that hold
// a TURN REST credential from the coordinators (see Credential) over UDP and
// over a TLS listener for networks that block UDP.
//
// Its limits sit where the untrusted traffic enters:
//
//   - an allocation needs a credential that is unexpired, was made with the
//     cluster's secret, and names a peer that still exists (Config.PeerOK);
//     a peer may hold at most Config.MaxAllocations at once;
//   - a permission (and so any datagram) is granted only towards the
//     relayed addresses of the cluster's relays (Config.PeerIPOK): peers
//     relay to each other's allocations, nowhere else;
//   - each allocation passes at most Config.Bandwidth bytes per second in
//     each direction; the rest is dropped;
//   - a source address may send Config.RequestRate STUN and TURN requests
//     a second over UDP; the rest are dropped unanswered, so the relay
//     cannot be used to reflect a flood at a forged source address;
//   - Revoke ends the allocations of peers that were removed.
package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"

	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/turnmsg"
)

// Realm is the realm the built-in relays announce.
const Realm = "meshd"

// DefaultMaxAllocations is how many allocations one peer may hold on one
// relay at once when Config.MaxAllocations is zero: an agent needs one, and
// a little slack covers a restart whose old allocation has not expired yet.
const DefaultMaxAllocations = 4

// portTries bounds the attempts at a free port in the relay port range.
const portTries = 64

// Config is the internal configuration of a relay.
type Config struct {
	// PacketConn serves STUN and TURN over UDP; optional. The relay owns
	// it from New on.
	PacketConn net.PacketConn
	// Listener serves TURN over a stream (TLS: Accept returns connections
	// whose handshake is done); optional. The relay owns it and closes
	// the connections it accepted when it closes.
	Listener net.Listener
	// RelayIP is the address of the relayed addresses; optional: without
	// it every allocation is refused and the relay answers STUN only.
	RelayIP netip.Addr
	// BindIP is the address relay sockets bind; optional, defaults to
	// RelayIP (set it to the unspecified address when RelayIP is not an
	// address of this host, such as a public address in front of a NAT).
	BindIP netip.Addr
	// PortMin and PortMax bound the ports of relayed addresses; optional,
	// zero: any port the system picks.
	PortMin, PortMax uint16
	// Secret is the TURN REST shared secret; required with RelayIP.
	Secret []byte
	// PeerOK reports whether peerID is a current peer; required with
	// RelayIP. It is called for every authenticated request.
	PeerOK func(peerID string) bool
	// PeerIPOK reports whether an allocation may send to and receive from
	// ip; required with RelayIP.
	PeerIPOK func(ip netip.Addr) bool
	// Bandwidth caps each allocation in bytes per second, in each
	// direction; optional, zero: unlimited.
	Bandwidth int64
	// MaxAllocations caps the allocations one peer holds at once;
	// optional, defaults to DefaultMaxAllocations.
	MaxAllocations int
	// RequestRate and RequestBurst cap the STUN and TURN requests one
	// source address may send over UDP (per second, and at once); those
	// over the cap are dropped unanswered. Optional, default
	// DefaultRequestRate and DefaultRequestBurst; a negative RequestRate
	// lifts the cap.
	RequestRate, RequestBurst int
	Logger                    *slog.Logger     // optional
	Now                       func() time.Time // optional
}

func (c *Config) validate() error {
	if c.PacketConn == nil && c.Listener == nil {
		return errors.New("relay needs a UDP socket or a listener")
	}
	if c.RelayIP.IsValid() && (len(c.Secret) == 0 || c.PeerOK == nil || c.PeerIPOK == nil) {
		return errors.New("a relay that allocates needs a secret, PeerOK and PeerIPOK")
	}
	if (c.PortMin == 0) != (c.PortMax == 0) || c.PortMin > c.PortMax {
		return fmt.Errorf("relay port range %d-%d: give both ends, lowest first", c.PortMin, c.PortMax)
	}
	return nil
}

// Server is a running relay.
type Server struct {
	cfg     Config
	log     *slog.Logger
	turn    *turn.Server
	ln      *trackingListener // nil without a listener
	dropped atomic.Uint64
	// requestsDropped counts STUN and TURN requests over their source's
	// allowance.
	requestsDropped atomic.Uint64

	// fmu guards fast, what the fast path learned; routes is rebuilt
	// from it (fastpath.go).
	fmu       sync.Mutex
	fast      fastState
	routes    atomic.Pointer[map[chanKey]route]
	forwarded atomic.Uint64 // payload bytes the fast path carried

	mu     sync.Mutex
	socks  map[int]*sock  // guarded by mu: relay port -> its socket
	allocs map[string]int // guarded by mu: peer id -> allocations held
	closed bool           // guarded by mu
}

// sock is a relay socket and the peer whose allocation it is ("" until the
// allocation is made).
type sock struct {
	conn *relayConn
	peer string
}

// New starts a relay on cfg's socket and listener; Close stops it.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxAllocations == 0 {
		cfg.MaxAllocations = DefaultMaxAllocations
	}
	if cfg.RequestRate == 0 {
		cfg.RequestRate = DefaultRequestRate
	}
	if cfg.RequestBurst == 0 {
		cfg.RequestBurst = max(DefaultRequestBurst, cfg.RequestRate)
	}
	if !cfg.BindIP.IsValid() {
		cfg.BindIP = cfg.RelayIP
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "relay"),
		socks:  map[int]*sock{},
		allocs: map[string]int{},
		fast:   fastState{clients: map[netip.AddrPort]*clientState{}, pending: map[turnmsg.TxID]pendingMsg{}},
	}
	gen := generator{s}
	sc := turn.ServerConfig{
		Realm:         Realm,
		AuthHandler:   s.authenticate,
		QuotaHandler:  s.quota,
		LoggerFactory: logging.Pion(s.log),
		EventHandler: turn.EventHandler{
			OnAllocationCreated: s.allocated,
			OnAllocationDeleted: s.deallocated,
		},
	}
	if cfg.PacketConn != nil {
		pc := cfg.PacketConn
		if uc, ok := pc.(*net.UDPConn); ok && cfg.RelayIP.IsValid() {
			pc = newFastConn(s, uc) // under the request limit: relayed data is no request
		}
		if cfg.RequestRate >= 0 {
			lim := newRequestLimiter(cfg.RequestRate, cfg.RequestBurst, cfg.Now)
			pc = &limitedPacketConn{PacketConn: pc, lim: lim, dropped: func() { s.requestsDropped.Add(1) }}
		}
		sc.PacketConnConfigs = []turn.PacketConnConfig{{PacketConn: pc, RelayAddressGenerator: gen, PermissionHandler: s.permit}}
	}
	if cfg.Listener != nil {
		s.ln = &trackingListener{Listener: cfg.Listener, conns: map[*trackedConn]struct{}{}}
		sc.ListenerConfigs = []turn.ListenerConfig{{Listener: s.ln, RelayAddressGenerator: gen, PermissionHandler: s.permit}}
	}
	t, err := turn.NewServer(sc)
	if err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	s.turn = t
	return s, nil
}

// Close stops the relay: its socket and listener, every connection and
// every allocation. It is safe to call twice.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	socks := make([]*relayConn, 0, len(s.socks))
	for _, k := range s.socks {
		socks = append(socks, k.conn)
	}
	s.mu.Unlock()
	err := s.turn.Close()
	for _, c := range socks {
		c.Close()
	}
	return err
}

// Dropped is how many bytes the bandwidth cap has dropped so far.
func (s *Server) Dropped() uint64 { return s.dropped.Load() }

// RequestsDropped is how many STUN and TURN requests over their source's
// allowance were dropped so far.
func (s *Server) RequestsDropped() uint64 { return s.requestsDropped.Load() }

// Allocations is how many allocations peerID holds here.
// Forwarded is how many payload bytes went from one allocation of this
// server to another by the fast path.
func (s *Server) Forwarded() uint64 { return s.forwarded.Load() }

func (s *Server) Allocations(peerID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allocs[peerID]
}

// Revoke ends every allocation whose peer keep rejects (a peer that was
// removed) and returns how many it ended.
func (s *Server) Revoke(keep func(peerID string) bool) int {
	s.mu.Lock()
	held := map[string][]*relayConn{}
	for _, k := range s.socks {
		if k.peer != "" {
			held[k.peer] = append(held[k.peer], k.conn)
		}
	}
	s.mu.Unlock()
	n := 0
	for peer, conns := range held {
		if keep(peer) {
			continue
		}
		for _, c := range conns {
			c.Close() // the allocation ends when its socket fails
			n++
		}
		s.log.Info("relay allocations of a removed peer ended", "peer", peer, "count", len(conns))
	}
	return n
}

// authenticate is the TURN AuthHandler: it returns the long-term key of a
// credential that is unexpired and names a current peer. Whether the
// request was signed with the password that belongs to the username (made
// with the secret) is checked by the caller against this key.
func (s *Server) authenticate(username, realm string, src net.Addr) ([]byte, bool) {
	if !s.cfg.RelayIP.IsValid() {
		return nil, false
	}
	exp, peer, err := ParseUsername(username)
	if err != nil {
		s.log.Debug("relay credential refused", "from", src, "username", username, "err", err)
		return nil, false
	}
	if !s.cfg.Now().Before(exp) {
		s.log.Debug("relay credential refused: expired", "from", src, "peer", peer, "expired", exp)
		return nil, false
	}
	if !s.cfg.PeerOK(peer) {
		s.log.Debug("relay credential refused: no such peer", "from", src, "peer", peer)
		return nil, false
	}
	return turn.GenerateAuthKey(username, realm, Password(s.cfg.Secret, username)), true
}

// quota admits an allocation while its peer holds fewer than
// MaxAllocations.
func (s *Server) quota(username, _ string, src net.Addr) bool {
	_, peer, err := ParseUsername(username)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.allocs[peer] >= s.cfg.MaxAllocations {
		s.log.Info("relay allocation refused: quota reached", "peer", peer, "from", src, "held", s.allocs[peer])
		return false
	}
	return true
}

// permit is the PermissionHandler: only the cluster's relayed addresses.
func (s *Server) permit(client net.Addr, peerIP net.IP) bool {
	ip, ok := netip.AddrFromSlice(peerIP)
	if ok && s.cfg.PeerIPOK(ip.Unmap()) {
		return true
	}
	s.log.Debug("relay permission refused: not a relay of this cluster", "client", client, "peer_ip", peerIP)
	return false
}

func (s *Server) allocated(src, _ net.Addr, _, username, _ string, relayAddr net.Addr, _ int) {
	_, peer, _ := ParseUsername(username)
	port := 0
	if ua, ok := relayAddr.(*net.UDPAddr); ok {
		port = ua.Port
	}
	s.mu.Lock()
	if k, ok := s.socks[port]; ok {
		k.peer = peer
	}
	s.allocs[peer]++
	s.mu.Unlock()
	s.log.Debug("relay allocation", "peer", peer, "from", src, "relayed", relayAddr)
}

func (s *Server) deallocated(src, _ net.Addr, _, username, _ string) {
	_, peer, _ := ParseUsername(username)
	s.mu.Lock()
	if s.allocs[peer]--; s.allocs[peer] <= 0 {
		delete(s.allocs, peer)
	}
	s.mu.Unlock()
	s.log.Debug("relay allocation ended", "peer", peer, "from", src)
}

// generator is the RelayAddressGenerator: a UDP socket on BindIP with a
// random port in the range, wrapped in the bandwidth cap, whose relayed
// address is RelayIP with that port.
type generator struct{ s *Server }

var _ turn.RelayAddressGenerator = generator{}

func (g generator) Validate() error { return nil }

func (g generator) AllocatePacketConn(_ string, requested int) (net.PacketConn, net.Addr, error) {
	s := g.s
	if !s.cfg.RelayIP.IsValid() {
		return nil, nil, errors.New("this relay allocates no relayed addresses")
	}
	lo, hi := int(s.cfg.PortMin), int(s.cfg.PortMax)
	var ports []int
	switch {
	case requested != 0:
		if lo != 0 && (requested < lo || requested > hi) {
			return nil, nil, fmt.Errorf("requested relay port %d is outside %d-%d", requested, lo, hi)
		}
		ports = []int{requested}
	case lo == 0:
		ports = []int{0}
	default:
		for range min(portTries, hi-lo+1) {
			ports = append(ports, lo+rand.IntN(hi-lo+1))
		}
	}
	var bind net.IP
	if !s.cfg.BindIP.IsUnspecified() {
		bind = s.cfg.BindIP.AsSlice()
	}
	var err error
	for _, p := range ports {
		var uc *net.UDPConn
		uc, err = net.ListenUDP("udp", &net.UDPAddr{IP: bind, Port: p})
		if err != nil {
			continue
		}
		GrowBuffers(uc)
		port := uc.LocalAddr().(*net.UDPAddr).Port
		c := &relayConn{
			PacketConn: uc,
			in:         newBucket(s.cfg.Bandwidth, s.cfg.Now),
			out:        newBucket(s.cfg.Bandwidth, s.cfg.Now),
			dropped:    &s.dropped,
		}
		c.onClose = func() { s.forget(port, c) }
		s.mu.Lock()
		closed := s.closed
		if !closed {
			s.socks[port] = &sock{conn: c}
		}
		s.mu.Unlock()
		if closed {
			uc.Close()
			return nil, nil, net.ErrClosed
		}
		return c, &net.UDPAddr{IP: s.cfg.RelayIP.AsSlice(), Port: port}, nil
	}
	return nil, nil, fmt.Errorf("bind a relay port: %w", err)
}

func (generator) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("TCP relay allocations (RFC 6062) are not supported")
}

// forget drops a closed relay socket from the table.
func (s *Server) forget(port int, c *relayConn) {
	s.mu.Lock()
	if k, ok := s.socks[port]; ok && k.conn == c {
		delete(s.socks, port)
	}
	s.mu.Unlock()
	s.forgetClient(port)
}

// trackingListener remembers the connections it accepted, so Close can
// end them: the TURN server stops accepting when its listener closes but
// leaves established connections to their clients.
type trackingListener struct {
	net.Listener

	mu     sync.Mutex
	conns  map[*trackedConn]struct{} // guarded by mu
	closed bool                      // guarded by mu
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.conns[tc] = struct{}{}
	}
	l.mu.Unlock()
	if closed {
		c.Close()
		return nil, net.ErrClosed
	}
	return tc, nil
}

// Close stops accepting and closes every accepted connection.
func (l *trackingListener) Close() error {
	l.mu.Lock()
	l.closed = true
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	err := l.Listener.Close()
	for _, c := range conns {
		c.Close()
	}
	return err
}

// Close closes the connection and forgets it. It reports no error: a
// client that went away first makes the TLS close fail, which is no news.
func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.Conn.Close()
	})
	return nil
}

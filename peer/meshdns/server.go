package meshdns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Server answers queries from the table it was last given. Set may be
// called at any time from any goroutine; queries in flight finish with the
// table they started with.
type Server struct {
	table atomic.Pointer[Table]
	log   *slog.Logger
}

// NewServer makes a server with no table yet (it answers SERVFAIL until
// the first Set).
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{log: log.With("component", "dns")}
}

// Set replaces the table every later query is answered from.
func (s *Server) Set(t *Table) { s.table.Store(t) }

// ServeDNS answers one query (dns.Handler). Only this host may ask: a
// query from any other address is refused, so the mesh's names and
// addresses go to no one the network map would not show them to.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var resp *dns.Msg
	if !fromThisHost(w.RemoteAddr(), w.LocalAddr()) {
		resp = new(dns.Msg)
		resp.SetRcode(req, dns.RcodeRefused)
	} else {
		resp = s.table.Load().Answer(req)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(size, int(opt.UDPSize()))
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write answer", "err", err)
	}
}

// fromThisHost reports whether a query came from this host: from loopback,
// or from the address it was sent to (the kernel's source for a local
// destination).
func fromThisHost(remote, local net.Addr) bool {
	r, l := addrOf(remote), addrOf(local)
	return r.IsValid() && (r.IsLoopback() || r == l)
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Listener is the server listening on one address, over UDP and TCP.
type Listener struct {
	addr     netip.AddrPort
	udp, tcp *dns.Server
	wg       sync.WaitGroup
	once     sync.Once
}

// Errors of Listen.
var (
	// ErrPortInUse: another program holds the port on that address (or
	// on every address).
	ErrPortInUse = errors.New("the port is in use by another program")
	// ErrPortDenied: a port below 1024 needs root or CAP_NET_BIND_SERVICE.
	ErrPortDenied = errors.New("binding the port needs root or CAP_NET_BIND_SERVICE")
)

// Listen opens addr over UDP and TCP (both, or neither) and serves them
// until Close. A port another program holds is ErrPortInUse, one this
// process may not bind ErrPortDenied. Port 0 picks
// a free UDP port and the same one for TCP.
func (s *Server) Listen(addr netip.AddrPort) (*Listener, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, listenError(addr, "udp", err)
	}
	if addr.Port() == 0 { // tests: TCP takes the port UDP got
		addr = netip.AddrPortFrom(addr.Addr(), pc.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	}
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		pc.Close()
		return nil, listenError(addr, "tcp", err)
	}
	l := &Listener{addr: addr}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	l.udp = &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: notify}
	l.tcp = &dns.Server{Listener: ln, Handler: s, NotifyStartedFunc: notify,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxTCPQueries: 64,
		IdleTimeout: func() time.Duration { return 8 * time.Second }}
	for _, srv := range []*dns.Server{l.udp, l.tcp} {
		l.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Debug("dns server ended", "err", err)
			}
		})
	}
	// Shutdown before a server has started would leave it serving.
	<-started
	<-started
	return l, nil
}

func listenError(addr netip.AddrPort, network string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen on %s/%s: %w", addr, network, ErrPortInUse)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("listen on %s/%s: %w", addr, network, ErrPortDenied)
	}
	return fmt.Errorf("listen on %s/%s: %w", addr, network, err)
}

// Addr is the address the listener serves.
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Close stops serving, closes both sockets and waits until every query
// being answered is done. It may be called more than once.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.udp.Shutdown()
		l.tcp.Shutdown()
	})
	l.wg.Wait()
	return nil
}

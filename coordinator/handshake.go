package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// A fleet reconnecting at once (10,000 agents after a coordinator restart
// or a network cut) means thousands of TLS handshakes arriving together.
// Run all at once, each a fraction of a millisecond of CPU, they keep
// thousands of goroutines runnable, and Raft's heartbeats wait behind them
// long enough for followers to call elections. handshakeListener completes
// handshakes before the HTTP server sees a connection and lets at most
// Slots do their cryptography at a time; the rest wait, costing no CPU. A
// slot is taken once the client's hello has arrived (a client that
// connects and says nothing holds none) and given up after handshakeHold
// even if the client has not finished (the server's share of the work is
// done by then), so a stalled client cannot hold one.
//
// Fairness between source addresses: one address has at most PerSource
// handshakes under way; its further connections wait for a turn without
// being read (or are closed past PerSourceWaiting), so a flood of hellos
// from one address that then go silent holds at most PerSource slots for
// handshakeHold each, and another address's handshake is not queued behind
// it. Every connection must finish its handshake within Timeout of being
// accepted.
const (
	handshakeSlots   = 8
	handshakeHold    = 50 * time.Millisecond
	handshakeTimeout = 10 * time.Second
)

// listenerLimits bound what a handshakeListener takes on.
type listenerLimits struct {
	Slots     int           // required: handshakes doing their cryptography at once
	PerSource int           // required: handshakes under way per source address
	Timeout   time.Duration // required: from accept to handshake done
	// PerSourceWaiting caps one source's connections that handshake or
	// wait for a turn; a new one past it is closed. Optional: zero means
	// PerSource (none wait).
	PerSourceWaiting int
	// MaxConns and PerSourceConns cap the connections open at once,
	// established ones included (those Accept returned count until they
	// are closed; they are then not *tls.Conn but wrap one); a new one
	// past either is closed at once. Optional: zero means no cap.
	MaxConns, PerSourceConns int
}

// apiLimits are those of the API and TURN-over-TLS listeners: a source's
// surplus handshakes wait (a fleet behind one NAT address reconnecting at
// once gets through, PerSource at a time).
var apiLimits = listenerLimits{Slots: handshakeSlots, PerSource: 8, PerSourceWaiting: 1024, Timeout: handshakeTimeout}

// handshakeListener is a TLS listener that completes handshakes, a bounded
// number at a time and fairly between source addresses, before Accept
// returns the connection.
type handshakeListener struct {
	net.Listener // TCP
	cfg          *tls.Config
	lim          listenerLimits
	slots        chan struct{}
	conns        chan net.Conn
	done         chan struct{}
	ctx          context.Context // canceled by Close: abandons handshakes
	cancel       context.CancelFunc
	closeOnce    sync.Once

	mu      sync.Mutex
	release map[net.Conn]func()    // guarded by mu: the slot each handshaking conn holds
	sources map[netip.Addr]*source // guarded by mu: sources with connections here
	open    int                    // guarded by mu: connections counted against MaxConns
	err     error                  // guarded by mu: why the accept loop ended
}

// source is what one source address holds.
type source struct {
	turns   chan struct{} // handshakes under way (PerSource)
	pending int           // connections handshaking or waiting for a turn
	open    int           // connections counted against PerSourceConns
}

var _ net.Listener = (*handshakeListener)(nil)

func newHandshakeListener(ln net.Listener, cfg *tls.Config, lim listenerLimits) *handshakeListener {
	if lim.PerSourceWaiting < lim.PerSource {
		lim.PerSourceWaiting = lim.PerSource
	}
	l := &handshakeListener{
		Listener: ln, lim: lim, slots: make(chan struct{}, lim.Slots), conns: make(chan net.Conn),
		done: make(chan struct{}), release: map[net.Conn]func(){}, sources: map[netip.Addr]*source{},
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.cfg = cfg.Clone()
	l.cfg.GetConfigForClient = l.takeSlot
	go l.acceptLoop()
	return l
}

// acceptLoop accepts TCP connections and hands each to a handshake.
func (l *handshakeListener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or similar: wait and retry,
				// as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-l.done:
				case <-time.After(backoff):
					continue
				}
			}
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.Close()
			return
		}
		backoff = 0
		src := sourceOf(c)
		s, ok := l.admit(src)
		if !ok {
			c.Close()
			continue
		}
		go l.handshake(c, src, s)
	}
}

func sourceOf(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admit counts a new connection from src against the limits, or refuses it.
func (l *handshakeListener) admit(src netip.Addr) (*source, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sources[src]
	if s == nil {
		s = &source{turns: make(chan struct{}, l.lim.PerSource)}
	}
	if s.pending >= l.lim.PerSourceWaiting ||
		l.lim.MaxConns > 0 && l.open >= l.lim.MaxConns ||
		l.lim.PerSourceConns > 0 && s.open >= l.lim.PerSourceConns {
		return nil, false
	}
	l.sources[src] = s
	s.pending++
	if l.counts() {
		s.open++
		l.open++
	}
	return s, true
}

// counts reports whether open connections are counted (a cap is set).
func (l *handshakeListener) counts() bool { return l.lim.MaxConns > 0 || l.lim.PerSourceConns > 0 }

// finish ends a connection's handshake phase and, if it is closed, its
// count; the source is forgotten when it holds nothing.
func (l *handshakeListener) finish(src netip.Addr, s *source, handshaking, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if handshaking {
		s.pending--
	}
	if closed && l.counts() {
		s.open--
		l.open--
	}
	if s.pending == 0 && s.open == 0 && l.sources[src] == s {
		delete(l.sources, src)
	}
}

// takeSlot runs once the client's hello has arrived: it waits for a slot,
// which the handshake gives back when it ends or after handshakeHold.
func (l *handshakeListener) takeSlot(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	select {
	case l.slots <- struct{}{}:
	case <-hello.Context().Done():
		return nil, hello.Context().Err()
	}
	var once sync.Once
	give := func() { once.Do(func() { <-l.slots }) }
	t := time.AfterFunc(handshakeHold, give)
	l.mu.Lock()
	l.release[hello.Conn] = func() { t.Stop(); give() }
	l.mu.Unlock()
	return nil, nil // the listener's own config
}

func (l *handshakeListener) handshake(c net.Conn, src netip.Addr, s *source) {
	ctx, cancel := context.WithTimeout(l.ctx, l.lim.Timeout)
	defer cancel()
	// Wait for one of the source's turns; until then nothing is read.
	select {
	case s.turns <- struct{}{}:
	case <-ctx.Done():
		c.Close()
		l.finish(src, s, true, true)
		return
	}
	tc := tls.Server(c, l.cfg)
	err := tc.HandshakeContext(ctx)
	<-s.turns
	l.mu.Lock()
	if give, ok := l.release[c]; ok {
		delete(l.release, c)
		give()
	}
	l.mu.Unlock()
	if err != nil {
		c.Close()
		l.finish(src, s, true, true)
		return
	}
	l.finish(src, s, true, false)
	var out net.Conn = tc
	if l.counts() {
		out = &countedConn{Conn: tc, close: func() { l.finish(src, s, false, true) }}
	}
	select {
	case l.conns <- out:
	case <-l.done:
		out.Close()
	}
}

// countedConn gives its place back when it is closed.
type countedConn struct {
	*tls.Conn
	once  sync.Once
	close func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.close)
	return err
}

// Accept returns the next connection whose handshake is complete.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; handshakes under way are abandoned.
func (l *handshakeListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		l.cancel()
		err = l.Listener.Close()
	})
	return err
}

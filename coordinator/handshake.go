package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
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
// handshakeSlots do their cryptography at a time; the rest wait, costing
// no CPU. A slot is taken once the client's hello has arrived (a client
// that connects and says nothing holds none) and given up after
// handshakeHold even if the client has not finished (the server's share of
// the work is done by then), so a stalled client cannot hold one.
const (
	handshakeSlots   = 8
	handshakeHold    = 50 * time.Millisecond
	handshakeTimeout = 10 * time.Second
)

// handshakeListener is a TLS listener that completes handshakes, a bounded
// number at a time, before Accept returns the connection.
type handshakeListener struct {
	net.Listener // TCP
	cfg          *tls.Config
	slots        chan struct{}
	conns        chan net.Conn
	done         chan struct{}
	ctx          context.Context // canceled by Close: abandons handshakes
	cancel       context.CancelFunc
	closeOnce    sync.Once

	mu      sync.Mutex
	release map[net.Conn]func() // guarded by mu: the slot each handshaking conn holds
	err     error               // guarded by mu: why the accept loop ended
}

var _ net.Listener = (*handshakeListener)(nil)

func newHandshakeListener(ln net.Listener, cfg *tls.Config, slots int) *handshakeListener {
	l := &handshakeListener{
		Listener: ln, slots: make(chan struct{}, slots), conns: make(chan net.Conn),
		done: make(chan struct{}), release: map[net.Conn]func(){},
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
		go l.handshake(c)
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

func (l *handshakeListener) handshake(c net.Conn) {
	ctx, cancel := context.WithTimeout(l.ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Server(c, l.cfg)
	err := tc.HandshakeContext(ctx)
	l.mu.Lock()
	if give, ok := l.release[c]; ok {
		delete(l.release, c)
		give()
	}
	l.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		tc.Close()
	}
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

package coordinator

import (
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/tlspin"
)

// stallConn lets the client's hello out and then never delivers the
// server's answer: a client that stops in the middle of its handshake.
type stallConn struct {
	net.Conn
	closed chan struct{}
}

func (c *stallConn) Read([]byte) (int, error) { <-c.closed; return 0, net.ErrClosed }
func (c *stallConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return c.Conn.Close()
}

func TestHandshakeListener(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca := key.APICA()
	cert, err := ca.Issue("c1", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	// GetCertificate runs inside the server's share of the handshake: it
	// counts how many run at once, each taking a moment as the
	// cryptography would.
	var now, most atomic.Int64
	cfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		k := now.Add(1)
		defer now.Add(-1)
		for m := most.Load(); k > m && !most.CompareAndSwap(m, k); m = most.Load() {
		}
		time.Sleep(2 * time.Millisecond) // stands in for the signature's CPU time
		return &cert, nil
	}}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const slots = 2
	l := newHandshakeListener(raw, cfg, listenerLimits{Slots: slots, PerSource: 64, Timeout: handshakeTimeout})
	accepted := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	client := tlspin.ClientConfig(ca.Pin())
	dial := func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", raw.Addr().String(), client)
		if err != nil {
			return err
		}
		return c.Close()
	}

	t.Run("bounded", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for range 32 {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- dial() }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		for range 32 {
			c := <-accepted
			if _, ok := c.(*tls.Conn); !ok {
				t.Fatalf("accepted a %T; want a *tls.Conn", c)
			}
			if !c.(*tls.Conn).ConnectionState().HandshakeComplete {
				t.Fatal("accepted a connection whose handshake is not complete")
			}
			c.Close()
		}
		if m := most.Load(); m > slots || m == 0 {
			t.Fatalf("%d handshakes ran at once; want 1 to %d", m, slots)
		}
	})

	t.Run("silent and stalled clients hold no slot", func(t *testing.T) {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		// Connections that never say hello.
		for range 2 * slots {
			c, err := net.Dial("tcp", raw.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		// Clients that send their hello, then stop.
		for range 2 * slots {
			c, err := net.Dial("tcp", raw.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			sc := &stallConn{Conn: c, closed: make(chan struct{})}
			held = append(held, sc)
			go tls.Client(sc, client).Handshake()
		}
		start := time.Now()
		if err := dial(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("a handshake behind stalled clients took %s; want well under a second (each gives its slot up after %s)", d, handshakeHold)
		}
		(<-accepted).Close()
	})

	l.Close()
	if _, ok := <-accepted; ok {
		t.Fatal("Accept returned a connection after Close")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v; want net.ErrClosed", err)
	}
	waitFor(t, 5*time.Second, "the listener's goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// helloConn counts the client hellos written through it, then stalls like
// stallConn.
type helloConn struct {
	stallConn
	hellos *atomic.Int64
	once   sync.Once
}

func (c *helloConn) Write(p []byte) (int, error) {
	n, err := c.stallConn.Conn.Write(p)
	c.once.Do(func() { c.hellos.Add(1) })
	return n, err
}

// TestHandshakeFairPerSource is the attack of 800 connections from one
// address that send a client hello and go silent: another address's
// handshake must not wait behind them (before the per-source limit it
// took about 800 x 50 ms / 8 slots = 5 s).
func TestHandshakeFairPerSource(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca := key.APICA()
	cert, err := ca.Issue("c1", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newHandshakeListener(raw, &tls.Config{Certificates: []tls.Certificate{cert}}, apiLimits)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	client := tlspin.ClientConfig(ca.Pin())

	const flood = 800
	var hellos atomic.Int64
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range flood {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		hc := &helloConn{stallConn: stallConn{Conn: c, closed: make(chan struct{})}, hellos: &hellos}
		held = append(held, hc)
		go tls.Client(hc, client).Handshake()
	}
	waitFor(t, 10*time.Second, "every flooding client to send its hello", func() bool { return hellos.Load() == flood })

	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	start := time.Now()
	c, err := tls.DialWithDialer(d, "tcp", raw.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	c.Close()
	if took > 500*time.Millisecond {
		t.Fatalf("a handshake from another address behind %d silent hellos took %s; want under 0.5 s", flood, took.Round(time.Millisecond))
	}
	t.Logf("handshake from another address behind %d silent hellos: %s", flood, took.Round(time.Millisecond))
}

package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/meshd/meshd/pkg/logging"
)

// fakeClock is a settable clock for the server.
type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

type testAlloc struct {
	relay net.PacketConn
	addr  *net.UDPAddr
}

func testServer(t *testing.T, clock *fakeClock) (*Server, []byte, string) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("s")
	s, err := New(Config{
		PacketConn: pc, RelayIP: netip.MustParseAddr("127.0.0.1"), Secret: secret,
		PeerOK:   func(string) bool { return true },
		PeerIPOK: func(netip.Addr) bool { return true },
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, secret, pc.LocalAddr().String()
}

func testAllocate(t *testing.T, secret []byte, server, peer string) testAlloc {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	user, pass := Credential(secret, peer, time.Now().Add(time.Hour))
	c, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: server, Conn: conn, Username: user, Password: pass,
		RTO: 100 * time.Millisecond, LoggerFactory: logging.Pion(logging.Discard()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	rc, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close(); c.Close(); conn.Close() })
	return testAlloc{relay: rc, addr: rc.LocalAddr().(*net.UDPAddr)}
}

// exchange sends from a to b until one arrives (the first packets go
// while the client binds its channel) and returns what b read.
func exchange(t *testing.T, a, b testAlloc, msg []byte, within time.Duration) (got []byte, from net.Addr) {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := a.relay.WriteTo(msg, b.addr); err != nil {
			t.Fatal(err)
		}
		b.relay.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, from, err := b.relay.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], msg) {
			return buf[:n], from
		}
	}
	return nil, nil
}

// TestFastPath: between two allocations of one server whose clients have
// bound channels to each other, ChannelData goes straight from one client
// to the other, arrives intact from the sender's relayed address, and is
// charged; a client that never permitted the sender gets nothing; once
// the bindings are past their lifetime the fast path stops and the TURN
// server carries the traffic again.
func TestFastPath(t *testing.T) {
	clock := &fakeClock{}
	s, secret, server := testServer(t, clock)
	a := testAllocate(t, secret, server, "pa")
	b := testAllocate(t, secret, server, "pb")

	// Both sides write, so each permits the other and binds a channel to
	// it (a first, or b's packets would find no permission at a).
	if _, err := a.relay.WriteTo([]byte("hello b"), b.addr); err != nil {
		t.Fatal(err)
	}
	if got, _ := exchange(t, b, a, []byte("hello a"), 3*time.Second); got == nil {
		t.Fatal("b's packet never reached a")
	}
	if got, _ := exchange(t, a, b, []byte("hello b"), 3*time.Second); got == nil {
		t.Fatal("a's packet never reached b")
	}
	// Every message is new, so a copy of an earlier one still queued at b
	// (it went the slow way while the fast path was being set up) is
	// never taken for the one just sent.
	seq := 0
	fresh := func() []byte { seq++; return fmt.Appendf(nil, "fast %d", seq) }
	deadline := time.Now().Add(3 * time.Second)
	for s.Forwarded() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing went by the fast path with channels bound both ways")
		}
		exchange(t, a, b, fresh(), time.Second)
	}
	before := s.Forwarded()
	_, from := exchange(t, a, b, fresh(), time.Second)
	if s.Forwarded() == before {
		t.Fatal("a packet between bound allocations did not go by the fast path")
	}
	if from == nil || from.String() != a.addr.String() {
		t.Fatalf("b read the packet from %v; want a's relayed address %v", from, a.addr)
	}
	// Many datagrams in a row (segmented runs when the kernel coalesces),
	// once what the exchanges left queued is read.
	buf := make([]byte, 2048)
	for {
		b.relay.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := b.relay.ReadFrom(buf); err != nil {
			break
		}
	}
	before = s.Forwarded()
	for i := range 200 {
		msg := bytes.Repeat([]byte{byte(i)}, 1200)
		if _, err := a.relay.WriteTo(msg, b.addr); err != nil {
			t.Fatal(err)
		}
		b.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := b.relay.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("datagram %d: read %d bytes, err %v; want the 1200 bytes sent", i, n, err)
		}
	}
	if got := s.Forwarded() - before; got != 200*1200 {
		t.Fatalf("fast path carried %d bytes of 200 datagrams; want %d", got, 200*1200)
	}

	// e allocates but never writes: it permits nobody, so nothing arrives.
	e := testAllocate(t, secret, server, "pe")
	for range 5 {
		if _, err := a.relay.WriteTo([]byte("unwanted"), e.addr); err != nil {
			t.Fatal(err)
		}
	}
	e.relay.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, from, err := e.relay.ReadFrom(buf); err == nil {
		t.Fatalf("a client without permissions got %q from %v", buf[:n], from)
	}

	// Past the channels' lifetime the fast path no longer forwards; the
	// TURN server (on its own clock) still does.
	clock.advance(channelLifetime + time.Second)
	before = s.Forwarded()
	if got, _ := exchange(t, a, b, []byte("slow"), 3*time.Second); got == nil {
		t.Fatal("after the fast path's routes expired nothing reached b")
	}
	if s.Forwarded() != before {
		t.Fatal("the fast path forwarded on expired channel bindings")
	}
}

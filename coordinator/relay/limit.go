package relay

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// minBurst lets a few full-size datagrams through at once however low the
// rate (a relayed datagram is at most about 1,600 bytes).
const minBurst = 4 << 10

// bucket is a token bucket of bytes: it fills at rate bytes per second up to
// burst, and a datagram passes only if the bucket holds its size. It starts
// full.
type bucket struct {
	rate, burst float64
	now         func() time.Time

	mu     sync.Mutex
	tokens float64   // guarded by mu
	last   time.Time // guarded by mu: when tokens was computed
}

// newBucket returns a bucket for rate bytes per second with a burst of a
// tenth of a second's worth (at least minBurst), or nil for rate <= 0
// (unlimited).
func newBucket(rate int64, now func() time.Time) *bucket {
	if rate <= 0 {
		return nil
	}
	burst := max(float64(rate)/10, minBurst)
	return &bucket{rate: float64(rate), burst: burst, now: now, tokens: burst, last: now()}
}

// take reports whether n bytes may pass now, and if so takes them. A nil
// bucket lets everything pass.
func (b *bucket) take(n int) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// relayConn is the socket of one relayed address. Each direction passes
// through its own bucket: datagrams over the cap are dropped, never queued
// (queueing would add latency to a tunnel whose own congestion control
// then backs off anyway).
type relayConn struct {
	net.PacketConn
	in, out *bucket // nil: unlimited
	dropped *atomic.Uint64
	onClose func()
	once    sync.Once
}

// ReadFrom returns the next datagram from a peer that fits under the cap,
// dropping those that do not.
func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || c.in.take(n) {
			return n, addr, err
		}
		c.dropped.Add(uint64(n))
	}
}

// WriteTo sends p to a peer if it fits under the cap; otherwise it drops p
// and reports success, as a lost datagram would be.
func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if !c.out.take(len(p)) {
		c.dropped.Add(uint64(len(p)))
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}

// Close closes the socket. Later calls do nothing and return nil: a socket
// closed by Revoke is closed again by the allocation it ends.
func (c *relayConn) Close() error {
	var err error
	c.once.Do(func() {
		c.onClose()
		err = c.PacketConn.Close()
	})
	return err
}

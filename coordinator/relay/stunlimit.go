package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"
)

// STUN request limits. An answer goes to whatever source address a datagram
// claims, so an unlimited STUN server reflects traffic at anyone whose
// address an attacker writes into a flood. A source address may send
// DefaultRequestRate requests a second (bursts of DefaultRequestBurst);
// the rest are dropped unanswered. An agent sends one binding request to
// each coordinator every 20 s, so the default leaves room for a thousand
// agents behind one NAT address.
const (
	DefaultRequestRate  = 50
	DefaultRequestBurst = 100
	// maxSources bounds the sources tracked at once; past it, requests
	// from new sources are dropped until the idle ones are forgotten.
	maxSources = 1 << 16
	// sweepEvery is how often sources whose allowance is whole again are
	// forgotten.
	sweepEvery = 10 * time.Second
)

// stunMagic is the magic cookie of every STUN message (RFC 5389).
const stunMagic = 0x2112A442

// isSTUNRequest reports whether p is a STUN request (class request, any
// method): a binding request, or a TURN request (Allocate, Refresh,
// CreatePermission, ChannelBind) that is answered, if only with an error.
// Indications and channel data (relayed traffic) are not requests.
func isSTUNRequest(p []byte) bool {
	if len(p) < 20 || p[0]&0xc0 != 0 || binary.BigEndian.Uint32(p[4:8]) != stunMagic {
		return false
	}
	typ := binary.BigEndian.Uint16(p[0:2])
	return typ&0x0110 == 0 // class bits C1 C0 = 00: request
}

// requestLimiter is a token bucket of requests per source address.
type requestLimiter struct {
	rate, burst float64
	now         func() time.Time

	mu    sync.Mutex
	src   map[netip.Addr]*allowance // guarded by mu
	swept time.Time                 // guarded by mu
}

type allowance struct {
	tokens float64
	last   time.Time
}

func newRequestLimiter(rate, burst int, now func() time.Time) *requestLimiter {
	return &requestLimiter{rate: float64(rate), burst: float64(max(burst, 1)), now: now, src: map[netip.Addr]*allowance{}, swept: now()}
}

// allow reports whether a request from a may be answered now, and if so
// counts it.
func (l *requestLimiter) allow(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.swept) > sweepEvery || len(l.src) >= maxSources && now.Sub(l.swept) > time.Second {
		l.sweepLocked(now)
	}
	b := l.src[a]
	if b == nil {
		if len(l.src) >= maxSources {
			return false
		}
		b = &allowance{tokens: l.burst, last: now}
		l.src[a] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepLocked forgets sources whose allowance is whole again; l.mu is held.
func (l *requestLimiter) sweepLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for a, b := range l.src {
		if now.Sub(b.last) >= full {
			delete(l.src, a)
		}
	}
	l.swept = now
}

// limitedPacketConn drops STUN requests from sources over their allowance
// before the TURN server sees (and answers) them; everything else passes.
type limitedPacketConn struct {
	net.PacketConn
	lim     *requestLimiter
	dropped func()
}

func (c *limitedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || !isSTUNRequest(p[:n]) {
			return n, addr, err
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			return n, addr, err
		}
		ip, _ := netip.AddrFromSlice(ua.IP)
		if c.lim.allow(ip.Unmap()) {
			return n, addr, err
		}
		c.dropped()
	}
}

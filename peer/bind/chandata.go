package bind

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/pkg/turnmsg"
)

// The relay's fast path. The TURN client binds a channel to each peer it
// writes to and keeps it refreshed; this file learns those bindings from
// the client's own ChannelBind exchange on the shared socket (the request
// going out, the success coming back) and then moves WireGuard packets
// itself: a batch of sends becomes ChannelData frames laid out back to
// back in one buffer and leaves through the socket's batched, segmented
// send, and ChannelData arriving from the relay is unwrapped in place in
// the receive batch. Without it every relayed packet was a syscall of
// its own and two goroutine hand-offs on the way in. Probes, permissions,
// refreshes and everything over TCP/TLS stay with the TURN client.

const (
	// chanFresh is how long a binding is used after the server last
	// confirmed it: servers keep one for 10 minutes, the client refreshes
	// it every 5.
	chanFresh       = 9 * time.Minute
	chanDataHeader  = 4
	pendingBindsMax = 64
)

// chanBinding is one channel the client bound to a peer's relayed address.
type chanBinding struct {
	num  uint16
	peer netip.AddrPort
	ep   conn.Endpoint // the peer's relayed address, for WireGuard
	at   time.Time     // the server's last confirmation
}

// chanTable is an allocation's channels; replaced whole, read lock-free.
type chanTable struct {
	byPeer map[netip.AddrPort]*chanBinding
	byNum  map[uint16]*chanBinding
}

type pendingBind struct {
	num    uint16
	peer   netip.AddrPort
	server netip.AddrPort
	at     time.Time
}

// chanState keeps the ChannelBind requests in flight.
type chanState struct {
	mu      sync.Mutex
	pending map[turnmsg.TxID]pendingBind // guarded by mu
}

// noteChannelBind records a ChannelBind request the client sends to server.
func (m *relayMgr) noteChannelBind(p []byte, server netip.AddrPort) {
	if turnmsg.Type(p) != turnmsg.ChannelBindRequest {
		return
	}
	r, ok := turnmsg.ParseRequest(p)
	if !ok {
		return
	}
	pb := pendingBind{num: r.Channel, peer: r.Peers[0], server: server, at: time.Now()}
	m.chans.mu.Lock()
	defer m.chans.mu.Unlock()
	if m.chans.pending == nil {
		m.chans.pending = map[turnmsg.TxID]pendingBind{}
	}
	if len(m.chans.pending) >= pendingBindsMax {
		for k, v := range m.chans.pending {
			if time.Since(v.at) > 10*time.Second {
				delete(m.chans.pending, k)
			}
		}
		if len(m.chans.pending) >= pendingBindsMax {
			return
		}
	}
	m.chans.pending[r.TxID] = pb
}

// noteChannelBound takes a ChannelBind success from a server: the channel
// of that request is usable on a, the allocation on that server.
func (m *relayMgr) noteChannelBound(p []byte, from netip.AddrPort, a *allocation) {
	if turnmsg.Type(p) != turnmsg.ChannelBindSuccess {
		return
	}
	tid := turnmsg.TransactionID(p)
	m.chans.mu.Lock()
	pb, ok := m.chans.pending[tid]
	delete(m.chans.pending, tid)
	m.chans.mu.Unlock()
	if !ok || pb.server != from || a == nil || a.server != from {
		return
	}
	b := &chanBinding{num: pb.num, peer: pb.peer, ep: stdEndpoint(pb.peer), at: time.Now()}
	a.chanMu.Lock()
	defer a.chanMu.Unlock()
	old := a.chans.Load()
	t := &chanTable{byPeer: map[netip.AddrPort]*chanBinding{}, byNum: map[uint16]*chanBinding{}}
	if old != nil {
		for k, v := range old.byPeer {
			if v.num != b.num {
				t.byPeer[k] = v
				t.byNum[v.num] = v
			}
		}
	}
	t.byPeer[b.peer], t.byNum[b.num] = b, b
	a.chans.Store(t)
}

// channelTo returns the fresh channel to peer on a, or nil.
func (a *allocation) channelTo(peer netip.AddrPort, now time.Time) *chanBinding {
	t := a.chans.Load()
	if t == nil {
		return nil
	}
	b := t.byPeer[peer]
	if b == nil || now.Sub(b.at) > chanFresh {
		return nil
	}
	return b
}

// chanBufs is the scratch of one batched ChannelData send.
type chanBufs struct {
	backing []byte
	frames  [][]byte
}

// sendChannelData writes bufs to b's peer as ChannelData frames in one
// batch. The frames lie back to back in one buffer and each one's
// capacity runs to its end, so when the socket coalesces equal-sized
// frames into one segmented send, appending frame i+1 to frame i copies
// it onto itself.
func (m *relayMgr) sendChannelData(a *allocation, b *chanBinding, bufs [][]byte) error {
	total := 0
	for _, p := range bufs {
		total += chanDataHeader + len(p)
	}
	sb := m.chanPool.Get().(*chanBufs)
	defer m.chanPool.Put(sb)
	if cap(sb.backing) < total {
		sb.backing = make([]byte, total)
	}
	backing := sb.backing[:total]
	frames := sb.frames[:0]
	off := 0
	for _, p := range bufs {
		f := backing[off : off+chanDataHeader+len(p)]
		binary.BigEndian.PutUint16(f[0:2], b.num)
		binary.BigEndian.PutUint16(f[2:4], uint16(len(p)))
		copy(f[chanDataHeader:], p)
		frames = append(frames, backing[off:off+len(f):total])
		off += len(f)
	}
	sb.frames = frames
	m.fastSent.Add(uint64(len(bufs)))
	return m.c.std.Send(frames, a.serverEP)
}

// unwrapChannelData turns ChannelData from the current allocation's server
// into the packet it carries, in place: pkt becomes the payload and the
// endpoint the peer's relayed address. It reports whether pkt was such a
// frame; when it carried a probe, the probe went to the loop and n is 0.
func (c *Conn) unwrapChannelData(buf []byte, size int, from netip.AddrPort) (n int, ep conn.Endpoint, ok bool) {
	if size < chanDataHeader || buf[0]&0xC0 != 0x40 {
		return 0, nil, false
	}
	a := c.relay.cur.Load()
	if a == nil || a.server != from {
		return 0, nil, false
	}
	t := a.chans.Load()
	if t == nil {
		return 0, nil, false
	}
	b := t.byNum[binary.BigEndian.Uint16(buf[0:2])]
	l := int(binary.BigEndian.Uint16(buf[2:4]))
	if b == nil || chanDataHeader+l > size {
		return 0, nil, false
	}
	payload := buf[chanDataHeader : chanDataHeader+l]
	if disco.Looks(payload) {
		select {
		case c.discoIn <- inbound{pkt: append([]byte(nil), payload...), from: b.peer, viaRelay: true}:
		default:
		}
		return 0, nil, true
	}
	copy(buf, payload)
	c.relay.fastRecv.Add(1)
	if !c.noteInit(buf[:l], b.peer, true) {
		return 0, nil, true
	}
	return l, b.ep, true
}

package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/meshd/meshd/pkg/turnmsg"
)

// The fast path between two allocations of this server. Mesh peers reach
// each other allocation to allocation: peer A sends ChannelData to this
// server, the server relays it from A's relayed address to B's, and B's
// allocation wraps it again as ChannelData for B. When both allocations
// live here, that is two datagrams through the kernel and two goroutines
// per packet for nothing. fastConn sits under the TURN server on the UDP
// socket, learns the state that decides where a packet may go from the
// TURN messages passing through it (allocations and their relayed
// addresses, channel bindings, permissions, each with the lifetime RFC
// 8656 gives it), and forwards ChannelData from A straight to B: it
// rewrites the channel number in place and sends it on, in batches,
// charging both relayed addresses' bandwidth caps as the long way would.
// It forwards only what the TURN server would have delivered: A's channel
// is bound to B's relayed address, A may send to this relay's address,
// B's channel is bound to A's relayed address and B permits this relay's
// address, none of it expired. Everything else, and every STUN message,
// goes to the TURN server as before.

// Lifetimes from RFC 8656, a little short of them.
const (
	channelLifetime    = 10*time.Minute - 10*time.Second
	permissionLifetime = 5*time.Minute - 10*time.Second
	fastBatch          = 64
	pendingMax         = 4096
)

type chanKey struct {
	client netip.AddrPort
	num    uint16
}

// route is where ChannelData from one client on one channel goes.
type route struct {
	to      netip.AddrPort // B's client address
	num     uint16         // B's channel for A's relayed address
	src     *relayConn     // A's relayed address (its out cap)
	dst     *relayConn     // B's relayed address (its in cap)
	expires time.Time
}

// clientState is what the fast path knows of one allocation's client.
type clientState struct {
	port     int                       // relayed port on RelayIP
	channels map[uint16]netip.AddrPort // channel -> peer, bound
	chanAt   map[uint16]time.Time      // channel -> last confirmed
	perms    map[netip.Addr]time.Time  // peer IP -> last confirmed
}

type pendingMsg struct {
	client netip.AddrPort
	num    uint16
	peers  []netip.AddrPort
	at     time.Time
}

// fastState is guarded by Server.fmu; routes is rebuilt whole on change.
type fastState struct {
	clients map[netip.AddrPort]*clientState
	pending map[turnmsg.TxID]pendingMsg
}

// batchIO is the batched reads and writes of an IPv4 or IPv6 socket.
type batchIO interface {
	ReadBatch([]ipv4.Message, int) (int, error)
	WriteBatch([]ipv4.Message, int) (int, error)
}

// dgram is one datagram of a read batch not yet handled.
type dgram struct {
	data []byte
	from *net.UDPAddr
}

// fastConn is the TURN server's UDP socket with the fast path in front.
// ReadFrom is called by the server's one read loop only. With UDP GRO a
// read returns a run of equal-sized datagrams from one sender as one
// buffer; when all of them go to one client, that buffer leaves again as
// one segmented send.
type fastConn struct {
	*net.UDPConn
	s   *Server
	io  batchIO
	gro bool
	gso bool

	rmsgs  []ipv4.Message
	pend   []dgram
	wmsgs  []ipv4.Message
	waddrs []net.UDPAddr
	woob   [][]byte
	now    time.Time // when the batch being read arrived
}

func newFastConn(s *Server, uc *net.UDPConn) *fastConn {
	c := &fastConn{UDPConn: uc, s: s, rmsgs: make([]ipv4.Message, fastBatch), wmsgs: make([]ipv4.Message, 0, fastBatch),
		waddrs: make([]net.UDPAddr, fastBatch), woob: make([][]byte, fastBatch)}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil && !la.IP.IsUnspecified() {
		c.io = ipv6.NewPacketConn(uc)
	} else {
		c.io = ipv4.NewPacketConn(uc)
	}
	c.gro, c.gso = enableGRO(uc), true
	for i := range c.rmsgs {
		c.rmsgs[i].Buffers = [][]byte{make([]byte, 64<<10)}
		c.rmsgs[i].OOB = make([]byte, oobSize)
	}
	for i := range c.woob {
		c.woob[i] = make([]byte, 0, oobSize)
	}
	return c
}

// ReadFrom returns the next datagram the fast path does not forward.
func (c *fastConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		if len(c.pend) == 0 {
			c.flush()
			if err := c.read(); err != nil {
				return 0, nil, err
			}
			continue
		}
		d := c.pend[0]
		c.pend = c.pend[1:]
		from := d.from.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if len(d.data) >= 4 && d.data[0]&0xC0 == 0x40 {
			if c.forward(d.data, from, 0) {
				continue
			}
		} else if len(d.data) >= turnmsg.HeaderSize && d.data[0] < 2 {
			c.s.observeRequest(d.data, from)
		}
		c.flush()
		return copy(p, d.data), d.from, nil
	}
}

// read fills pend from one batch read; a coalesced run that goes to one
// client whole is forwarded as it is.
func (c *fastConn) read() error {
	for i := range c.rmsgs {
		c.rmsgs[i].Buffers[0] = c.rmsgs[i].Buffers[0][:cap(c.rmsgs[i].Buffers[0])]
		c.rmsgs[i].OOB = c.rmsgs[i].OOB[:cap(c.rmsgs[i].OOB)]
	}
	n, err := c.io.ReadBatch(c.rmsgs, 0)
	if err != nil {
		return err
	}
	c.now = c.s.cfg.Now()
	c.pend = c.pend[:0]
	for i := range n {
		m := &c.rmsgs[i]
		ua, ok := m.Addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		data := m.Buffers[0][:m.N]
		seg := 0
		if c.gro {
			seg = groSize(m.OOB[:m.NN])
		}
		if seg <= 0 || seg >= len(data) {
			c.pend = append(c.pend, dgram{data, ua})
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if c.gso && len(data) >= 4 && data[0]&0xC0 == 0x40 && c.forward(data, from, seg) {
			continue
		}
		for off := 0; off < len(data); off += seg {
			c.pend = append(c.pend, dgram{data[off:min(off+seg, len(data))], ua})
		}
	}
	return nil
}

// forward sends ChannelData on if its route allows; it reports whether
// the TURN server is done with it (forwarded or dropped by a cap). With
// seg > 0, data is a run of datagrams of seg bytes (the last may be
// shorter), forwarded only if every one goes to the same client.
func (c *fastConn) forward(data []byte, from netip.AddrPort, seg int) bool {
	rt := c.s.routes.Load()
	if rt == nil {
		return false
	}
	step := len(data)
	if seg > 0 {
		step = seg
	}
	var r route
	payload := 0
	for off := 0; off < len(data); off += step {
		d := data[off:min(off+step, len(data))]
		if len(d) < 4 || d[0]&0xC0 != 0x40 {
			return false
		}
		ri, ok := (*rt)[chanKey{from, binary.BigEndian.Uint16(d)}]
		if !ok || !c.now.Before(ri.expires) || (off > 0 && ri != r) {
			return false
		}
		l := int(binary.BigEndian.Uint16(d[2:4]))
		if 4+l > len(d) {
			return false
		}
		r = ri
		payload += l
	}
	if !r.src.out.take(payload) || !r.dst.in.take(payload) {
		c.s.dropped.Add(uint64(payload))
		return true
	}
	for off := 0; off < len(data); off += step {
		binary.BigEndian.PutUint16(data[off:], r.num)
	}
	c.s.forwarded.Add(uint64(payload))
	if len(c.wmsgs) == cap(c.wmsgs) {
		c.flush()
	}
	i := len(c.wmsgs)
	c.waddrs[i] = net.UDPAddr{IP: r.to.Addr().AsSlice(), Port: int(r.to.Port())}
	m := ipv4.Message{Buffers: [][]byte{data}, Addr: &c.waddrs[i]}
	if seg > 0 {
		m.OOB = gsoControl(c.woob[i][:0], seg)
	}
	c.wmsgs = append(c.wmsgs, m)
	return true
}

// flush sends what forward queued; a datagram that cannot go is lost, as
// on any relay. Should the kernel refuse segmented sends, they go one
// datagram at a time from then on.
func (c *fastConn) flush() {
	msgs := c.wmsgs
	for len(msgs) > 0 {
		n, err := c.io.WriteBatch(msgs, 0)
		if err != nil && c.gso && hasGSO(msgs) {
			c.gso = false
			c.s.log.Warn("relay: segmented UDP sends refused; sending datagram by datagram", "err", err)
			msgs = splitGSO(msgs)
			continue
		}
		if err != nil || n == 0 {
			break
		}
		msgs = msgs[n:]
	}
	c.wmsgs = c.wmsgs[:0]
}

func hasGSO(msgs []ipv4.Message) bool {
	for _, m := range msgs {
		if len(m.OOB) > 0 {
			return true
		}
	}
	return false
}

// splitGSO turns segmented sends into one message per datagram.
func splitGSO(msgs []ipv4.Message) []ipv4.Message {
	var out []ipv4.Message
	for _, m := range msgs {
		seg := gsoSizeOf(m.OOB)
		if seg <= 0 {
			out = append(out, m)
			continue
		}
		data := m.Buffers[0]
		for off := 0; off < len(data); off += seg {
			out = append(out, ipv4.Message{Buffers: [][]byte{data[off:min(off+seg, len(data))]}, Addr: m.Addr})
		}
	}
	return out
}

// WriteTo is the TURN server's send; its answers tell the fast path what
// it granted.
func (c *fastConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if len(p) >= turnmsg.HeaderSize && p[0] == 0x01 {
		if ua, ok := addr.(*net.UDPAddr); ok {
			to := ua.AddrPort()
			c.s.observeResponse(p, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
		}
	}
	return c.UDPConn.WriteTo(p, addr)
}

// observeRequest notes a ChannelBind or CreatePermission request until its
// answer shows whether the TURN server granted it.
func (s *Server) observeRequest(p []byte, from netip.AddrPort) {
	if t := turnmsg.Type(p); t != turnmsg.ChannelBindRequest && t != turnmsg.CreatePermissionRequest {
		return
	}
	r, ok := turnmsg.ParseRequest(p)
	if !ok {
		return
	}
	now := s.cfg.Now()
	pm := pendingMsg{client: from, num: r.Channel, peers: r.Peers, at: now}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if len(s.fast.pending) >= pendingMax {
		for k, v := range s.fast.pending {
			if now.Sub(v.at) > 10*time.Second {
				delete(s.fast.pending, k)
			}
		}
		if len(s.fast.pending) >= pendingMax {
			return
		}
	}
	s.fast.pending[r.TxID] = pm
}

// observeResponse takes the TURN server's successes: an allocation's
// relayed address, a channel bound, permissions installed.
func (s *Server) observeResponse(p []byte, to netip.AddrPort) {
	typ := turnmsg.Type(p)
	if typ != turnmsg.AllocateSuccess && typ != turnmsg.ChannelBindSuccess && typ != turnmsg.CreatePermissionSuccess {
		return
	}
	now := s.cfg.Now()
	if typ == turnmsg.AllocateSuccess {
		ra, ok := turnmsg.RelayedAddress(p)
		if !ok {
			return
		}
		s.fmu.Lock()
		s.fast.clients[to] = &clientState{port: int(ra.Port()), channels: map[uint16]netip.AddrPort{},
			chanAt: map[uint16]time.Time{}, perms: map[netip.Addr]time.Time{}}
		s.fmu.Unlock()
		s.rebuildRoutes()
		return
	}
	tid := turnmsg.TransactionID(p)
	s.fmu.Lock()
	pm, ok := s.fast.pending[tid]
	delete(s.fast.pending, tid)
	cs := s.fast.clients[to]
	if !ok || pm.client != to || cs == nil {
		s.fmu.Unlock()
		return
	}
	if typ == turnmsg.ChannelBindSuccess {
		peer := pm.peers[0]
		for n, p := range cs.channels {
			if p == peer && n != pm.num {
				delete(cs.channels, n)
				delete(cs.chanAt, n)
			}
		}
		cs.channels[pm.num], cs.chanAt[pm.num] = peer, now
	}
	// A channel binding installs or refreshes the permission too.
	for _, peer := range pm.peers {
		cs.perms[peer.Addr()] = now
	}
	s.fmu.Unlock()
	s.rebuildRoutes()
}

// forgetClient drops what the fast path knows of the allocation on port.
func (s *Server) forgetClient(port int) {
	s.fmu.Lock()
	for k, cs := range s.fast.clients {
		if cs.port == port {
			delete(s.fast.clients, k)
		}
	}
	s.fmu.Unlock()
	s.rebuildRoutes()
}

// rebuildRoutes recomputes every route between two allocations here.
func (s *Server) rebuildRoutes() {
	relayIP := s.cfg.RelayIP
	s.mu.Lock()
	conns := make(map[int]*relayConn, len(s.socks))
	for port, k := range s.socks {
		conns[port] = k.conn
	}
	s.mu.Unlock()
	s.fmu.Lock()
	defer s.fmu.Unlock()
	byPort := make(map[int]netip.AddrPort, len(s.fast.clients))
	for addr, cs := range s.fast.clients {
		byPort[cs.port] = addr
	}
	routes := map[chanKey]route{}
	for aAddr, a := range s.fast.clients {
		aRelayed := netip.AddrPortFrom(relayIP, uint16(a.port))
		for num, peer := range a.channels {
			if peer.Addr() != relayIP {
				continue
			}
			bAddr, ok := byPort[int(peer.Port())]
			if !ok {
				continue
			}
			b := s.fast.clients[bAddr]
			var bNum uint16
			found := false
			for n, p := range b.channels {
				if p == aRelayed {
					bNum, found = n, true
				}
			}
			src, dst := conns[a.port], conns[b.port]
			permA, okA := a.perms[relayIP]
			permB, okB := b.perms[relayIP]
			if !found || src == nil || dst == nil || !okA || !okB {
				continue
			}
			exp := a.chanAt[num].Add(channelLifetime)
			for _, t := range []time.Time{b.chanAt[bNum].Add(channelLifetime), permA.Add(permissionLifetime), permB.Add(permissionLifetime)} {
				if t.Before(exp) {
					exp = t
				}
			}
			routes[chanKey{aAddr, num}] = route{to: bAddr, num: bNum, src: src, dst: dst, expires: exp}
		}
	}
	s.routes.Store(&routes)
}

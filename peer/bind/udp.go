package bind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
)

// UDP is the socket pair the bind sends and receives on: an IPv4 and an
// IPv6 (IPv6 only) UDP socket on one port, read and written in batches.
//
// It replaces wireguard-go's StdNetBind, whose Send fills a destination
// address taken from a pool shared by both families: an IPv4 send leaves
// it 4 bytes long, and the next IPv6 send through it copies only the first
// 4 bytes of the new address, keeping the rest of an earlier one. That
// packet goes to another peer, or to an address with no route ("sendmmsg:
// network is unreachable"), so on a dual-stack host the first handshakes
// and probes towards IPv6 peers were lost at random.
type UDP struct {
	mu sync.Mutex // guards c4, c6, w4 and w6
	c4 *net.UDPConn
	c6 *net.UDPConn
	w4 *ipv4.PacketConn
	w6 *ipv6.PacketConn
	// msgs holds *[]ipv4.Message of conn.IdealBatchSize for Send; each
	// message's address is set whole on every use.
	msgs sync.Pool
	// gso4 and gso6: the kernel segments large sends on that socket.
	gso4, gso6 atomic.Bool
}

// Segmentation offload limits: datagrams per segmented send or coalesced
// receive, and the largest UDP payload of each family.
const (
	gsoMaxSegments = 64
	maxPayload4    = 1<<16 - 1 - 20 - 8
	maxPayload6    = 1<<16 - 1 - 8
)

var _ conn.Bind = (*UDP)(nil)

// NewUDP returns a closed socket pair; WireGuard opens it.
func NewUDP() *UDP {
	u := &UDP{}
	u.msgs.New = func() any {
		m := make([]ipv4.Message, conn.IdealBatchSize)
		for i := range m {
			m[i].Buffers = make([][]byte, 1)
		}
		return &m
	}
	return u
}

// udpDest is where a packet for ep goes: which family's socket, and the
// destination address for it (an IPv4-mapped address is IPv4). It is
// built afresh for every send, never shared across families.
func udpDest(ep conn.Endpoint) (dst *net.UDPAddr, is6 bool, err error) {
	var ap netip.AddrPort
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		ap = se.AddrPort
	} else if ap, err = netip.ParseAddrPort(ep.DstToString()); err != nil {
		return nil, false, fmt.Errorf("bind: send to %q: %w", ep.DstToString(), err)
	}
	a := ap.Addr()
	if !a.IsValid() {
		return nil, false, fmt.Errorf("bind: send to %q: no address", ep.DstToString())
	}
	if a.Is4In6() {
		a = a.Unmap()
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, ap.Port())), a.Is6(), nil
}

// Open implements conn.Bind: it listens on port over both families (a
// family the host lacks is left out); port 0 picks one free in both.
func (u *UDP) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	u.mu.Lock()
	open := u.c4 != nil || u.c6 != nil
	u.mu.Unlock()
	if open {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	// The sockets are made without the lock (Send only reads the
	// writers under it) and installed under it, unless another Open won.
	var c4, c6 *net.UDPConn
	for tries := 0; ; tries++ {
		var err error
		var actual uint16
		c4, actual, err = listenUDP("udp4", port)
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, err
		}
		c6, actual, err = listenUDP("udp6", actual)
		if err != nil && port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			c4.Close()
			continue // the port free over IPv4 is taken over IPv6
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			if c4 != nil {
				c4.Close()
			}
			return nil, 0, err
		}
		if c4 == nil && c6 == nil {
			return nil, 0, syscall.EAFNOSUPPORT
		}
		port = actual
		break
	}
	var fns []conn.ReceiveFunc
	var w4 *ipv4.PacketConn
	var w6 *ipv6.PacketConn
	var tx4, tx6 bool
	if c4 != nil {
		w4 = ipv4.NewPacketConn(c4)
		var rx bool
		tx4, rx = udpOffload(c4)
		fns = append(fns, receiveBatch(w4.ReadBatch, u.BatchSize(), rx))
	}
	if c6 != nil {
		w6 = ipv6.NewPacketConn(c6)
		var rx bool
		tx6, rx = udpOffload(c6)
		fns = append(fns, receiveBatch(w6.ReadBatch, u.BatchSize(), rx))
	}
	u.mu.Lock()
	if u.c4 != nil || u.c6 != nil {
		u.mu.Unlock()
		closeAll(c4, c6)
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	u.c4, u.w4, u.c6, u.w6 = c4, w4, c6, w6
	u.gso4.Store(tx4)
	u.gso6.Store(tx6)
	u.mu.Unlock()
	return fns, port, nil
}

// closeAll closes the sockets of cs that are open.
func closeAll(cs ...*net.UDPConn) error {
	var errs []error
	for _, c := range cs {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// listenUDP listens on port (0: any) over network ("udp4" or "udp6") and
// returns the port it got.
func listenUDP(network string, port uint16) (*net.UDPConn, uint16, error) {
	lc := net.ListenConfig{Control: controlUDP}
	pc, err := lc.ListenPacket(context.Background(), network, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, 0, err
	}
	c := pc.(*net.UDPConn)
	return c, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// receiveBatch is a ReceiveFunc reading up to batch packets at once with
// read (recvmmsg on Linux). With gro the kernel may hand over several
// datagrams of one sender as one: each message is read into a buffer of
// the receive function's own and cut into packets. Each ReceiveFunc is
// called by one goroutine, so its messages are its own.
func receiveBatch(read func([]ipv4.Message, int) (int, error), batch int, gro bool) conn.ReceiveFunc {
	n := batch
	if gro {
		n = max(1, batch/gsoMaxSegments)
	}
	msgs := make([]ipv4.Message, n)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
		if gro {
			msgs[i].Buffers[0] = make([]byte, 1<<16)
			msgs[i].OOB = make([]byte, 64)
		}
	}
	endpoint := func(m *ipv4.Message) conn.Endpoint {
		ua, ok := m.Addr.(*net.UDPAddr)
		if !ok {
			return &conn.StdNetEndpoint{}
		}
		ap := ua.AddrPort()
		return &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	}
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		if !gro {
			m := msgs[:min(len(msgs), len(packets))]
			for i := range m {
				m[i].Buffers[0] = packets[i]
			}
			n, err := read(m, 0)
			if err != nil {
				return 0, err
			}
			for i := range n {
				sizes[i], eps[i] = m[i].N, endpoint(&m[i])
			}
			return n, nil
		}
		for i := range msgs {
			msgs[i].OOB = msgs[i].OOB[:cap(msgs[i].OOB)]
		}
		n, err := read(msgs, 0)
		if err != nil {
			return 0, err
		}
		out := 0
		for i := range n {
			m := &msgs[i]
			ep := endpoint(m)
			for _, seg := range segments(m.N, groSize(m.OOB[:m.NN])) {
				if out == len(packets) {
					break
				}
				sizes[out] = copy(packets[out], m.Buffers[0][seg[0]:seg[1]])
				eps[out] = ep
				out++
			}
		}
		return out, nil
	}
}

// segments cuts a received message of n bytes, coalesced from datagrams of
// size bytes (0: not coalesced), into the byte ranges of its datagrams.
func segments(n, size int) [][2]int {
	if size <= 0 || size >= n {
		return [][2]int{{0, n}}
	}
	out := make([][2]int, 0, (n+size-1)/size)
	for off := 0; off < n; off += size {
		out = append(out, [2]int{off, min(off+size, n)})
	}
	return out
}

// gsoRuns groups packets of lengths lens into runs the kernel can send as
// one segmented datagram: equal lengths except that the last of a run may
// be shorter, at most maxSegs packets and maxBytes bytes. It returns each
// run's packet count.
func gsoRuns(lens []int, maxSegs, maxBytes int) []int {
	var runs []int
	for i := 0; i < len(lens); {
		size, n, total := lens[i], 1, lens[i]
		for i+n < len(lens) && n < maxSegs && lens[i+n] <= size && total+lens[i+n] <= maxBytes {
			total += lens[i+n]
			n++
			if lens[i+n-1] < size {
				break // a shorter one ends the run
			}
		}
		runs = append(runs, n)
		i += n
	}
	return runs
}

// Close implements conn.Bind.
func (u *UDP) Close() error {
	u.mu.Lock()
	c4, c6 := u.c4, u.c6
	u.c4, u.c6, u.w4, u.w6 = nil, nil, nil, nil
	u.mu.Unlock()
	return closeAll(c4, c6)
}

// SetMark implements conn.Bind (the firewall mark of both sockets).
func (u *UDP) SetMark(mark uint32) error {
	u.mu.Lock()
	cs := []*net.UDPConn{u.c4, u.c6}
	u.mu.Unlock()
	for _, c := range cs {
		if c == nil {
			continue
		}
		if err := setMark(c, mark); err != nil {
			return err
		}
	}
	return nil
}

// BatchSize implements conn.Bind.
func (u *UDP) BatchSize() int {
	if runtime.GOOS == "linux" || runtime.GOOS == "android" {
		return conn.IdealBatchSize
	}
	return 1
}

// ParseEndpoint implements conn.Bind.
func (u *UDP) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// Send implements conn.Bind: bufs go to ep in one batch (sendmmsg on
// Linux), on the socket of ep's family.
func (u *UDP) Send(bufs [][]byte, ep conn.Endpoint) error {
	dst, is6, err := udpDest(ep)
	if err != nil {
		return err
	}
	u.mu.Lock()
	w4, w6 := u.w4, u.w6
	u.mu.Unlock()
	if is6 && w6 == nil || !is6 && w4 == nil {
		if w4 == nil && w6 == nil {
			return net.ErrClosed
		}
		return syscall.EAFNOSUPPORT
	}
	var write func([]ipv4.Message, int) (int, error)
	var gso *atomic.Bool
	var maxBytes int
	if is6 {
		write, gso, maxBytes = w6.WriteBatch, &u.gso6, maxPayload6
	} else {
		write, gso, maxBytes = w4.WriteBatch, &u.gso4, maxPayload4
	}
	if len(bufs) > 1 && gso.Load() {
		err := sendSegmented(write, bufs, dst, maxBytes)
		if err == nil || !isGSOError(err) {
			return err
		}
		gso.Store(false) // the device cannot: datagram by datagram from now on
	}
	pm := u.msgs.Get().(*[]ipv4.Message)
	defer func() {
		for i := range *pm {
			(*pm)[i].Buffers[0], (*pm)[i].Addr = nil, nil
		}
		u.msgs.Put(pm)
	}()
	for len(bufs) > 0 {
		msgs := (*pm)[:min(len(bufs), len(*pm))]
		for i := range msgs {
			msgs[i].Buffers[0], msgs[i].Addr = bufs[i], dst
		}
		bufs = bufs[len(msgs):]
		if err := writeAll(write, msgs); err != nil {
			return err
		}
	}
	return nil
}

// sendSegmented sends bufs with segmentation offload: each run of
// gsoRuns goes as one message (its packets as the message's buffers) that
// the kernel cuts into datagrams.
func sendSegmented(write func([]ipv4.Message, int) (int, error), bufs [][]byte, dst *net.UDPAddr, maxBytes int) error {
	lens := make([]int, len(bufs))
	for i, b := range bufs {
		lens[i] = len(b)
	}
	runs := gsoRuns(lens, gsoMaxSegments, maxBytes)
	msgs := make([]ipv4.Message, len(runs))
	for i, n := range runs {
		msgs[i] = ipv4.Message{Buffers: bufs[:n], Addr: dst}
		if n > 1 {
			msgs[i].OOB = gsoControl(len(bufs[0]))
		}
		bufs = bufs[n:]
	}
	return writeAll(write, msgs)
}

// writeAll writes every message, in as many batches as it takes.
func writeAll(write func([]ipv4.Message, int) (int, error), msgs []ipv4.Message) error {
	for len(msgs) > 0 {
		n, err := write(msgs, 0)
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

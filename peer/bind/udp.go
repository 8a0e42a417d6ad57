package bind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
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
}

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
	defer u.mu.Unlock()
	if u.c4 != nil || u.c6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
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
	if c4 != nil {
		u.c4, u.w4 = c4, ipv4.NewPacketConn(c4)
		fns = append(fns, receiveBatch(u.w4.ReadBatch, u.BatchSize()))
	}
	if c6 != nil {
		u.c6, u.w6 = c6, ipv6.NewPacketConn(c6)
		fns = append(fns, receiveBatch(u.w6.ReadBatch, u.BatchSize()))
	}
	return fns, port, nil
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
// read (recvmmsg on Linux). Each ReceiveFunc is called by one goroutine,
// so its messages are its own.
func receiveBatch(read func([]ipv4.Message, int) (int, error), batch int) conn.ReceiveFunc {
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
	}
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		m := msgs[:min(len(msgs), len(packets))]
		for i := range m {
			m[i].Buffers[0] = packets[i]
		}
		n, err := read(m, 0)
		if err != nil {
			return 0, err
		}
		for i := range n {
			sizes[i] = m[i].N
			ua, ok := m[i].Addr.(*net.UDPAddr)
			if !ok {
				sizes[i] = 0
				eps[i] = &conn.StdNetEndpoint{}
				continue
			}
			ap := ua.AddrPort()
			eps[i] = &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		}
		return n, nil
	}
}

// Close implements conn.Bind.
func (u *UDP) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	var errs []error
	if u.c4 != nil {
		errs = append(errs, u.c4.Close())
	}
	if u.c6 != nil {
		errs = append(errs, u.c6.Close())
	}
	u.c4, u.c6, u.w4, u.w6 = nil, nil, nil, nil
	return errors.Join(errs...)
}

// SetMark implements conn.Bind (the firewall mark of both sockets).
func (u *UDP) SetMark(mark uint32) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range []*net.UDPConn{u.c4, u.c6} {
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
		for len(msgs) > 0 {
			var n int
			var err error
			if is6 {
				n, err = w6.WriteBatch(msgs, 0)
			} else {
				n, err = w4.WriteBatch(msgs, 0)
			}
			if err != nil {
				return err
			}
			msgs = msgs[n:]
		}
	}
	return nil
}

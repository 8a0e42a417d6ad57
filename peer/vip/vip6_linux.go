package vip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// linuxVIP6 is an IPv6 virtual IP answered for by neighbor discovery
// (RFC 4861) from this process, as linuxVIP answers ARP: neighbor
// solicitations for the address get a neighbor advertisement with this
// interface's MAC, and a takeover is announced with unsolicited
// advertisements that override LAN hosts' caches. The address is not
// added to the kernel, so a killed agent stops answering at once.
type linuxVIP6 struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	stop chan struct{} // guarded by mu: non-nil while this host answers for the VIP
}

var _ VIP = (*linuxVIP6)(nil)

func newVIP6(cfg Config, log *slog.Logger) (VIP, error) {
	a := cfg.Addr.Addr()
	if a.Is4In6() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return nil, fmt.Errorf("lan vip %s: not a unicast IPv6 address", cfg.Addr)
	}
	if _, err := net.InterfaceByName(cfg.Dev); err != nil {
		return nil, fmt.Errorf("lan dev %s: %w", cfg.Dev, err)
	}
	return &linuxVIP6{cfg: cfg, log: log.With("component", "vip", "vip", cfg.Addr.String(), "dev", cfg.Dev)}, nil
}

func (v *linuxVIP6) Owned() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stop != nil
}

func (v *linuxVIP6) Claim() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stop != nil {
		return nil
	}
	ifc, err := net.InterfaceByName(v.cfg.Dev)
	if err != nil {
		return err
	}
	ip := v.cfg.Addr.Addr()
	if answered, err := ndProbe(ifc, ip, 30*time.Millisecond); err != nil {
		return fmt.Errorf("neighbor probe: %w", err)
	} else if answered {
		return ErrInUse
	}
	fd, err := ndSocket(ifc, ip, icmpNS)
	if err != nil {
		return fmt.Errorf("neighbor responder: %w", err)
	}
	stop := make(chan struct{})
	v.stop = stop
	go respond6(fd, ifc, ip, stop)
	go announce6(ifc, ip, stop, v.log)
	v.log.Info("virtual IP taken over")
	return nil
}

func (v *linuxVIP6) Release() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stop != nil {
		close(v.stop)
		v.stop = nil
		v.log.Info("virtual IP released")
	}
	return nil
}

// ICMPv6 neighbor discovery message types and NA flags.
const (
	icmpNS = 135
	icmpNA = 136

	naRouter    = 0x80
	naSolicited = 0x40
	naOverride  = 0x20
)

var allNodes = netip.MustParseAddr("ff02::1")

// solicitedNode is the solicited-node multicast address of a.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// multicastMAC is the Ethernet address of IPv6 multicast group g.
func multicastMAC(g netip.Addr) net.HardwareAddr {
	b := g.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// ndFrame builds an Ethernet frame holding an ICMPv6 neighbor discovery
// message: a solicitation or an advertisement for target, with a
// link-layer address option (source for a solicitation from a unicast
// address, target for an advertisement) unless srcIP is unspecified.
func ndFrame(typ, flags byte, srcMAC, dstMAC net.HardwareAddr, srcIP, dstIP, target netip.Addr) []byte {
	icmp := make([]byte, 24, 32)
	icmp[0] = typ
	if typ == icmpNA {
		icmp[4] = flags
	}
	t := target.As16()
	copy(icmp[8:24], t[:])
	if !srcIP.IsUnspecified() {
		opt := byte(1) // source link-layer address
		if typ == icmpNA {
			opt = 2 // target link-layer address
		}
		icmp = append(icmp, opt, 1)
		icmp = append(icmp, srcMAC...)
	}
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(srcIP, dstIP, icmp))
	var b bytes.Buffer
	b.Write(dstMAC)
	b.Write(srcMAC)
	binary.Write(&b, binary.BigEndian, uint16(unix.ETH_P_IPV6))
	binary.Write(&b, binary.BigEndian, uint32(6<<28))
	binary.Write(&b, binary.BigEndian, uint16(len(icmp)))
	b.WriteByte(unix.IPPROTO_ICMPV6)
	b.WriteByte(255) // hop limit: neighbor discovery is accepted only at 255
	s, d := srcIP.As16(), dstIP.As16()
	b.Write(s[:])
	b.Write(d[:])
	b.Write(icmp)
	return b.Bytes()
}

// icmpv6Checksum is the ICMPv6 checksum of msg (its checksum field zero)
// between src and dst.
func icmpv6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	var l [8]byte
	binary.BigEndian.PutUint32(l[0:4], uint32(len(msg)))
	l[7] = unix.IPPROTO_ICMPV6
	add(l[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ndMessage is a received neighbor discovery message.
type ndMessage struct {
	typ    byte
	srcMAC net.HardwareAddr
	srcIP  netip.Addr
	target netip.Addr
}

// parseND reads an Ethernet frame holding an ICMPv6 message of type typ
// right after the IPv6 header.
func parseND(f []byte, typ byte) (ndMessage, bool) {
	if len(f) < 78 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IPV6 || f[14]>>4 != 6 || f[20] != unix.IPPROTO_ICMPV6 || f[21] != 255 || f[54] != typ {
		return ndMessage{}, false
	}
	return ndMessage{
		typ:    f[54],
		srcMAC: net.HardwareAddr(bytes.Clone(f[6:12])),
		srcIP:  netip.AddrFrom16([16]byte(f[22:38])),
		target: netip.AddrFrom16([16]byte(f[62:78])),
	}, true
}

// ndSocket opens a packet socket on ifc that receives the neighbor
// discovery messages of type typ (a kernel filter drops everything else)
// and the multicast frames of ip's solicited-node group.
func ndSocket(ifc *net.Interface, ip netip.Addr, typ byte) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IPV6)))
	if err != nil {
		return -1, err
	}
	// ldh [12]; jeq IPv6; ldb [20]; jeq ICMPv6; ldb [54]; jeq typ; ret all; ret 0
	filter := []unix.SockFilter{
		{Code: 0x28, K: 12},
		{Code: 0x15, Jf: 5, K: unix.ETH_P_IPV6},
		{Code: 0x30, K: 20},
		{Code: 0x15, Jf: 3, K: unix.IPPROTO_ICMPV6},
		{Code: 0x30, K: 54},
		{Code: 0x15, Jf: 1, K: uint32(typ)},
		{Code: 0x06, K: 0xffff},
		{Code: 0x06, K: 0},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	mr := unix.PacketMreq{Ifindex: int32(ifc.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mr.Address[:], multicastMAC(solicitedNode(ip)))
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// sendFrame sends an Ethernet frame out of ifc.
func sendFrame(fd int, ifc *net.Interface, frame []byte) error {
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifc.Index, Halen: 6}
	copy(sa.Addr[:], frame[0:6])
	return unix.Sendto(fd, frame, 0, sa)
}

// respond6 answers neighbor solicitations for ip with this interface's
// MAC until stop is closed.
func respond6(fd int, ifc *net.Interface, ip netip.Addr, stop chan struct{}) {
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 256)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		m, ok := parseND(buf[:n], icmpNS)
		if !ok || m.target != ip {
			continue
		}
		// A solicitation from the unspecified address (another host's
		// duplicate address check) is answered to all nodes, unsolicited.
		dstMAC, dstIP, flags := m.srcMAC, m.srcIP, byte(naRouter|naSolicited|naOverride)
		if m.srcIP.IsUnspecified() {
			dstMAC, dstIP, flags = multicastMAC(allNodes), allNodes, naRouter|naOverride
		}
		sendFrame(fd, ifc, ndFrame(icmpNA, flags, ifc.HardwareAddr, dstMAC, ip, dstIP, ip))
	}
}

// announce6 sends unsolicited advertisements that override LAN hosts'
// caches at once, again shortly after, and then every second while this
// host owns the VIP (as announce does with gratuitous ARP).
func announce6(ifc *net.Interface, ip netip.Addr, stop chan struct{}, log *slog.Logger) {
	send := func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return sendFrame(fd, ifc, ndFrame(icmpNA, naRouter|naOverride, ifc.HardwareAddr, multicastMAC(allNodes), ip, allNodes, ip))
	}
	for _, d := range []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond} {
		select {
		case <-stop:
			return
		case <-time.After(d):
		}
		if err := send(); err != nil {
			log.Warn("unsolicited neighbor advertisement", "err", err)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			send()
		}
	}
}

// ndProbe asks who has ip (a solicitation from the unspecified address,
// as duplicate address detection sends) and reports whether another host
// answered within wait.
func ndProbe(ifc *net.Interface, ip netip.Addr, wait time.Duration) (bool, error) {
	fd, err := ndSocket(ifc, ip, icmpNA)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	group := solicitedNode(ip)
	if err := sendFrame(fd, ifc, ndFrame(icmpNS, 0, ifc.HardwareAddr, multicastMAC(group), netip.IPv6Unspecified(), group, ip)); err != nil {
		return false, err
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 256)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return false, err
		}
		if m, ok := parseND(buf[:n], icmpNA); ok && m.target == ip && !bytes.Equal(m.srcMAC, ifc.HardwareAddr) {
			return true, nil
		}
	}
}

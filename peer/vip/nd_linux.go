package vip

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// nd is the family of an IPv6 VIP, answered for by neighbor discovery
// (RFC 4861) as arp answers ARP: neighbor solicitations for ip get a
// neighbor advertisement with the interface's MAC, and a takeover is
// announced with unsolicited advertisements that override LAN hosts'
// caches.
type nd struct {
	ip netip.Addr
}

var _ family = nd{}

// newND returns the family of the IPv6 VIP addr, which must be a unicast
// address.
func newND(addr netip.Prefix) (nd, error) {
	a := addr.Addr()
	if a.Is4In6() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return nd{}, fmt.Errorf("lan vip %s: not a unicast IPv6 address", addr)
	}
	return nd{ip: a}, nil
}

func (nd) names() (proto, announcement string) {
	return "neighbor", "unsolicited neighbor advertisement"
}

func (n nd) listen(ifc *net.Interface) (int, error) { return ndSocket(ifc, n.ip, icmpNS) }

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

// answer replies to a neighbor solicitation for ip with this interface's
// MAC.
func (n nd) answer(fd int, ifc *net.Interface, f []byte) {
	m, ok := parseND(f, icmpNS)
	if !ok || m.target != n.ip {
		return
	}
	// A solicitation from the unspecified address (another host's
	// duplicate address check) is answered to all nodes, unsolicited.
	dstMAC, dstIP, flags := m.srcMAC, m.srcIP, byte(naRouter|naSolicited|naOverride)
	if m.srcIP.IsUnspecified() {
		dstMAC, dstIP, flags = multicastMAC(allNodes), allNodes, naRouter|naOverride
	}
	sendFrame(fd, ifc, ndFrame(icmpNA, flags, ifc.HardwareAddr, dstMAC, n.ip, dstIP, n.ip))
}

// announce sends an unsolicited advertisement for ip to all nodes, which
// overrides LAN hosts' caches.
func (n nd) announce(ifc *net.Interface) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return sendFrame(fd, ifc, ndFrame(icmpNA, naRouter|naOverride, ifc.HardwareAddr, multicastMAC(allNodes), n.ip, allNodes, n.ip))
}

// probe asks who has ip (a solicitation from the unspecified address, as
// duplicate address detection sends) and reports whether another host
// answered within wait.
func (n nd) probe(ifc *net.Interface, wait time.Duration) (bool, error) {
	fd, err := ndSocket(ifc, n.ip, icmpNA)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	group := solicitedNode(n.ip)
	if err := sendFrame(fd, ifc, ndFrame(icmpNS, 0, ifc.HardwareAddr, multicastMAC(group), netip.IPv6Unspecified(), group, n.ip)); err != nil {
		return false, err
	}
	return awaitAnswer(fd, wait, func(f []byte) bool {
		m, ok := parseND(f, icmpNA)
		return ok && m.target == n.ip && !bytes.Equal(m.srcMAC, ifc.HardwareAddr)
	})
}

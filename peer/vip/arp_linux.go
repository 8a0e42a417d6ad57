package vip

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// arp is the family of an IPv4 VIP: ARP requests for ip get a reply with
// the interface's MAC, and a takeover is announced with gratuitous ARP.
type arp struct {
	ip []byte
}

var _ family = arp{}

func (arp) names() (proto, announcement string) { return "arp", "gratuitous arp" }

// probe asks who has ip (RFC 5227 probe: sender IP 0.0.0.0) and reports
// whether any host answered within wait.
func (a arp) probe(ifc *net.Interface, wait time.Duration) (bool, error) {
	fd, sa, err := packetSocket(ifc)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, arpFrame(1, ifc.HardwareAddr, []byte{0, 0, 0, 0}, make(net.HardwareAddr, 6), a.ip), 0, sa); err != nil {
		return false, err
	}
	return awaitAnswer(fd, wait, func(f []byte) bool {
		// An ARP reply whose sender IP is ip, from another MAC.
		return len(f) >= 42 && binary.BigEndian.Uint16(f[20:22]) == 2 && bytes.Equal(f[28:32], a.ip) && !bytes.Equal(f[22:28], ifc.HardwareAddr)
	})
}

func (arp) listen(ifc *net.Interface) (int, error) {
	fd, _, err := packetSocket(ifc)
	return fd, err
}

// answer replies to an ARP request for ip with this interface's MAC.
func (a arp) answer(fd int, ifc *net.Interface, f []byte) {
	// An ARP request (op 1) whose target IP is the VIP.
	if len(f) < 42 || binary.BigEndian.Uint16(f[20:22]) != 1 || !bytes.Equal(f[38:42], a.ip) {
		return
	}
	senderMAC := net.HardwareAddr(append([]byte(nil), f[22:28]...))
	senderIP := append([]byte(nil), f[28:32]...)
	reply := arpFrame(2, ifc.HardwareAddr, a.ip, senderMAC, senderIP)
	copy(reply[0:6], senderMAC) // unicast to the asker
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifc.Index, Halen: 6}
	copy(sa.Addr[:], senderMAC)
	unix.Sendto(fd, reply, 0, sa)
}

// announce broadcasts a gratuitous ARP request for ip from ifc.
func (a arp) announce(ifc *net.Interface) error {
	fd, sa, err := packetSocket(ifc)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, arpFrame(1, ifc.HardwareAddr, a.ip, make(net.HardwareAddr, 6), a.ip), 0, sa)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpFrame builds an Ethernet ARP packet.
func arpFrame(op uint16, srcMAC net.HardwareAddr, srcIP []byte, dstMAC net.HardwareAddr, dstIP []byte) []byte {
	var b bytes.Buffer
	b.Write(broadcast)
	b.Write(srcMAC)
	binary.Write(&b, binary.BigEndian, uint16(unix.ETH_P_ARP))
	binary.Write(&b, binary.BigEndian, uint16(1))      // Ethernet
	binary.Write(&b, binary.BigEndian, uint16(0x0800)) // IPv4
	b.WriteByte(6)
	b.WriteByte(4)
	binary.Write(&b, binary.BigEndian, op)
	b.Write(srcMAC)
	b.Write(srcIP)
	b.Write(dstMAC)
	b.Write(dstIP)
	return b.Bytes()
}

// packetSocket opens an ARP packet socket on ifc and returns it with the
// broadcast address to send to.
func packetSocket(ifc *net.Interface) (int, *unix.SockaddrLinklayer, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return -1, nil, err
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifc.Index, Halen: 6}
	copy(sa.Addr[:], broadcast)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, sa, nil
}

// Reachable reports whether ip answers an ARP request on dev within wait.
func Reachable(dev string, ip netip.Addr, wait time.Duration) (bool, error) {
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return false, err
	}
	return arp{ip: ip.AsSlice()}.probe(ifc, wait)
}

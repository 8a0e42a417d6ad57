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

// ErrInUse: another host answers ARP for the VIP.
var ErrInUse = errors.New("another host answers for the virtual IP")

type linuxVIP struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	stop chan struct{} // guarded by mu: non-nil while this host answers for the VIP
}

var _ VIP = (*linuxVIP)(nil)

// New returns the VIP cfg describes; the interface must exist.
//
// The VIP is answered for in userspace (ARP replies from this process), not
// added to the kernel's interface: when the agent dies, even by SIGKILL,
// its host stops answering for the VIP at once, so the standby's ARP probe
// finds the address free. LAN hosts send their traffic to this host's MAC
// and the kernel forwards it; the VIP itself does not answer ping.
func New(cfg Config, log *slog.Logger) (VIP, error) {
	if cfg.Addr.Addr().Is6() {
		return newVIP6(cfg, log)
	}
	if _, err := net.InterfaceByName(cfg.Dev); err != nil {
		return nil, fmt.Errorf("lan dev %s: %w", cfg.Dev, err)
	}
	return &linuxVIP{cfg: cfg, log: log.With("component", "vip", "vip", cfg.Addr.String(), "dev", cfg.Dev)}, nil
}

func (v *linuxVIP) Owned() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stop != nil
}

func (v *linuxVIP) Claim() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stop != nil {
		return nil
	}
	ifc, err := net.InterfaceByName(v.cfg.Dev)
	if err != nil {
		return err
	}
	ip := v.cfg.Addr.Addr().AsSlice()
	if answered, err := arpProbe(ifc, ip, 30*time.Millisecond); err != nil {
		return fmt.Errorf("arp probe: %w", err)
	} else if answered {
		return ErrInUse
	}
	fd, _, err := packetSocket(ifc)
	if err != nil {
		return fmt.Errorf("arp responder: %w", err)
	}
	stop := make(chan struct{})
	v.stop = stop
	go respond(fd, ifc, ip, stop)
	go announce(ifc, ip, stop, v.log)
	v.log.Info("virtual IP taken over")
	return nil
}

func (v *linuxVIP) Release() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stop != nil {
		close(v.stop)
		v.stop = nil
		v.log.Info("virtual IP released")
	}
	return nil
}

// announce sends gratuitous ARP at once, again shortly after, and then
// every second while this host owns the VIP, so LAN hosts whose cache still
// names another gateway (a takeover they missed) follow within a second.
func announce(ifc *net.Interface, ip []byte, stop chan struct{}, log *slog.Logger) {
	for _, d := range []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond} {
		select {
		case <-stop:
			return
		case <-time.After(d):
		}
		if err := garp(ifc, ip); err != nil {
			log.Warn("gratuitous arp", "err", err)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			garp(ifc, ip)
		}
	}
}

// respond answers ARP requests for ip with this interface's MAC until stop
// is closed.
func respond(fd int, ifc *net.Interface, ip []byte, stop chan struct{}) {
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 128)
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
		// An ARP request (op 1) whose target IP is the VIP.
		if n < 42 || binary.BigEndian.Uint16(buf[20:22]) != 1 || !bytes.Equal(buf[38:42], ip) {
			continue
		}
		senderMAC := net.HardwareAddr(append([]byte(nil), buf[22:28]...))
		senderIP := append([]byte(nil), buf[28:32]...)
		reply := arpFrame(2, ifc.HardwareAddr, ip, senderMAC, senderIP)
		copy(reply[0:6], senderMAC) // unicast to the asker
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifc.Index, Halen: 6}
		copy(sa.Addr[:], senderMAC)
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		unix.Sendto(fd, reply, 0, sa)
	}
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

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

// garp broadcasts a gratuitous ARP request for ip from ifc.
func garp(ifc *net.Interface, ip []byte) error {
	fd, sa, err := packetSocket(ifc)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, arpFrame(1, ifc.HardwareAddr, ip, make(net.HardwareAddr, 6), ip), 0, sa)
}

// arpProbe asks who has ip (RFC 5227 probe: sender IP 0.0.0.0) and reports
// whether any host answered within wait.
func arpProbe(ifc *net.Interface, ip []byte, wait time.Duration) (bool, error) {
	fd, sa, err := packetSocket(ifc)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, arpFrame(1, ifc.HardwareAddr, []byte{0, 0, 0, 0}, make(net.HardwareAddr, 6), ip), 0, sa); err != nil {
		return false, err
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 128)
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
		// An ARP reply whose sender IP is ip, from another MAC.
		if n >= 42 && binary.BigEndian.Uint16(buf[20:22]) == 2 && bytes.Equal(buf[28:32], ip) && !bytes.Equal(buf[22:28], ifc.HardwareAddr) {
			return true, nil
		}
	}
}

// Reachable reports whether ip answers an ARP request on dev within wait.
func Reachable(dev string, ip netip.Addr, wait time.Duration) (bool, error) {
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return false, err
	}
	return arpProbe(ifc, ip.AsSlice(), wait)
}

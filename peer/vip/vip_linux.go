package vip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse: another host answers ARP for the VIP.
var ErrInUse = errors.New("another host answers for the virtual IP")

// family is what an IPv4 VIP (ARP, arp_linux.go) and an IPv6 one
// (neighbor discovery, nd_linux.go) do differently: their packet formats
// and sockets. linuxVIP does the rest for both.
type family interface {
	// probe asks ifc's LAN who has the address and reports whether another
	// host answered within wait.
	probe(ifc *net.Interface, wait time.Duration) (bool, error)
	// listen opens the responder's packet socket on ifc, which receives
	// the requests for the address.
	listen(ifc *net.Interface) (int, error)
	// answer replies on fd, the socket listen opened, to frame, received
	// on ifc, when it asks for the address; it ignores any other frame.
	answer(fd int, ifc *net.Interface, frame []byte)
	// announce sends one announcement out of ifc that makes LAN hosts'
	// caches name ifc's MAC for the address.
	announce(ifc *net.Interface) error
	// names are the protocol's name and its announcement's, for errors
	// and logs.
	names() (proto, announcement string)
}

// linuxVIP is a virtual IP answered for from this process: it probes the
// LAN before a takeover, then answers requests for the address and
// announces it until Release.
type linuxVIP struct {
	cfg Config
	fam family
	log *slog.Logger

	mu       sync.Mutex
	stop     chan struct{} // guarded by mu: non-nil while this host answers for the VIP
	claiming bool          // guarded by mu: a Claim is probing (without the lock)
	releases uint64        // guarded by mu: Release calls so far; one during a probe cancels the claim
}

var _ VIP = (*linuxVIP)(nil)

// New returns the VIP cfg describes; the interface must exist. An IPv4
// VIP is answered for with ARP, an IPv6 one with neighbor discovery.
//
// The VIP is answered for in userspace (ARP replies from this process), not
// added to the kernel's interface: when the agent dies, even by SIGKILL,
// its host stops answering for the VIP at once, so the standby's ARP probe
// finds the address free. LAN hosts send their traffic to this host's MAC
// and the kernel forwards it; the VIP itself does not answer ping.
func New(cfg Config, log *slog.Logger) (VIP, error) {
	var fam family = arp{ip: cfg.Addr.Addr().AsSlice()}
	if cfg.Addr.Addr().Is6() {
		nd, err := newND(cfg.Addr)
		if err != nil {
			return nil, err
		}
		fam = nd
	}
	if _, err := net.InterfaceByName(cfg.Dev); err != nil {
		return nil, fmt.Errorf("lan dev %s: %w", cfg.Dev, err)
	}
	return &linuxVIP{cfg: cfg, fam: fam, log: log.With("component", "vip", "vip", cfg.Addr.String(), "dev", cfg.Dev)}, nil
}

func (v *linuxVIP) Owned() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stop != nil
}

// Claim probes for another owner and takes the VIP over when none
// answers. The probe (30 ms on the wire) runs without the lock, so Owned
// and Release never wait for it; a Release while it runs cancels the claim.
func (v *linuxVIP) Claim() error {
	v.mu.Lock()
	if v.stop != nil || v.claiming {
		v.mu.Unlock()
		return nil
	}
	v.claiming = true
	releases := v.releases
	v.mu.Unlock()

	ifc, fd, err := v.probeAndListen()

	v.mu.Lock()
	defer v.mu.Unlock()
	v.claiming = false
	if err != nil {
		return err
	}
	if v.releases != releases {
		unix.Close(fd)
		return errReleased
	}
	stop := make(chan struct{})
	v.stop = stop
	go v.respond(fd, ifc, stop)
	go v.announce(ifc, stop)
	v.log.Info("virtual IP taken over")
	return nil
}

// errReleased: Release was called while a Claim was probing.
var errReleased = errors.New("virtual IP released while the claim was probing")

// probeAndListen asks the LAN whether another host answers for the VIP and,
// when none does, opens the responder's socket.
func (v *linuxVIP) probeAndListen() (*net.Interface, int, error) {
	ifc, err := net.InterfaceByName(v.cfg.Dev)
	if err != nil {
		return nil, -1, err
	}
	proto, _ := v.fam.names()
	if answered, err := v.fam.probe(ifc, 30*time.Millisecond); err != nil {
		return nil, -1, fmt.Errorf("%s probe: %w", proto, err)
	} else if answered {
		return nil, -1, ErrInUse
	}
	fd, err := v.fam.listen(ifc)
	if err != nil {
		return nil, -1, fmt.Errorf("%s responder: %w", proto, err)
	}
	return ifc, fd, nil
}

func (v *linuxVIP) Release() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.releases++
	if v.stop != nil {
		close(v.stop)
		v.stop = nil
		v.log.Info("virtual IP released")
	}
	return nil
}

// announceGaps are the waits between the announcements of a takeover (at
// 0, 50, 150, 300, 500 and 750 ms); after them one goes out every second.
var announceGaps = []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond}

// announce announces the VIP at once, again shortly after, and then every
// second until stop is closed, so LAN hosts whose cache still names another
// gateway (a takeover they missed) follow within a second.
func (v *linuxVIP) announce(ifc *net.Interface, stop chan struct{}) {
	_, what := v.fam.names()
	for _, d := range announceGaps {
		select {
		case <-stop:
			return
		case <-time.After(d):
		}
		if err := v.fam.announce(ifc); err != nil {
			v.log.Warn(what, "err", err)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			v.fam.announce(ifc)
		}
	}
}

// respond answers the requests for the VIP that arrive on fd until stop is
// closed, then closes fd.
func (v *linuxVIP) respond(fd int, ifc *net.Interface, stop chan struct{}) {
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
		v.fam.answer(fd, ifc, buf[:n])
	}
}

// awaitAnswer reads frames from fd, a probe's socket, until answered
// accepts one (true) or wait has passed (false).
func awaitAnswer(fd int, wait time.Duration, answered func(frame []byte) bool) (bool, error) {
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
		if answered(buf[:n]) {
			return true, nil
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

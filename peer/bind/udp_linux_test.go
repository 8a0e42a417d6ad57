package bind

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/meshd/meshd/peer/internal/netnstest"
	"github.com/meshd/meshd/peer/wgcfg"
)

// inNewNetNS runs fn in a network namespace of its own (netnstest.Run)
// with lo up and addrs on it; sockets fn opens stay in that namespace.
func inNewNetNS(t *testing.T, addrs []string, fn func() error) {
	t.Helper()
	var err error
	netnstest.Run(t, false, func() {
		var lo netlink.Link
		if lo, err = netlink.LinkByName("lo"); err == nil {
			err = netlink.LinkSetUp(lo)
		}
		for _, a := range addrs {
			if err != nil {
				return
			}
			var na *netlink.Addr
			if na, err = netlink.ParseAddr(a); err == nil {
				na.Flags = unix.IFA_F_NODAD
				err = netlink.AddrAdd(lo, na)
			}
		}
		if err == nil {
			err = fn()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSendAlternatingFamilies sends through the bind's socket to an IPv4
// and two IPv6 addresses in turn: every packet must reach the address it
// was sent to. With wireguard-go's StdNetBind the IPv6 packet after an
// IPv4 one went to the other IPv6 address (or to one with no route).
func TestSendAlternatingFamilies(t *testing.T) {
	dsts := []string{"127.0.0.1", "fd00::1", "fd00::2"}
	var c *Conn
	recv := map[string]*net.UDPConn{}
	inNewNetNS(t, []string{"fd00::1/128", "fd00::2/128"}, func() error {
		for _, d := range dsts {
			rc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(d), 0)))
			if err != nil {
				return err
			}
			recv[d] = rc
		}
		k, err := wgcfg.GenerateKey()
		if err != nil {
			return err
		}
		c = New(Config{PrivateKey: k, LocalAddrs: func() []netip.Addr { return nil }})
		_, _, err = c.Open(0)
		return err
	})
	defer func() {
		c.Close()
		c.Shutdown()
		for _, rc := range recv {
			rc.Close()
		}
	}()
	const rounds = 50
	for i := range rounds {
		for _, d := range dsts {
			to := recv[d].LocalAddr().(*net.UDPAddr).AddrPort()
			if err := c.Send([][]byte{[]byte(fmt.Sprintf("%s %d", d, i))}, &conn.StdNetEndpoint{AddrPort: to}); err != nil {
				t.Fatalf("send %d to %s: %v", i, to, err)
			}
		}
	}
	for _, d := range dsts {
		rc := recv[d]
		buf := make([]byte, 64)
		for i := range rounds {
			rc.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := rc.Read(buf)
			if err != nil {
				t.Fatalf("%s: packet %d: %v", d, i, err)
			}
			if want := fmt.Sprintf("%s %d", d, i); !bytes.Equal(buf[:n], []byte(want)) {
				t.Fatalf("%s got %q as packet %d; want %q", d, buf[:n], i, want)
			}
		}
	}
}

// TestUDPBatchRoundTrip sends batches through one socket pair to another
// on loopback (segmented by the kernel where it can, and coalesced on
// receipt): every packet arrives whole, in order, from the sender.
func TestUDPBatchRoundTrip(t *testing.T) {
	a, b := NewUDP(), NewUDP()
	_, pa, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	fns, pb, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var want [][]byte
	for i := range 200 {
		size := 1200
		if i%50 == 49 {
			size = 300 // a shorter one ends each run
		}
		p := bytes.Repeat([]byte{byte(i)}, size)
		want = append(want, p)
	}
	to := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pb)}
	for i := 0; i < len(want); i += 100 {
		if err := a.Send(want[i:i+100], to); err != nil {
			t.Fatal(err)
		}
	}
	packets := make([][]byte, b.BatchSize())
	for i := range packets {
		packets[i] = make([]byte, 2000)
	}
	sizes, eps := make([]int, len(packets)), make([]conn.Endpoint, len(packets))
	var got int
	for got < len(want) {
		n, err := fns[0](packets, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if !bytes.Equal(packets[i][:sizes[i]], want[got]) {
				t.Fatalf("packet %d: got %d bytes of %d; want %d of %d", got, sizes[i], packets[i][0], len(want[got]), want[got][0])
			}
			if from := eps[i].(*conn.StdNetEndpoint).AddrPort; from.Port() != pa {
				t.Fatalf("packet %d from %s; want port %d", got, from, pa)
			}
			got++
		}
	}
}

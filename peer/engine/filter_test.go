package engine

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/meshd/meshd/pkg/policy"
	"github.com/meshd/meshd/pkg/policy/filter"
)

const tunOffset = 16 // where wireguard-go puts a packet in its buffers

// tcp4 is a minimal IPv4 TCP segment.
func tcp4(src, dst string, sport, dport uint16, flags byte) []byte {
	b := make([]byte, 40)
	b[0], b[9] = 0x45, 6
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	b[32] = 5 << 4
	b[33] = flags
	return b
}

func withOffset(p []byte) []byte { return append(make([]byte, tunOffset), p...) }

// TestFilteredTUN: with a policy that lets the client reach the site's
// port 443, what arrives from the mesh for 443 is delivered and for 22 is
// not; a flow the site opens itself gets its replies; no policy lets
// everything through.
func TestFilteredTUN(t *testing.T) {
	p, err := policy.Parse([]byte(`{"acls": [{"action": "accept", "src": ["peer:cl1"], "dst": ["peer:site:443"], "proto": "tcp"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	d := policy.NewDirectory([]policy.Peer{
		{Name: "cl1", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}},
		{Name: "site", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.2")}},
		{Name: "other", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.3")}},
	})
	ch := tuntest.NewChannelTUN()
	ft := newFilteredTUN(ch.TUN())
	// The channel device hands every delivered packet to Inbound, one
	// at a time, so a reader counts them while Write runs.
	delivered := func(pkts ...[]byte) int {
		var bufs [][]byte
		for _, p := range pkts {
			bufs = append(bufs, withOffset(p))
		}
		count := make(chan int)
		stop := make(chan struct{})
		go func() {
			got := 0
			for {
				select {
				case <-ch.Inbound:
					got++
				case <-stop:
					count <- got
					return
				}
			}
		}()
		n, err := ft.Write(bufs, tunOffset)
		close(stop)
		got := <-count
		if err != nil || n != len(bufs) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		return got
	}
	// No policy: everything passes.
	if got := delivered(tcp4("100.64.0.3", "100.64.0.2", 40000, 22, 0x02)); got != 1 {
		t.Fatalf("without a policy %d of 1 packets were delivered", got)
	}
	ft.f.SetRules(filter.ForPeer(p, d, "site"))
	if got := delivered(tcp4("100.64.0.1", "100.64.0.2", 40001, 443, 0x02)); got != 1 {
		t.Fatal("cl1 -> site:443 was not delivered")
	}
	if got := delivered(tcp4("100.64.0.1", "100.64.0.2", 40002, 22, 0x02), tcp4("100.64.0.3", "100.64.0.2", 40003, 443, 0x02)); got != 0 {
		t.Fatalf("%d packets the policy denies were delivered", got)
	}
	// The site opens a flow to other's port 80 (Read: from the host into
	// the mesh); the reply passes though no rule lets other in.
	go func() { ch.Outbound <- tcp4("100.64.0.2", "100.64.0.3", 50000, 80, 0x02) }()
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	if n, err := ft.Read(bufs, sizes, tunOffset); n != 1 || err != nil || sizes[0] != 40 {
		t.Fatalf("Read = %d, %v, size %d", n, err, sizes[0])
	}
	if got := delivered(tcp4("100.64.0.3", "100.64.0.2", 80, 50000, 0x12)); got != 1 {
		t.Fatal("the reply to a flow the site opened was not delivered")
	}
	if ft.f.Stats().Dropped == 0 {
		t.Fatal("no drop counted")
	}
}

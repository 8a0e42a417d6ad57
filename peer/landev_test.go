package peer

import (
	"net/netip"
	"testing"
)

func TestLANDevFor(t *testing.T) {
	dev, err := lanDevFor(netip.MustParseAddr("127.0.0.9"))
	if err != nil || dev != "lo" {
		t.Fatalf("lanDevFor(127.0.0.9) = %q, %v; want lo", dev, err)
	}
	if dev, err := lanDevFor(netip.MustParseAddr("203.0.113.77")); err == nil {
		t.Fatalf("lanDevFor(203.0.113.77) = %q; want an error (no interface on that subnet)", dev)
	}
}

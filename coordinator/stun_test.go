package coordinator

import (
	"net"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/meshd/meshd/pkg/logging"
)

func TestSTUNServer(t *testing.T) {
	s, err := newSTUNServer("127.0.0.1:0", logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	go s.serve()
	defer s.Close()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.Port()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Garbage gets no answer.
	c.Write([]byte("not stun at all"))
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 1500)
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("answered garbage with %d bytes", n)
	}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	c.Write(req.Raw)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &stun.Message{Raw: buf[:n]}
	if err := resp.Decode(); err != nil || resp.TransactionID != req.TransactionID || resp.Type != stun.BindingSuccess {
		t.Fatalf("got %v, %v; want a binding success for our transaction", resp, err)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.UDPAddr)
	if !xor.IP.Equal(local.IP) || xor.Port != local.Port {
		t.Fatalf("mapped %v:%d; want %v", xor.IP, xor.Port, local)
	}
	if n > len(req.Raw)+64 {
		t.Fatalf("answer of %d bytes to a %d-byte request", n, len(req.Raw))
	}
}

package bind

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/pion/turn/v4"
)

// loopback6Relay allocates relayed addresses on ::1 (pion's static
// generator listens on the family the request asks for, IPv4 by default).
type loopback6Relay struct{}

func (loopback6Relay) Validate() error { return nil }

func (loopback6Relay) AllocatePacketConn(string, int) (net.PacketConn, net.Addr, error) {
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return nil, nil, err
	}
	return pc, pc.LocalAddr(), nil
}

func (loopback6Relay) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("no TCP allocations")
}

// TestRelayTCPOverIPv6: a relay reached over TCP at an IPv6 address (a
// peer whose network blocks UDP, on an IPv6 underlay) gives an
// allocation; the TURN client must not insist on an IPv4 server address.
func TestRelayTCPOverIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	key := turn.GenerateAuthKey("u", "meshd", "p")
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "meshd",
		AuthHandler: func(user, realm string, _ net.Addr) ([]byte, bool) {
			return key, user == "u"
		},
		ListenerConfigs: []turn.ListenerConfig{{Listener: ln, RelayAddressGenerator: loopback6Relay{}}},
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	s := newSide(t)
	s.c.SetRelays(api.RelayConfig{Servers: []api.RelayServer{{URL: "turn:" + ln.Addr().String() + "?transport=tcp", Username: "u", Password: "p"}},
		Expires: time.Now().Add(time.Hour)})
	if got := waitRelay(t, s); got.Addr() != netip.IPv6Loopback() {
		t.Fatalf("relayed address %s; want one on ::1", got)
	}
}

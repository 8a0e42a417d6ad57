package endpoints

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func TestFilter(t *testing.T) {
	p := netip.MustParsePrefix
	ifs := []Iface{
		{Name: "lo", Up: true, Loop: true, Addrs: []netip.Prefix{p("127.0.0.1/8")}},
		{Name: "eth0", Up: true, Addrs: []netip.Prefix{p("10.99.0.21/24"), p("fe80::1/64"), p("2001:db8::5/64")}},
		{Name: "eth1", Up: false, Addrs: []netip.Prefix{p("192.168.10.2/24")}},
		{Name: "meshd0", Up: true, Addrs: []netip.Prefix{p("100.96.0.5/32")}},
		{Name: "wg0", Up: true, P2P: true, Addrs: []netip.Prefix{p("10.97.0.1/24")}},
	}
	got := Filter(ifs, []string{"meshd0"})
	want := []netip.Addr{netip.MustParseAddr("10.99.0.21"), netip.MustParseAddr("2001:db8::5")}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v; want %v", got, want)
	}
}

func TestFormat(t *testing.T) {
	ap := netip.MustParseAddrPort
	got := Format([]netip.AddrPort{ap("[2001:db8::5]:51820"), ap("10.0.0.2:51820"), ap("10.0.0.1:51820"), ap("10.0.0.2:51820")})
	want := []string{"10.0.0.1:51820", "10.0.0.2:51820", "[2001:db8::5]:51820"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v; want %v", got, want)
	}
}

// responder is a minimal STUN server on loopback.
func responder(t *testing.T) string {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil {
				continue
			}
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: from.IP, Port: from.Port})
			conn.WriteToUDP(resp.Raw, from)
		}
	}()
	return conn.LocalAddr().String()
}

func TestSTUN(t *testing.T) {
	srv := responder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	// A dead server first: the live one still answers.
	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	got, err := STUN(ctx, []string{deadAddr, srv})
	if err != nil {
		t.Fatal(err)
	}
	if got != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("got %v; want 127.0.0.1", got)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := STUN(ctx2, []string{deadAddr}); err == nil {
		t.Fatal("no server answered, yet STUN succeeded")
	}
}

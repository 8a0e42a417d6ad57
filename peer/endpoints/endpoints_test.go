package endpoints

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func TestFilter(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	eth0 := Iface{Name: "eth0", Up: true, Addrs: []netip.Prefix{p("10.99.0.21/24"), p("fe80::1/64"), p("2001:db8::5/64")}}
	tests := []struct {
		name    string
		ifs     []Iface
		exclude []string
		want    []netip.Addr
	}{
		{"none", nil, nil, nil},
		{"unicast v4 and v6, link-local dropped", []Iface{eth0}, nil, []netip.Addr{a("10.99.0.21"), a("2001:db8::5")}},
		{"loopback interface", []Iface{{Name: "lo", Up: true, Loop: true, Addrs: []netip.Prefix{p("127.0.0.1/8"), p("::1/128")}}}, nil, nil},
		{"down interface", []Iface{{Name: "eth1", Addrs: []netip.Prefix{p("192.168.10.2/24")}}}, nil, nil},
		{"excluded mesh interface", []Iface{eth0, {Name: "meshd0", Up: true, Addrs: []netip.Prefix{p("100.96.0.5/12")}}}, []string{"meshd0"}, []netip.Addr{a("10.99.0.21"), a("2001:db8::5")}},
		{"excluded several", []Iface{eth0, {Name: "eth2", Up: true, Addrs: []netip.Prefix{p("172.16.0.2/16")}}}, []string{"eth0", "meshd0"}, []netip.Addr{a("172.16.0.2")}},
		{"point-to-point tunnel", []Iface{{Name: "wg0", Up: true, P2P: true, Addrs: []netip.Prefix{p("10.97.0.1/24")}}}, nil, nil},
		{"link-local v4", []Iface{{Name: "eth0", Up: true, Addrs: []netip.Prefix{p("169.254.3.4/16")}}}, nil, nil},
		{"loopback address on a normal interface", []Iface{{Name: "dummy0", Up: true, Addrs: []netip.Prefix{p("127.0.0.2/8")}}}, nil, nil},
		{"multicast and unspecified", []Iface{{Name: "eth0", Up: true, Addrs: []netip.Prefix{p("224.0.0.1/32"), p("0.0.0.0/0"), p("ff02::1/128"), p("::/0")}}}, nil, nil},
		{"v4-mapped is v4", []Iface{{Name: "eth0", Up: true, Addrs: []netip.Prefix{p("::ffff:192.0.2.7/120")}}}, nil, []netip.Addr{a("192.0.2.7")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Filter(tt.ifs, tt.exclude); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	ap := netip.MustParseAddrPort
	// Ten local addresses, given in reverse; sorted by address they are
	// 10.0.0.1, 10.0.0.2, ..., 10.0.0.10.
	var many []netip.AddrPort
	for i := 10; i > 0; i-- {
		many = append(many, ap(fmt.Sprintf("10.0.0.%d:51820", i)))
	}
	first := func(n int) []string {
		var out []string
		for i := 1; i <= n; i++ {
			out = append(out, fmt.Sprintf("10.0.0.%d:51820", i))
		}
		return out
	}
	tests := []struct {
		name   string
		local  []netip.AddrPort
		public string
		want   []string
	}{
		{"nothing", nil, "", []string{}},
		{"sorted, unique, v4 first, v6 in brackets",
			[]netip.AddrPort{ap("[2001:db8::5]:51820"), ap("10.0.0.2:51820"), ap("10.0.0.1:51820"), ap("10.0.0.2:51820")}, "",
			[]string{"10.0.0.1:51820", "10.0.0.2:51820", "[2001:db8::5]:51820"}},
		{"public added", []netip.AddrPort{ap("192.168.1.2:51820")}, "203.0.113.9",
			[]string{"192.168.1.2:51820", "203.0.113.9:51820"}},
		{"public same as local", []netip.AddrPort{ap("203.0.113.9:51820")}, "203.0.113.9",
			[]string{"203.0.113.9:51820"}},
		{"public v6", []netip.AddrPort{ap("192.168.1.2:51820")}, "2001:db8::9",
			[]string{"192.168.1.2:51820", "[2001:db8::9]:51820"}},
		{"capped", many, "", first(MaxEndpoints)},
		{"capped keeps public", many, "2001:db8::9", append(first(MaxEndpoints-1), "[2001:db8::9]:51820")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pub netip.Addr
			if tt.public != "" {
				pub = netip.MustParseAddr(tt.public)
			}
			in := slices.Clone(tt.local)
			got := Merge(tt.local, pub, 51820)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
			if !slices.Equal(in, tt.local) {
				t.Fatal("Merge changed its input")
			}
			for _, e := range got {
				if ap, err := netip.ParseAddrPort(e); err != nil || ap.String() != e {
					t.Fatalf("%q does not round-trip as ip:port: %v", e, err)
				}
			}
		})
	}
}

// responder is a minimal STUN server on loopback that answers binding
// requests with the sender's address; it counts the requests it sees.
func responder(t *testing.T, n *atomic.Int32) string {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			k, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:k]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest {
				continue
			}
			if n != nil && n.Add(1) == 1 {
				continue // drop the first request: the client must retransmit
			}
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: from.IP, Port: from.Port})
			conn.WriteToUDP(resp.Raw, from)
		}
	}()
	return conn.LocalAddr().String()
}

// deadAddr is a loopback UDP address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestSTUN(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	t.Run("dead and live server", func(t *testing.T) {
		got, err := STUN(ctx, []string{deadAddr(t), responder(t, nil)})
		if err != nil {
			t.Fatal(err)
		}
		if got != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("got %v; want 127.0.0.1", got)
		}
	})
	t.Run("retransmits", func(t *testing.T) {
		var n atomic.Int32
		if _, err := STUN(ctx, []string{responder(t, &n)}); err != nil {
			t.Fatal(err)
		}
		if got := n.Load(); got < 2 {
			t.Fatalf("server saw %d requests; want at least 2", got)
		}
	})
	t.Run("host name", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(responder(t, nil))
		if _, err := STUN(ctx, []string{net.JoinHostPort("localhost", port)}); err != nil {
			t.Skipf("localhost does not resolve to 127.0.0.1 here: %v", err)
		}
	})
	t.Run("nobody answers", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := STUN(short, []string{deadAddr(t)})
		if err == nil || !strings.Contains(err.Error(), "answered") {
			t.Fatalf("got %v; want an error saying no server answered", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("gave up after %v; want about the context's 300ms", d)
		}
	})
	t.Run("no servers", func(t *testing.T) {
		if _, err := STUN(ctx, nil); err == nil {
			t.Fatal("got no error")
		}
	})
	t.Run("unresolvable", func(t *testing.T) {
		if _, err := STUN(ctx, []string{"not a host port"}); err == nil || !strings.Contains(err.Error(), "resolve") {
			t.Fatalf("got %v; want a resolve error", err)
		}
	})
}

func TestMapped(t *testing.T) {
	id := stun.NewTransactionID()
	other := stun.NewTransactionID()
	build := func(id [stun.TransactionIDSize]byte, typ stun.MessageType, ip string) []byte {
		setters := []stun.Setter{stun.NewTransactionIDSetter(id), typ}
		if ip != "" {
			setters = append(setters, &stun.XORMappedAddress{IP: net.ParseIP(ip), Port: 4242})
		}
		return stun.MustBuild(setters...).Raw
	}
	tests := []struct {
		name string
		pkt  []byte
		want string // "" for rejected
	}{
		{"v4", build(id, stun.BindingSuccess, "198.51.100.4"), "198.51.100.4"},
		{"v6", build(id, stun.BindingSuccess, "2001:db8::4"), "2001:db8::4"},
		{"other transaction", build(other, stun.BindingSuccess, "198.51.100.4"), ""},
		{"error response", build(id, stun.BindingError, "198.51.100.4"), ""},
		{"no mapped address", build(id, stun.BindingSuccess, ""), ""},
		{"unspecified", build(id, stun.BindingSuccess, "0.0.0.0"), ""},
		{"garbage", []byte("hello"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := mapped(new(stun.Message), tt.pkt, id)
			got := ""
			if ok {
				got = a.String()
			}
			if got != tt.want {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
}

func TestDiscover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := Discover(ctx, 51820, []string{responder(t, nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "127.0.0.1:51820") {
		t.Fatalf("got %v; want the STUN address 127.0.0.1:51820 among them", got)
	}
	if len(got) > MaxEndpoints || !slices.IsSortedFunc(got, func(a, b string) int {
		return compare(netip.MustParseAddrPort(a), netip.MustParseAddrPort(b))
	}) {
		t.Fatalf("got %v; want at most %d, sorted", got, MaxEndpoints)
	}

	// Without STUN servers only local addresses come back; a failing STUN
	// still returns them, with the error.
	local, err := Discover(ctx, 51820, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	withErr, err := Discover(short, 51820, []string{deadAddr(t)}, nil)
	if err == nil || !slices.Equal(withErr, local) {
		t.Fatalf("got %v, %v; want %v and an error", withErr, err, local)
	}
}

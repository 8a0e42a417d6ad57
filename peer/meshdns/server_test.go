package meshdns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

// No server goroutine outlives its Listener's Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve starts s on a free loopback port, closed when the test ends.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	var last error
	for range 10 { // the free UDP port may be taken over TCP
		l, err := s.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
		if err == nil {
			t.Cleanup(func() { l.Close() })
			return l.Addr().String()
		}
		last = err
	}
	t.Fatal(last)
	return ""
}

func query(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	m, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", network, name, err)
	}
	return m
}

func TestServerOverUDPAndTCP(t *testing.T) {
	s := NewServer(nil)
	s.Set(Build(testInput()))
	addr := serve(t, s)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			for _, tt := range []struct {
				name    string
				qtype   uint16
				rcode   int
				answers []string
				soa     string
			}{
				{"cl1.default.mesh.", dns.TypeA, dns.RcodeSuccess, []string{"A 100.96.0.5"}, ""},
				{"GWA1.default.Mesh.", dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA fd7a:115c::2"}, ""},
				{"5.0.96.100.in-addr.arpa.", dns.TypePTR, dns.RcodeSuccess, []string{"PTR cl1.default.mesh."}, ""},
				{"nope.default.mesh.", dns.TypeA, dns.RcodeNameError, nil, "mesh."},
				{"example.com.", dns.TypeA, dns.RcodeRefused, nil, ""},
			} {
				got := decode(query(t, network, addr, tt.name, tt.qtype))
				if got.rcode != tt.rcode || !slices.Equal(got.answers, tt.answers) || got.soa != tt.soa {
					t.Errorf("%s %s: rcode %s answers %q SOA %q; want %s %q %q", tt.name, dns.TypeToString[tt.qtype],
						dns.RcodeToString[got.rcode], got.answers, got.soa, dns.RcodeToString[tt.rcode], tt.answers, tt.soa)
				}
			}
		})
	}
}

func TestServerSwapsTables(t *testing.T) {
	s := NewServer(nil)
	addr := serve(t, s)
	if m := query(t, "udp", addr, "cl1.default.mesh.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("before the first table: %s; want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	in := testInput()
	s.Set(Build(in))
	if m := query(t, "udp", addr, "cl3.default.mesh.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("cl3 before it joined: %s; want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	in.Hosts = append(in.Hosts, Host{Name: "cl3", Addrs: addrs("100.96.0.7")})
	s.Set(Build(in))
	if got := decode(query(t, "udp", addr, "cl3.default.mesh.", dns.TypeA)).answers; !slices.Equal(got, []string{"A 100.96.0.7"}) {
		t.Fatalf("cl3 after it joined: %q", got)
	}
}

// Swapping tables while queries run: each query sees one whole table.
func TestServerSwapUnderLoad(t *testing.T) {
	s := NewServer(nil)
	addr := serve(t, s)
	tables := make([]*Table, 2)
	for i := range tables {
		in := testInput()
		in.Hosts = []Host{{Name: "x", Addrs: addrs(fmt.Sprintf("100.96.1.%d", i+1), fmt.Sprintf("100.96.2.%d", i+1))}}
		tables[i] = Build(in)
	}
	s.Set(tables[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.Set(tables[i%2])
		}
	})
	for range 200 {
		got := decode(query(t, "udp", addr, "x.default.mesh.", dns.TypeA)).answers
		if !slices.Equal(got, []string{"A 100.96.1.1", "A 100.96.2.1"}) && !slices.Equal(got, []string{"A 100.96.1.2", "A 100.96.2.2"}) {
			t.Fatalf("answers %q mix two tables", got)
		}
	}
	close(stop)
	wg.Wait()
}

// A peer with many addresses: UDP without EDNS gets a truncated answer,
// TCP the whole of it.
func TestServerTruncatesUDP(t *testing.T) {
	s := NewServer(nil)
	h := Host{Name: "many"}
	for i := range 100 {
		h.Addrs = append(h.Addrs, netip.MustParseAddr(fmt.Sprintf("fd7a:115c::%x", i+1)))
	}
	in := testInput()
	in.Hosts = []Host{h}
	s.Set(Build(in))
	addr := serve(t, s)
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	req := new(dns.Msg)
	req.SetQuestion("many.default.mesh.", dns.TypeAAAA)
	m, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || len(m.Answer) >= 100 {
		t.Fatalf("UDP: truncated %t with %d answers; want the TC bit and fewer than 100", m.Truncated, len(m.Answer))
	}
	if m := query(t, "tcp", addr, "many.default.mesh.", dns.TypeAAAA); m.Truncated || len(m.Answer) != 100 {
		t.Fatalf("TCP: truncated %t with %d answers; want all 100", m.Truncated, len(m.Answer))
	}
}

func TestServerPortInUse(t *testing.T) {
	s := NewServer(nil)
	addr := serve(t, s)
	_, err := s.Listen(netip.MustParseAddrPort(addr))
	if !errors.Is(err, ErrPortInUse) {
		t.Fatalf("a second listener on %s: %v; want ErrPortInUse", addr, err)
	}
	// Nothing of the failed attempt holds the port: the first still answers.
	if m := query(t, "tcp", addr, "cl1.default.mesh.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("the first listener: %s; want SERVFAIL (no table)", dns.RcodeToString[m.Rcode])
	}
}

func TestListenerCloseFreesThePort(t *testing.T) {
	s := NewServer(nil)
	l, err := s.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	l.Close() // twice is fine
	l2, err := s.Listen(l.Addr())
	if err != nil {
		t.Fatalf("listen again on %s after Close: %v", l.Addr(), err)
	}
	l2.Close()
}

func TestFromThisHost(t *testing.T) {
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	for _, tt := range []struct {
		name          string
		remote, local net.Addr
		want          bool
	}{
		{"loopback", udp("127.0.0.1:4000"), udp("100.96.0.5:53"), true},
		{"the overlay address itself", udp("100.96.0.5:4000"), udp("100.96.0.5:53"), true},
		{"over TCP", tcp("100.96.0.5:4000"), tcp("100.96.0.5:53"), true},
		{"IPv6 loopback", tcp("[::1]:4000"), tcp("[::1]:53"), true},
		{"another peer", udp("100.96.0.6:4000"), udp("100.96.0.5:53"), false},
		{"a LAN host", tcp("192.168.10.10:4000"), tcp("100.96.0.5:53"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromThisHost(tt.remote, tt.local); got != tt.want {
				t.Fatalf("got %t; want %t", got, tt.want)
			}
		})
	}
}

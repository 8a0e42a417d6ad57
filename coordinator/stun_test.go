package coordinator

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/logging"
)

// stunQuery sends pkts from c, then a binding request, and returns the
// mapped address of the first answer. The server handles datagrams in order,
// so an answer to any of pkts would arrive first and fail the test.
func stunQuery(t *testing.T, c *net.UDPConn, pkts ...[]byte) netip.AddrPort {
	t.Helper()
	for _, p := range pkts {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer to a binding request: %v", err)
	}
	resp := &stun.Message{Raw: buf[:n]}
	if err := resp.Decode(); err != nil || resp.TransactionID != req.TransactionID || resp.Type != stun.BindingSuccess {
		t.Fatalf("got %v, %v; want a binding success for our request (an earlier datagram was answered?)", resp, err)
	}
	if err := stun.Fingerprint.Check(resp); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	if n > len(req.Raw)+32 {
		t.Fatalf("answer of %d bytes to a %d-byte request", n, len(req.Raw))
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	ip, _ := netip.AddrFromSlice(xor.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
}

func TestSTUNServer(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			s, err := newSTUNServer(net.JoinHostPort(host, "0"), logging.Discard())
			if err != nil {
				if host == "::1" {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			defer s.Close()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(host), uint16(s.Port()))))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			indication := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication))
			success := stun.MustBuild(stun.TransactionID, stun.BindingSuccess)
			got := stunQuery(t, c,
				[]byte("not stun at all"),
				success.Raw[:12], // truncated header
				indication.Raw,   // not a request
				success.Raw,      // a response
				append(slices.Clone(success.Raw[:20]), 0, 1, 0), // length field disagrees
			)
			want := c.LocalAddr().(*net.UDPAddr).AddrPort()
			if got != netip.AddrPortFrom(want.Addr().Unmap(), want.Port()) {
				t.Fatalf("mapped %v; want %v", got, want)
			}
		})
	}
}

func TestSTUNAnswer(t *testing.T) {
	withSoftware := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("test"), stun.Fingerprint)
	tests := []struct {
		name string
		pkt  []byte
		ok   bool
	}{
		{"empty", nil, false},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n and some more bytes"), false},
		{"binding request", stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw, true},
		{"request with attributes", withSoftware.Raw, true},
		{"binding success", stun.MustBuild(stun.TransactionID, stun.BindingSuccess).Raw, false},
		{"allocate request", stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest)).Raw, false},
	}
	ip := netip.MustParseAddr("2001:db8::1").AsSlice()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, ok := stunAnswer(new(stun.Message), tt.pkt, ip, 51820)
			if ok != tt.ok {
				t.Fatalf("got %v; want %v", ok, tt.ok)
			}
			if ok && len(resp) > 52 {
				t.Fatalf("answer of %d bytes; want at most 52", len(resp))
			}
		})
	}
}

func TestSTUNAdvertise(t *testing.T) {
	tests := []struct {
		url  string
		port int
		want string
	}{
		{"https://127.0.0.1:8443", 3478, "127.0.0.1:3478"},
		{"https://[2001:db8::1]:8443", 3478, "[2001:db8::1]:3478"},
		{"https://coord1.example.net:8443", 40000, "coord1.example.net:40000"},
		{"https://coord1.example.net", 3478, "coord1.example.net:3478"},
		{"::not a url", 3478, ""},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			if got := stunAdvertise(tt.url, tt.port); got != tt.want {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// TestServerSTUN checks that a coordinator answers STUN from New on,
// registers the bound address in the replicated state, where network maps
// find it, and reports a STUN port it cannot bind.
func TestServerSTUN(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Name: "c1", DataDir: t.TempDir(), ClusterKey: key,
		APIListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", STUNListen: "127.0.0.1:0",
		Logger: logging.Discard(),
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	addr := fmt.Sprintf("127.0.0.1:%d", srv.stun.Port())
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := stunQuery(t, c), c.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
		t.Fatalf("mapped %v; want %v", got, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.After(10 * time.Second)
	for {
		var got *state.Coordinator
		var servers []string
		srv.Store().Read(func(t *state.Tables, _ uint64) {
			if c, ok := t.Coordinators["c1"]; ok {
				cc := *c
				got = &cc
			}
			servers = netmap.STUNServers(t)
		})
		if got != nil {
			if got.STUNAddr != addr || !slices.Equal(servers, []string{addr}) {
				t.Fatalf("registered %+v, map lists %v; want STUN address %s", got, servers, addr)
			}
			break
		}
		select {
		case <-srv.Store().WatchCh():
		case <-deadline:
			t.Fatal("coordinator not registered within 10s")
		}
	}

	// A second coordinator cannot take the same port and says so.
	cfg.Name, cfg.DataDir, cfg.STUNListen = "c2", t.TempDir(), addr
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "stun listen") {
		t.Fatalf("got %v; want a stun listen error", err)
	}
}

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
	"github.com/meshd/meshd/coordinator/relay"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/logging"
)

// stunQuery sends pkts from c, then the binding request req (a plain one
// when nil), and returns the mapped address of the first answer. The server
// handles datagrams in order, so an answer to any of pkts would arrive first
// and fail the test.
func stunQuery(t *testing.T, c *net.UDPConn, req *stun.Message, pkts ...[]byte) netip.AddrPort {
	t.Helper()
	for _, p := range pkts {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if req == nil {
		req = stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	}
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
	if n > 52 {
		t.Fatalf("answer of %d bytes to a %d-byte request; want at most 52", n, len(req.Raw))
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	ip, _ := netip.AddrFromSlice(xor.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
}

// TestSTUNServer checks the relay's STUN side: binding requests are
// answered with the sender's address, and what is not a STUN request it
// serves is dropped without an answer.
func TestSTUNServer(t *testing.T) {
	indication := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication))
	success := stun.MustBuild(stun.TransactionID, stun.BindingSuccess)
	junk := []struct {
		name string
		pkt  []byte
	}{
		{"empty", []byte{}},
		{"not stun at all", []byte("not stun at all")},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n and some more bytes")},
		{"truncated header", success.Raw[:12]},
		{"an indication", indication.Raw},
		{"a response", success.Raw},
		{"length field disagrees", append(slices.Clone(success.Raw[:20]), 0, 1, 0)},
		{"channel data without a channel", []byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4}},
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			conn, err := bindRelayUDP(net.JoinHostPort(host, "0"))
			if err != nil {
				if host == "::1" {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			r, err := relay.New(relay.Config{PacketConn: conn, Logger: logging.Discard()}) // background goroutines must not log to t while subtests end
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			c, err := net.DialUDP("udp", nil, conn.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := c.LocalAddr().(*net.UDPAddr).AddrPort()
			want = netip.AddrPortFrom(want.Addr().Unmap(), want.Port())
			for _, j := range junk {
				t.Run(j.name, func(t *testing.T) {
					if got := stunQuery(t, c, nil, j.pkt); got != want {
						t.Fatalf("mapped %v; want %v", got, want)
					}
				})
			}
			t.Run("request with attributes", func(t *testing.T) {
				req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("test"), stun.Fingerprint)
				if got := stunQuery(t, c, req); got != want {
					t.Fatalf("mapped %v; want %v", got, want)
				}
			})
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
	addr := fmt.Sprintf("127.0.0.1:%d", srv.relayUDP.LocalAddr().(*net.UDPAddr).Port)
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := stunQuery(t, c, nil), c.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
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

package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/relay"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/tlspin"
)

// testRelayCap is the relay bandwidth cap in TestRelay, bytes per second.
const testRelayCap = 200_000

// turnPeer is a peer's TURN client on one relay and, once allocated, its
// relayed socket.
type turnPeer struct {
	client *turn.Client
	conn   net.PacketConn // to the relay
	relay  net.PacketConn // the allocation; nil until allocated
	once   sync.Once
}

// close releases the allocation and the client; it is safe to call twice.
func (p *turnPeer) close() {
	p.once.Do(func() {
		if p.relay != nil {
			p.relay.Close()
		}
		p.client.Close()
		p.conn.Close()
	})
}

// dialTURN connects to the relay at addr over UDP, or over TLS pinned to
// pin when pin is not nil, and allocates with user and pass. The client is
// closed at cleanup.
func dialTURN(t *testing.T, addr string, pin *[32]byte, user, pass string) (*turnPeer, error) {
	t.Helper()
	var conn net.PacketConn
	if pin == nil {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	} else {
		c, err := tls.Dial("tcp", addr, tlspin.ClientConfig(*pin))
		if err != nil {
			t.Fatalf("dial the TLS relay: %v", err)
		}
		conn = turn.NewSTUNConn(c)
	}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, RTO: 100 * time.Millisecond,
		// The client's read goroutine may log once more after the test
		// ends (its socket closing), which t.Log must not see.
		LoggerFactory: logging.Pion(slog.New(slog.DiscardHandler)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	p := &turnPeer{client: client, conn: conn}
	t.Cleanup(p.close)
	p.relay, err = client.Allocate()
	return p, err
}

// relayOf returns the URL's host:port and whether it is TURN over TLS.
func relayOf(t *testing.T, s api.RelayServer) (string, bool) {
	t.Helper()
	rest, tlsURL := strings.CutPrefix(s.URL, "turns:")
	if !tlsURL {
		rest, _ = strings.CutPrefix(s.URL, "turn:")
	}
	hostPort, _, _ := strings.Cut(rest, "?")
	return hostPort, tlsURL
}

// receive reads datagrams on c until want arrives or the deadline passes.
func receive(t *testing.T, c net.PacketConn, want []byte, from net.Addr) {
	t.Helper()
	buf := make([]byte, 1600)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("waiting for %q from %v: %v", want, from, err)
		}
		if bytes.Equal(buf[:n], want) {
			if addr.String() != from.String() {
				t.Fatalf("got %q from %v; want it from %v", want, addr, from)
			}
			return
		}
	}
}

// TestRelay runs a coordinator with its TURN relay on UDP and TLS and
// drives it with pion TURN clients holding credentials from GET /v1/relay:
// what a credential admits, where a permission may point, the bandwidth
// cap, relaying between two peers' allocations, and the relayed address in
// heartbeats and network maps. The coordinator stops without leaving
// goroutines behind.
func TestRelay(t *testing.T) {
	base := runtime.NumGoroutine()
	ctx := context.Background()
	srv, admin, stop := startSingleWith(t, func(c *Config) {
		c.STUNListen, c.RelayTLSListen, c.RelayBandwidth = "127.0.0.1:0", "127.0.0.1:0", testRelayCap
	})

	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 3}, &tok); err != nil {
		t.Fatal(err)
	}
	type peer struct {
		id  string
		api *apiclient.Client
		cfg api.RelayConfig
	}
	peers := map[string]*peer{}
	for _, name := range []string{"a", "b", "gone"} {
		j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), OmitMap: true})
		if err != nil {
			t.Fatal(err)
		}
		p := &peer{id: j.PeerID, api: apiclient.New(admin.URLs(), srv.Pin(), j.Credential)}
		if err := p.api.Do(ctx, http.MethodGet, "/v1/relay", nil, &p.cfg); err != nil {
			t.Fatal(err)
		}
		peers[name] = p
	}
	a, b, gone := peers["a"], peers["b"], peers["gone"]

	// The answer: the UDP relay, then the TLS one, with a credential for
	// this peer that expires in an hour.
	udpPort := srv.relayUDP.LocalAddr().(*net.UDPAddr).Port
	_, tlsPort, _ := net.SplitHostPort(srv.relayTLSAddr)
	wantURLs := []string{fmt.Sprintf("turn:127.0.0.1:%d?transport=udp", udpPort), fmt.Sprintf("turns:127.0.0.1:%s?transport=tcp", tlsPort)}
	if len(a.cfg.Servers) != 2 {
		t.Fatalf("got relays %+v; want %v", a.cfg.Servers, wantURLs)
	}
	wantUser := fmt.Sprintf("%d:%s", a.cfg.Expires.Unix(), a.id)
	for i, s := range a.cfg.Servers {
		if s.URL != wantURLs[i] || s.Username != wantUser || s.Password != relay.Password(srv.relaySecret[:], wantUser) || s.Pinned != (i == 1) {
			t.Fatalf("relay %d: got %+v; want %s for %s, pinned only over TLS", i, s, wantURLs[i], wantUser)
		}
	}
	if d := time.Until(a.cfg.Expires); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("credential expires in %s; want an hour", d)
	}
	udpAddr, _ := relayOf(t, a.cfg.Servers[0])
	tlsAddr, _ := relayOf(t, a.cfg.Servers[1])
	pin := srv.Pin()

	// A removed peer's allocation ends, and its credential admits no more.
	goneAlloc, err := dialTURN(t, udpAddr, nil, gone.cfg.Servers[0].Username, gone.cfg.Servers[0].Password)
	if err != nil {
		t.Fatalf("allocate before removal: %v", err)
	}
	if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/gone", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the removed peer's allocation to end", func() bool { return srv.relay.Allocations(gone.id) == 0 })

	t.Run("credentials", func(t *testing.T) {
		secret := srv.relaySecret[:]
		expiredUser, expiredPass := relay.Credential(secret, a.id, time.Now().Add(-time.Minute))
		otherSecretUser, otherSecretPass := relay.Credential([]byte("not the cluster's"), a.id, time.Now().Add(time.Hour))
		stolenUser := strings.Replace(a.cfg.Servers[0].Username, a.id, b.id, 1)
		for _, tt := range []struct {
			name, user, pass string
			ok               bool
		}{
			{"from /v1/relay", a.cfg.Servers[0].Username, a.cfg.Servers[0].Password, true},
			{"none", "", "", false},
			{"expired", expiredUser, expiredPass, false},
			{"another peer's name with this one's password", stolenUser, a.cfg.Servers[0].Password, false},
			{"made with another secret", otherSecretUser, otherSecretPass, false},
			{"a removed peer's", gone.cfg.Servers[0].Username, gone.cfg.Servers[0].Password, false},
			{"not a relay username", "a:b:c", relay.Password(secret, "a:b:c"), false},
		} {
			t.Run(tt.name, func(t *testing.T) {
				p, err := dialTURN(t, udpAddr, nil, tt.user, tt.pass)
				if (err == nil) != tt.ok {
					t.Fatalf("allocate: got %v; want success %v", err, tt.ok)
				}
				if err == nil {
					ra := p.relay.LocalAddr().(*net.UDPAddr)
					if !ra.IP.Equal(net.IPv4(127, 0, 0, 1)) {
						t.Fatalf("relayed address %v; want one on the advertised host 127.0.0.1", ra)
					}
					p.close() // frees the quota
				}
			})
		}
	})

	// Two peers relay to each other, allocation to allocation.
	pa, err := dialTURN(t, udpAddr, nil, a.cfg.Servers[0].Username, a.cfg.Servers[0].Password)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := dialTURN(t, udpAddr, nil, b.cfg.Servers[0].Username, b.cfg.Servers[0].Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.client.CreatePermission(pa.relay.LocalAddr()); err != nil {
		t.Fatalf("b permits a's relay: %v", err)
	}
	t.Run("relays between two allocations", func(t *testing.T) {
		msg := []byte("hello from a")
		if _, err := pa.relay.WriteTo(msg, pb.relay.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		receive(t, pb.relay, msg, pa.relay.LocalAddr())
	})

	t.Run("permissions only towards the cluster's relays", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			addr *net.UDPAddr
			ok   bool
		}{
			{"a relay of this cluster", pb.relay.LocalAddr().(*net.UDPAddr), true},
			{"another loopback address", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 5000}, false},
			{"a public address", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 51820}, false},
		} {
			t.Run(tt.name, func(t *testing.T) {
				if err := pa.client.CreatePermission(tt.addr); (err == nil) != tt.ok {
					t.Fatalf("got %v; want success %v", err, tt.ok)
				}
			})
		}
	})

	t.Run("over TLS", func(t *testing.T) {
		pt, err := dialTURN(t, tlsAddr, &pin, a.cfg.Servers[1].Username, a.cfg.Servers[1].Password)
		if err != nil {
			t.Fatalf("allocate over TLS: %v", err)
		}
		if ra := pt.relay.LocalAddr().(*net.UDPAddr); !ra.IP.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("relayed address %v; want one on 127.0.0.1", ra)
		}
		msg := []byte("hello over tls")
		if _, err := pt.relay.WriteTo(msg, pb.relay.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		receive(t, pb.relay, msg, pt.relay.LocalAddr())
		// Another cluster's pin is refused.
		if _, err := tls.Dial("tcp", tlsAddr, tlspin.ClientConfig([32]byte{1})); err == nil {
			t.Fatal("TLS relay accepted a client pinned to another cluster")
		}
	})

	t.Run("bandwidth cap", func(t *testing.T) {
		// a sends 1 MB/s, five times the cap, for a second; b counts what
		// arrives. Each direction of each allocation lets the cap through
		// plus a burst of a tenth of a second.
		const window, size = time.Second, 1000
		var got int
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1600)
			for {
				pb.relay.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				n, _, err := pb.relay.ReadFrom(buf)
				if err != nil {
					return
				}
				got += n
			}
		}()
		before := srv.relay.Dropped()
		pkt := make([]byte, size)
		tick := time.NewTicker(time.Millisecond)
		end := time.Now().Add(window)
		for time.Now().Before(end) {
			<-tick.C
			if _, err := pa.relay.WriteTo(pkt, pb.relay.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
		tick.Stop()
		wg.Wait()
		pb.relay.SetReadDeadline(time.Time{})
		limit := int(1.1*testRelayCap*window.Seconds()) + 2*testRelayCap/10
		t.Logf("%d bytes arrived in %s at a cap of %d B/s; %d bytes dropped", got, window, testRelayCap, srv.relay.Dropped()-before)
		if got < testRelayCap/2 || got > limit {
			t.Fatalf("%d bytes arrived in %s; want about %d, at most %d", got, window, testRelayCap, limit)
		}
		if srv.relay.Dropped() == before {
			t.Fatal("nothing was dropped at five times the cap")
		}
	})

	t.Run("heartbeat reports the relayed address", func(t *testing.T) {
		addr := pa.relay.LocalAddr().String()
		peerA := func() (p state.Peer) {
			srv.Store().Read(func(t *state.Tables, _ uint64) { p = *t.Peers[a.id] })
			return p
		}
		if err := a.api.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Relay: &addr}, nil); err != nil {
			t.Fatal(err)
		}
		if got := peerA().Relay; got != addr {
			t.Fatalf("stored relay %q; want %s", got, addr)
		}
		var m api.MapUpdate
		srv.Store().Read(func(tb *state.Tables, idx uint64) {
			for _, p := range netmap.Full(tb, idx, b.id).Peers {
				if p.ID == a.id {
					m.Peers = append(m.Peers, p)
				}
			}
		})
		if len(m.Peers) != 1 || m.Peers[0].Relay != addr {
			t.Fatalf("b's map shows a as %+v; want relay %s", m.Peers, addr)
		}
		// The same heartbeat again writes nothing; a bad address is refused
		// and writes nothing either.
		index := srv.Store().Index()
		if err := a.api.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Relay: &addr}, nil); err != nil {
			t.Fatal(err)
		}
		bad := "relay.example.net:3478"
		if err := a.api.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Relay: &bad}, nil); !api.IsCode(err, api.CodeInvalidArgument) {
			t.Fatalf("got %v; want %s", err, api.CodeInvalidArgument)
		}
		if got := srv.Store().Index(); got != index {
			t.Fatalf("index went from %d to %d; want no write", index, got)
		}
	})

	pa.close()
	pb.close()
	goneAlloc.close()
	stop()
	waitFor(t, 5*time.Second, "the coordinator's goroutines to end", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestRelayExternal: with --relay-url, /v1/relay hands out the external
// relays with credentials from their secret, and the coordinator's own
// relay answers STUN but allocates nothing.
func TestRelayExternal(t *testing.T) {
	ctx := context.Background()
	secret := []byte("coturn static-auth-secret")
	srv, admin, _ := startSingleWith(t, func(c *Config) {
		c.STUNListen, c.RelayTLSListen = "127.0.0.1:0", "127.0.0.1:0"
		c.RelayURLs, c.RelaySecret = []string{"turn:turn.example.net", "turns:[2001:db8::7]:443"}, secret
	})
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "a", PublicKey: wgKey(), OmitMap: true})
	if err != nil {
		t.Fatal(err)
	}
	var cfg api.RelayConfig
	if err := apiclient.New(admin.URLs(), srv.Pin(), j.Credential).Do(ctx, http.MethodGet, "/v1/relay", nil, &cfg); err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("%d:%s", cfg.Expires.Unix(), j.PeerID)
	want := []api.RelayServer{
		{URL: "turn:turn.example.net:3478?transport=udp", Username: user, Password: relay.Password(secret, user)},
		{URL: "turns:[2001:db8::7]:443?transport=tcp", Username: user, Password: relay.Password(secret, user)},
	}
	if fmt.Sprint(cfg.Servers) != fmt.Sprint(want) {
		t.Fatalf("got %+v; want %+v", cfg.Servers, want)
	}
	var c *state.Coordinator
	srv.Store().Read(func(t *state.Tables, _ uint64) { cc := *t.Coordinators["c1"]; c = &cc })
	if c.STUNAddr == "" || c.RelayIP != "" || c.RelayTLSAddr != "" || srv.relayTLSAddr != "" {
		t.Fatalf("registered %+v, TLS relay %q; want STUN only", c, srv.relayTLSAddr)
	}
	// Even a credential in the built-in form is refused: this relay
	// allocates nothing.
	u, p := relay.Credential(srv.relaySecret[:], j.PeerID, time.Now().Add(time.Hour))
	if _, err := dialTURN(t, c.STUNAddr, nil, u, p); err == nil {
		t.Fatal("the built-in relay allocated with external relays configured")
	}
}

// TestRelayConfigRefused: bad relay settings are refused before anything
// starts.
func TestRelayConfigRefused(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"stun url", func(c *Config) { c.RelayURLs, c.RelaySecret = []string{"stun:a.example:3478"}, []byte("s") }, "relay URL"},
		{"turns over udp", func(c *Config) {
			c.RelayURLs, c.RelaySecret = []string{"turns:a.example:5349?transport=udp"}, []byte("s")
		}, "relay URL"},
		{"no secret", func(c *Config) { c.RelayURLs = []string{"turn:a.example:3478"} }, "shared secret"},
		{"half a port range", func(c *Config) { c.RelayPortMin = 50000 }, "port range"},
		{"reversed port range", func(c *Config) { c.RelayPortMin, c.RelayPortMax = 50001, 50000 }, "port range"},
		{"credential lifetime", func(c *Config) { c.RelayCredentialTTL = time.Second }, "credential lifetime"},
		{"negative bandwidth", func(c *Config) { c.RelayBandwidth = -1 }, "bandwidth"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Name: "c1", DataDir: t.TempDir(), APIListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0"}
			tt.mod(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v; want an error about %s", err, tt.want)
			}
		})
	}
}

// TestRelayTLSFallback: the default TLS address gives way to an ephemeral
// port when taken (several coordinators on one host); a chosen one does
// not.
func TestRelayTLSFallback(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tt := range []struct {
		name     string
		fallback bool
	}{
		{"default address", true},
		{"chosen address", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := listenRelayTLS(taken.Addr().String(), tt.fallback)
			if !tt.fallback {
				if err == nil {
					ln.Close()
					t.Fatal("listened on a taken address")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := netip.MustParseAddrPort(ln.Addr().String())
			if got.Addr() != netip.MustParseAddr("127.0.0.1") || got.Port() == 0 || ln.Addr().String() == taken.Addr().String() {
				t.Fatalf("listening on %v; want another port of 127.0.0.1", got)
			}
		})
	}
}

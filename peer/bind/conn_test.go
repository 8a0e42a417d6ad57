package bind

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/turn/v4"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// filterBind drops what this host sends to the addresses in blocked: a
// cut direct path.
type filterBind struct {
	conn.Bind
	mu      sync.Mutex
	blocked map[netip.AddrPort]bool
}

func (f *filterBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	f.mu.Lock()
	drop := f.blocked[addrOf(ep)]
	f.mu.Unlock()
	if drop {
		return nil
	}
	return f.Bind.Send(bufs, ep)
}

func (f *filterBind) block(a netip.AddrPort, on bool) {
	f.mu.Lock()
	f.blocked[a] = on
	f.mu.Unlock()
}

type side struct {
	c     *Conn
	std   *filterBind
	key   wgcfg.Key
	port  uint16
	fns   []conn.ReceiveFunc
	got   chan []byte
	close func()
}

func newSide(t *testing.T) *side {
	t.Helper()
	k, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	std := &filterBind{Bind: NewUDP(), blocked: map[netip.AddrPort]bool{}}
	c := New(Config{PrivateKey: k, Std: std, LocalAddrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }})
	fns, port, err := c.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	s := &side{c: c, std: std, key: k, port: port, fns: fns, got: make(chan []byte, 64)}
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := make([][]byte, c.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, 2048)
			}
			sizes := make([]int, len(bufs))
			eps := make([]conn.Endpoint, len(bufs))
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				for i := range n {
					if sizes[i] > 0 {
						s.got <- append([]byte(nil), bufs[i][:sizes[i]]...)
					}
				}
			}
		}()
	}
	s.close = func() {
		c.Close()
		c.Shutdown()
		wg.Wait()
	}
	t.Cleanup(s.close)
	return s
}

func (s *side) addr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.port)
}

func (s *side) pub() wgcfg.Key { return s.key.Public() }

// wgPacket looks like a WireGuard transport message.
func wgPacket(n byte) []byte {
	p := make([]byte, 64)
	p[0] = 4
	p[20] = n
	return p
}

func waitPath(t *testing.T, s *side, peer wgcfg.Key, want string, within time.Duration) PathStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ps := s.c.Paths()[peer]
		if ps.Path == want && (want == PathRelay || ps.RTT > 0) { // a direct path that answered
			return ps
		}
		if time.Now().After(deadline) {
			t.Fatalf("path to peer = %+v; want %s within %v", ps, want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func expectPacket(t *testing.T, s *side, n byte) {
	t.Helper()
	timeout := time.After(3 * time.Second)
	for {
		select {
		case p := <-s.got:
			if len(p) == 64 && p[20] == n {
				return
			}
		case <-timeout:
			t.Fatalf("packet %d never arrived", n)
		}
	}
}

func TestDirectPath(t *testing.T) {
	a, b := newSide(t), newSide(t)
	a.c.SetPeers([]PeerConfig{{Key: b.pub(), Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9"), b.addr()}}}, nil)
	b.c.SetPeers([]PeerConfig{{Key: a.pub(), Endpoints: []netip.AddrPort{a.addr()}}}, nil)
	ps := waitPath(t, a, b.pub(), PathDirect, 2*time.Second)
	if ps.Addr != b.addr() || ps.RTT <= 0 {
		t.Fatalf("path = %+v; want direct to %v with an RTT", ps, b.addr())
	}
	ep, err := a.c.ParseEndpoint(EndpointString(b.pub()))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.c.Send([][]byte{wgPacket(7)}, ep); err != nil {
		t.Fatal(err)
	}
	expectPacket(t, b, 7)
	// A ping answered on the direct path.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := a.c.Ping(ctx, b.pub())
	if err != nil || r.Path != PathDirect || r.Addr != b.addr() {
		t.Fatalf("Ping = %+v, %v; want direct from %v", r, err, b.addr())
	}
}

// turnServer runs a TURN server on loopback with one static user.
func turnServer(t *testing.T) (string, api.RelayServer) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key := turn.GenerateAuthKey("u", "meshd", "p")
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "meshd",
		AuthHandler: func(user, realm string, _ net.Addr) ([]byte, bool) {
			return key, user == "u"
		},
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: pc, RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
			RelayAddress: net.ParseIP("127.0.0.1"), Address: "127.0.0.1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	addr := pc.LocalAddr().String()
	return addr, api.RelayServer{URL: "turn:" + addr + "?transport=udp", Username: "u", Password: "p"}
}

func waitRelay(t *testing.T, s *side) netip.AddrPort {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if d := s.c.Discovery(); d.Relay.IsValid() {
			return d.Relay
		}
		if time.Now().After(deadline) {
			t.Fatal("no relay allocation")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// relayedPair is two sides on one TURN server whose direct path is cut
// both ways, each with the other as its peer; it returns their relayed
// addresses once a's path to b is the relay.
func relayedPair(t *testing.T) (a, b *side, ra, rb netip.AddrPort) {
	t.Helper()
	_, rs := turnServer(t)
	a, b = newSide(t), newSide(t)
	cfg := api.RelayConfig{Servers: []api.RelayServer{rs}, Expires: time.Now().Add(time.Hour)}
	a.c.SetRelays(cfg)
	b.c.SetRelays(cfg)
	ra, rb = waitRelay(t, a), waitRelay(t, b)
	a.std.block(b.addr(), true)
	b.std.block(a.addr(), true)
	a.c.SetPeers([]PeerConfig{{Key: b.pub(), Endpoints: []netip.AddrPort{b.addr()}, Relay: rb}}, nil)
	b.c.SetPeers([]PeerConfig{{Key: a.pub(), Endpoints: []netip.AddrPort{a.addr()}, Relay: ra}}, nil)
	waitPath(t, a, b.pub(), PathRelay, 2*time.Second)
	return a, b, ra, rb
}

func TestRelayAndSwitch(t *testing.T) {
	a, b, _, _ := relayedPair(t)
	ep, _ := a.c.ParseEndpoint(EndpointString(b.pub()))
	var seq atomic.Int32
	send := func() byte { // errors show as missing packets
		n := byte(seq.Add(1))
		a.c.Send([][]byte{wgPacket(n)}, ep)
		return n
	}
	// Relayed packets arrive (through the relay's receive function).
	deadline := time.Now().Add(3 * time.Second)
	for ok := false; !ok; {
		n := send()
		select {
		case p := <-b.got:
			ok = p[20] == n || len(p) == 64
		case <-time.After(100 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no relayed packet arrived")
			}
		}
	}
	// Lifting the filter moves the pair to the direct path.
	a.std.block(b.addr(), false)
	b.std.block(a.addr(), false)
	start := time.Now()
	waitPath(t, a, b.pub(), PathDirect, 5*time.Second)
	t.Logf("relay -> direct after %v", time.Since(start))
	// Cutting it again falls back to the relay in about a second while
	// traffic flows.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				send()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	// Traffic flows on the direct path before the cut.
	select {
	case <-b.got:
	case <-time.After(2 * time.Second):
		t.Fatal("no packet of the stream arrived before the cut")
	}
	a.std.block(b.addr(), true)
	b.std.block(a.addr(), true)
	start = time.Now()
	waitPath(t, a, b.pub(), PathRelay, 2*time.Second)
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("fell back to the relay after %v; want about a second", d)
	} else {
		t.Logf("direct -> relay after %v", d)
	}
}

// TestExcludedNeverAPath: an address inside the mesh's own prefixes is
// never used, neither announced nor learned from a ping's source (a probe
// there would travel inside the tunnels).
func TestExcludedNeverAPath(t *testing.T) {
	a, b := newSide(t), newSide(t)
	inside := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	a.c.SetPeers([]PeerConfig{{Key: b.pub(), Endpoints: []netip.AddrPort{b.addr()}}}, inside)
	b.c.SetPeers([]PeerConfig{{Key: a.pub(), Endpoints: []netip.AddrPort{a.addr()}}}, nil)
	// b probes a at a's loopback address; a must not learn b's source.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if ps := a.c.Paths()[b.pub()]; ps.Path != "" {
			t.Fatalf("a uses %+v, inside its excluded prefixes", ps)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := a.c.Discovery(); len(d.Local) != 0 {
		t.Fatalf("a announces %v, inside its excluded prefixes", d.Local)
	}
}

// TestResponseGoesBackTheWayInitiationCame: a handshake response is sent
// to the source of the initiation it answers (matched by index), once.
func TestResponseGoesBackTheWayInitiationCame(t *testing.T) {
	c := &Conn{initSrc: map[uint32]initSource{}}
	init := make([]byte, wgInitiationSz)
	init[0] = wgInitiation
	init[4] = 0x2a // sender index 42
	src := netip.MustParseAddrPort("198.18.0.101:41641")
	c.noteInit(init, src, false)
	resp := make([]byte, wgResponseSz)
	resp[0] = wgResponse
	resp[8] = 0x2b // answers index 43: not ours
	if _, ok := c.responsePath(resp); ok {
		t.Fatal("a response to another initiation was routed")
	}
	resp[8] = 0x2a
	p, ok := c.responsePath(resp)
	if !ok || p.addr != src || p.relay {
		t.Fatalf("responsePath = %+v, %v; want direct to %v", p, ok, src)
	}
	if _, ok := c.responsePath(resp); ok {
		t.Fatal("routed twice")
	}
}

// TestRelayCredentialRenewal: an allocation made with a credential about
// to expire is replaced once a fresh credential comes, before the old one
// stops working.
func TestRelayCredentialRenewal(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "meshd",
		AuthHandler: func(user, realm string, _ net.Addr) ([]byte, bool) {
			return turn.GenerateAuthKey(user, realm, "p"), true // any user, password "p"
		},
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: pc, RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
			RelayAddress: net.ParseIP("127.0.0.1"), Address: "127.0.0.1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	url := "turn:" + pc.LocalAddr().String() + "?transport=udp"
	a := newSide(t)
	soon := time.Now().Add(time.Minute) // inside RenewBefore
	a.c.SetRelays(api.RelayConfig{Expires: soon, Servers: []api.RelayServer{{URL: url, Username: fmt.Sprintf("%d:a", soon.Unix()), Password: "p"}}})
	first := waitRelay(t, a)
	later := time.Now().Add(time.Hour)
	a.c.SetRelays(api.RelayConfig{Expires: later, Servers: []api.RelayServer{{URL: url, Username: fmt.Sprintf("%d:a", later.Unix()), Password: "p"}}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if d := a.c.Discovery(); d.Relay.IsValid() && d.Relay != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay still %v 5 s after a fresh credential came for one expiring in a minute", a.c.Discovery().Relay)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A credential that is not about to expire is kept: a fresher one
	// does not move the allocation (peers would have to learn a new
	// relayed address for nothing).
	second := a.c.Discovery().Relay
	fresher := later.Add(time.Hour)
	a.c.SetRelays(api.RelayConfig{Expires: fresher, Servers: []api.RelayServer{{URL: url, Username: fmt.Sprintf("%d:a", fresher.Unix()), Password: "p"}}})
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if d := a.c.Discovery(); d.Relay != second {
			t.Fatalf("relay moved from %v to %v for a credential that was not expiring", second, d.Relay)
		}
	}
}

// TestRelayChannelFastPath: once the TURN client has bound a channel to
// the peer's relayed address, WireGuard's batches leave as ChannelData
// frames in one send and arrive unwrapped, in order and intact.
func TestRelayChannelFastPath(t *testing.T) {
	a, b, ra, rb := relayedPair(t)
	waitPath(t, b, a.pub(), PathRelay, 2*time.Second)
	epB, _ := a.c.ParseEndpoint(EndpointString(b.pub()))
	epA, _ := b.c.ParseEndpoint(EndpointString(a.pub()))
	// Traffic both ways until each client has its channel bound.
	deadline := time.Now().Add(5 * time.Second)
	for {
		al, bl := a.c.relay.cur.Load(), b.c.relay.cur.Load()
		if al != nil && bl != nil && al.channelTo(rb, time.Now()) != nil && bl.channelTo(ra, time.Now()) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no channel bound both ways after 5 s of traffic")
		}
		a.c.Send([][]byte{wgPacket(0)}, epB)
		b.c.Send([][]byte{wgPacket(0)}, epA)
		time.Sleep(20 * time.Millisecond) // pacing the warm-up traffic
	}
	drain := func(s *side) {
		for {
			select {
			case <-s.got:
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	}
	drain(b)
	sent, recv := a.c.relay.fastSent.Load(), b.c.relay.fastRecv.Load()
	var batch [][]byte
	for n := byte(1); n <= 32; n++ {
		batch = append(batch, wgPacket(n))
	}
	if err := a.c.Send(batch, epB); err != nil {
		t.Fatal(err)
	}
	for n := byte(1); n <= 32; n++ {
		expectPacket(t, b, n)
	}
	if got := a.c.relay.fastSent.Load() - sent; got != 32 {
		t.Fatalf("%d of 32 packets left by the ChannelData fast path", got)
	}
	if got := b.c.relay.fastRecv.Load() - recv; got < 32 {
		t.Fatalf("%d of 32 packets were unwrapped by the fast path on arrival", got)
	}
}

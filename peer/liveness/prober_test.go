package liveness

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/wgcfg"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type node struct {
	key   wgcfg.Key
	addr  netip.Addr
	flags atomic.Uint32
	p     *Prober
}

var testPort int

func newNode(t *testing.T, addr string) *node {
	t.Helper()
	k, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{key: k, addr: netip.MustParseAddr(addr)}
	n.flags.Store(uint32(disco.StatusLANOK | disco.StatusFwdOK))
	n.p, err = New(Config{PrivateKey: k, Addr: n.addr, Port: testPort, Self: func() byte { return byte(n.flags.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.p.Close() })
	return n
}

func (n *node) pub() wgcfg.Key { return n.key.Public() }

// freePort finds a UDP port free on the loopback addresses the test uses.
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
		ok := true
		for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip), Port: port})
			if err != nil {
				ok = false
				break
			}
			c.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, bounded by within
	}
	return time.Since(start)
}

// TestProberThroughSockets: an observer sees a gateway alive with what it
// says of itself, follows its LAN check, and sees it dead soon after it
// stops; a peer the gateway does not know gets no answer.
func TestProberThroughSockets(t *testing.T) {
	testPort = freePort(t)
	gw, obs, stranger := newNode(t, "127.0.0.2"), newNode(t, "127.0.0.1"), newNode(t, "127.0.0.3")
	gw.p.SetPeers([]wgcfg.Key{obs.pub()})
	obs.p.SetPeers([]wgcfg.Key{gw.pub()})
	obs.p.SetTargets([]Target{{Key: gw.pub(), Addr: gw.addr, Fast: true}})
	stranger.p.SetPeers([]wgcfg.Key{gw.pub()})
	stranger.p.SetTargets([]Target{{Key: gw.pub(), Addr: gw.addr, Fast: true}})

	view := func() Observation { o, _ := obs.p.Observe(gw.pub()); return o }
	waitFor(t, "gateway healthy", 2*time.Second, func() bool { return view().Healthy() })
	// The observer probes fast: to the gateway, a client sending through it.
	waitFor(t, "the gateway to see a fast stream of probes", time.Second, func() bool {
		return time.Since(gw.p.LastFastProbed()) < 200*time.Millisecond && time.Since(gw.p.LastProbed()) < 200*time.Millisecond
	})
	gw.flags.Store(uint32(disco.StatusFwdOK))
	waitFor(t, "LAN check failure seen", time.Second, func() bool { o := view(); return o.Alive && !o.LANOK })
	gw.flags.Store(uint32(disco.StatusLANOK | disco.StatusFwdOK))
	waitFor(t, "LAN check recovery seen", time.Second, func() bool { return view().Healthy() })
	if o, _ := stranger.p.Observe(gw.pub()); o.Alive || !o.LastHeard.IsZero() {
		t.Fatalf("a peer the gateway does not know was answered: %+v", o)
	}
	gw.p.Close()
	took := waitFor(t, "gateway dead after it stopped", time.Second, func() bool { return !view().Alive })
	t.Logf("dead %v after the gateway stopped (timing: dead after %v)", took, DefaultTiming.FastDeadAfter)
}

// TestForgedStatements: a member of the vnet (it knows every public key
// and holds any gossip key) cannot keep a dead gateway alive nor take a
// healthy gateway's health away: statements in the gateway's name sealed
// with the attacker's key, and genuine-looking statements answering
// probes the observer never sent (replayed, or relayed late), count for
// nothing.
func TestForgedStatements(t *testing.T) {
	testPort = freePort(t)
	gw, obs := newNode(t, "127.0.0.2"), newNode(t, "127.0.0.1")
	attacker, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	gw.p.SetPeers([]wgcfg.Key{obs.pub()})
	obs.p.SetPeers([]wgcfg.Key{gw.pub(), attacker.Public()})
	obs.p.SetTargets([]Target{{Key: gw.pub(), Addr: gw.addr, Fast: true}})
	view := func() Observation { o, _ := obs.p.Observe(gw.pub()); return o }
	waitFor(t, "gateway healthy", 2*time.Second, func() bool { return view().Healthy() })

	// The attacker sends from the gateway's own address (as if it could
	// spoof it on the observer's host), so only the seal stands in the way.
	src, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(obs.addr, uint16(testPort)))
	forge := func(flags byte, seq uint64) {
		// In the gateway's name, sealed with the attacker's key.
		m := &disco.Message{Type: disco.TypeStatus, TxID: disco.NewTxID(), Seq: seq, Flags: flags}
		src.WriteTo(disco.Seal(m, gw.pub(), disco.SharedKey(attacker, obs.pub())), dst)
		// Genuinely sealed by the gateway (an old statement kept and
		// replayed), but for a probe that is not outstanding.
		src.WriteTo(disco.Seal(m, gw.pub(), disco.SharedKey(gw.key, obs.pub())), dst)
	}
	// "LAN down" forgeries against a healthy gateway.
	for i := range 100 {
		forge(0, uint64(time.Now().UnixNano())+uint64(i)<<40)
		if !view().Healthy() {
			t.Fatalf("forged statement %d took the gateway's health away: %+v", i, view())
		}
		time.Sleep(2 * time.Millisecond) // pacing the forgeries
	}
	// "Alive, LAN OK" forgeries for a dead gateway.
	gw.p.Close()
	stopped := time.Now()
	for time.Since(stopped) < time.Second {
		forge(disco.StatusLANOK|disco.StatusFwdOK, uint64(time.Now().UnixNano())<<1)
		time.Sleep(2 * time.Millisecond) // pacing the forgeries
		if time.Since(stopped) > 500*time.Millisecond && view().Alive {
			t.Fatalf("forged statements kept a stopped gateway alive %v after it stopped", time.Since(stopped))
		}
	}
}

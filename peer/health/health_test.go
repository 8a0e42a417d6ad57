package health

import (
	"net"
	"strconv"
	"testing"
	"time"
)

func freeUDPTCPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func start(t *testing.T, id string, port int, key []byte, lanOK bool) *Gossip {
	t.Helper()
	g, err := New(Config{Self: Meta{ID: id, LANOK: lanOK}, BindAddr: "127.0.0.1", Port: port, Keys: [][]byte{key}})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
	}
	return time.Since(start)
}

func TestDetectionAndHoldDown(t *testing.T) {
	key := make([]byte, 32)
	ports := map[string]int{}
	for _, id := range []string{"a", "b", "c"} {
		ports[id] = freeUDPTCPPort(t)
	}
	a := start(t, "a", ports["a"], key, true)
	defer a.Leave(100 * time.Millisecond)
	b := start(t, "b", ports["b"], key, true)
	defer b.Leave(100 * time.Millisecond)
	c := start(t, "c", ports["c"], key, true)
	for _, g := range []*Gossip{b, c} {
		if _, err := g.Join([]string{"127.0.0.1:" + itoa(ports["a"])}); err != nil {
			t.Fatal(err)
		}
	}
	alive := func(g *Gossip, id string) bool { return g.Peers()[id].Alive }
	ok := func(g *Gossip, id string) bool { return g.Peers()[id].OK() }
	waitFor(t, 5*time.Second, "everyone to see c", func() bool { return ok(a, "c") && ok(b, "c") })
	if _, heard := a.Peers()["nobody"]; heard {
		t.Fatal("a reports a member it never heard of")
	}

	// c dies without a word: detected well under a second.
	c.ml.Shutdown()
	took := waitFor(t, 5*time.Second, "c to be seen dead", func() bool { return !alive(a, "c") && !alive(b, "c") })
	t.Logf("dead member detected in %s", took)
	if took > 1500*time.Millisecond {
		t.Errorf("detection took %s; want well under 1.5s", took)
	}

	// c comes back: alive again (what the agent makes of it, hold-down
	// included, is the agent's).
	c2 := start(t, "c", ports["c"], key, true)
	defer c2.Leave(100 * time.Millisecond)
	if _, err := c2.Join([]string{"127.0.0.1:" + itoa(ports["a"])}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "c to be seen alive again", func() bool { return ok(a, "c") })

	// A failing LAN check travels in the metadata.
	c2.SetSelf(Meta{ID: "c", LANOK: false})
	waitFor(t, 3*time.Second, "c's LAN failure to reach a", func() bool { return alive(a, "c") && !ok(a, "c") })
}

func TestWrongKeyCannotJoin(t *testing.T) {
	pa, pb := freeUDPTCPPort(t), freeUDPTCPPort(t)
	a := start(t, "a", pa, make([]byte, 32), true)
	defer a.Leave(100 * time.Millisecond)
	other := make([]byte, 32)
	other[0] = 1
	b := start(t, "b", pb, other, true)
	defer b.Leave(100 * time.Millisecond)
	if n, err := b.Join([]string{"127.0.0.1:" + itoa(pa)}); err == nil && n > 0 {
		t.Fatal("a member with another gossip key joined")
	}
}

func TestMetaVersioned(t *testing.T) {
	b := encodeMeta(Meta{ID: "x", LANOK: true, Routes: []string{"10.0.0.0/24:100"}})
	if b[0] != MetaVersion {
		t.Fatalf("first byte %d; want %d", b[0], MetaVersion)
	}
	m, err := decodeMeta(b)
	if err != nil || m.ID != "x" || !m.LANOK {
		t.Fatalf("got %+v, %v", m, err)
	}
	if _, err := decodeMeta(append([]byte{99}, b[1:]...)); err == nil {
		t.Fatal("an unknown metadata version was accepted")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

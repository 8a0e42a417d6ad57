package health

import (
	"bytes"
	"slices"
	"testing"
	"time"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func primary(g *Gossip) []byte { return g.Keys()[0] }

func sameKeys(got, want [][]byte) bool {
	return len(got) == len(want) && !slices.ContainsFunc(want, func(w []byte) bool {
		return !slices.ContainsFunc(got, func(k []byte) bool { return bytes.Equal(k, w) })
	})
}

// TestSetKeysSwitchesAndDrops: listed keys are accepted at once, the newest
// one becomes primary only after the switch delay, and keys no longer
// listed go at once unless still in use.
func TestSetKeysSwitchesAndDrops(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	g := start(t, "a", freeUDPTCPPort(t), k1, true)
	defer g.Leave(100 * time.Millisecond)
	const after = 200 * time.Millisecond

	g.SetKeys([][]byte{k2, k1}, after)
	if got := g.Keys(); !bytes.Equal(got[0], k1) || !sameKeys(got, [][]byte{k1, k2}) {
		t.Fatalf("right after SetKeys: got %x; want K1 primary and K2 accepted", got)
	}
	// A second rotation before the first switch: the switches come in turn,
	// each once its key is old enough, and end on the newest.
	g.SetKeys([][]byte{k3, k2, k1}, after)
	waitFor(t, 3*time.Second, "K3 to become primary", func() bool { return bytes.Equal(primary(g), k3) })
	if got := g.Keys(); !sameKeys(got, [][]byte{k1, k2, k3}) {
		t.Fatalf("after the switch: got %x; want K1, K2 and K3 accepted", got)
	}
	// The coordinators drop the old keys: so does the ring, at once.
	g.SetKeys([][]byte{k3}, after)
	if got := g.Keys(); !sameKeys(got, [][]byte{k3}) {
		t.Fatalf("after the old keys were dropped: got %x; want K3 alone", got)
	}

	// A ring that no longer lists the key in use keeps it until the switch.
	k4 := testKey(4)
	g.SetKeys([][]byte{k4}, after)
	if got := g.Keys(); !bytes.Equal(got[0], k3) || !sameKeys(got, [][]byte{k3, k4}) {
		t.Fatalf("got %x; want K3 (in use) primary and K4 accepted", got)
	}
	waitFor(t, 3*time.Second, "K4 to replace K3", func() bool { return sameKeys(g.Keys(), [][]byte{k4}) })

	// Invalid keys are ignored; an empty ring changes nothing.
	g.SetKeys([][]byte{[]byte("short")}, after)
	g.SetKeys(nil, after)
	if got := g.Keys(); !sameKeys(got, [][]byte{k4}) {
		t.Fatalf("got %x; want K4 alone", got)
	}
}

// TestRemovedMemberLosesGossip: a, b and c share K1; c is removed. a and b
// get K2 as primary with K1 as secondary, c keeps K1 alone. a and b never
// see each other dead while they switch; once they encrypt with K2 they see
// c dead, and once K1 is dropped c can neither join nor be seen.
func TestRemovedMemberLosesGossip(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	ports := map[string]int{}
	for _, id := range []string{"a", "b", "c"} {
		ports[id] = freeUDPTCPPort(t)
	}
	a := start(t, "a", ports["a"], k1, true)
	defer a.Leave(100 * time.Millisecond)
	b := start(t, "b", ports["b"], k1, true)
	defer b.Leave(100 * time.Millisecond)
	c := start(t, "c", ports["c"], k1, true)
	defer c.Leave(100 * time.Millisecond)
	seedA := "127.0.0.1:" + itoa(ports["a"])
	for _, g := range []*Gossip{b, c} {
		if _, err := g.Join([]string{seedA}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "everyone to see everyone", func() bool {
		return a.Peers()["b"].Alive && a.Peers()["c"].Alive && b.Peers()["a"].Alive && b.Peers()["c"].Alive && c.Peers()["a"].Alive
	})

	// c is removed: the coordinators send a and b the vnet's new ring.
	const after = 300 * time.Millisecond
	a.SetKeys([][]byte{k2, k1}, after)
	b.SetKeys([][]byte{k2, k1}, after)
	waitFor(t, 5*time.Second, "a and b to encrypt with K2", func() bool {
		return bytes.Equal(primary(a), k2) && bytes.Equal(primary(b), k2)
	})
	waitFor(t, 5*time.Second, "a and b to see c dead", func() bool {
		return !a.Peers()["c"].Alive && !b.Peers()["c"].Alive
	})

	// The grace is over: K1 is dropped.
	a.SetKeys([][]byte{k2}, after)
	b.SetKeys([][]byte{k2}, after)
	if n, err := c.Join([]string{seedA, "127.0.0.1:" + itoa(ports["b"])}); err == nil || n > 0 {
		t.Fatalf("c joined %d members with the dropped key (err %v)", n, err)
	}
	if a.Peers()["c"].Alive || b.Peers()["c"].Alive || a.Members() != 2 || b.Members() != 2 {
		t.Fatalf("c is seen after K1 was dropped (a sees %d members, b %d)", a.Members(), b.Members())
	}

	// a and b saw each other alive throughout.
	for _, x := range []struct {
		g     *Gossip
		other string
	}{{a, "b"}, {b, "a"}} {
		x.g.mu.Lock()
		m := x.g.members[x.other]
		dead := m == nil || !m.alive || m.downs > 0
		x.g.mu.Unlock()
		if dead {
			t.Fatalf("%s was seen dead during the key switch", x.other)
		}
	}
}

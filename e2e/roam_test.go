package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// TestRoamingPeer moves a laptop behind one port-preserving NAT onto the
// LAN of another (its eth0 changes bridge, address and default route, as
// when it joins another network) while its agent runs: within 2 s its
// UDP datagrams to a public peer's overlay address must be answered again
// (the test fails above 5 s), and within 5 s the public peer must show it
// direct at the new router's WAN address.
func TestRoamingPeer(t *testing.T) {
	begin := time.Now()
	// spare only gives the second router a LAN host; no agent runs there.
	specs := []netlab.NATHostSpec{
		{Name: "pub1", Kind: netlab.Public},
		{Name: "lap", Kind: netlab.PortPreserving},
		{Name: "spare", Kind: netlab.PortPreserving},
	}
	l := startNATLab(t, specs, meshlab.Options{})
	to := l.NAT.Router(l.NAT.Host("spare").Router)
	from := l.NAT.Host("lap")

	startNATPeers(t, l, "pub1", "lap")
	waitPeersUp(t, l, "pub1", "lap")
	ip := map[string]string{}
	for _, h := range []string{"pub1", "lap"} {
		st, err := l.Status(h)
		if err != nil {
			t.Fatal(err)
		}
		ip[h] = st.Self.OverlayIP
		echo, err := l.StartEcho(h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { echo.Close() }) // before the lab's teardown
	}
	// On failure, what the agents thought of it.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, h := range []string{"pub1", "lap"} {
			if st, err := l.Status(h); err == nil {
				t.Logf("%s status: %s", h, toJSON(st))
			}
		}
		t.Logf("lap's log about addresses, endpoints and paths:\n%s", grepLines(l.Logs("lap"),
			"local addresses changed", "endpoints reported", "path"))
	})

	if _, err := l.FirstReply("lap", ip["pub1"], 10*time.Millisecond, time.Now().Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.FirstReply("pub1", ip["lap"], 10*time.Millisecond, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitPeerPath(t, l, "pub1", "lap", from.WAN, 10*time.Second)
	t.Logf("lap and pub1 reach each other, pub1 shows lap direct at %s, %s after lap started",
		from.WAN, time.Since(l.Started["lap"]).Round(time.Millisecond))

	moveStart := time.Now()
	moved, err := netlab.MoveNATHost(l.Net, l.NAT, "lap", to.Name)
	if err != nil {
		t.Fatal(err)
	}
	movedAt := time.Now()
	t.Logf("lap moved from %s (%s, WAN %s) to %s (%s, WAN %s) in %s",
		from.Router, from.Addr, from.WAN, moved.Router, moved.Addr, moved.WAN, movedAt.Sub(moveStart).Round(time.Millisecond))

	at, err := l.FirstReply("lap", ip["pub1"], 10*time.Millisecond, movedAt.Add(5*time.Second))
	if err != nil {
		t.Fatalf("after the move: %v", err)
	}
	took := at.Sub(movedAt)
	t.Logf("from the move to lap's first UDP echo from pub1's overlay address (probes every 10 ms): %s", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Logf("%s is above the 2 s target", took.Round(time.Millisecond))
	}
	waitPeerPath(t, l, "pub1", "lap", moved.WAN, 5*time.Second-time.Since(movedAt))
	t.Logf("pub1 shows lap direct at %s at most %s after the move", moved.WAN, time.Since(movedAt).Round(time.Millisecond))
	if _, err := l.FirstReply("pub1", ip["lap"], 10*time.Millisecond, time.Now().Add(2*time.Second)); err != nil {
		t.Errorf("after the move: %v", err)
	}
	t.Logf("TestRoamingPeer took %s", time.Since(begin).Round(time.Millisecond))
}

// waitPeerPath polls a's status until it shows b direct at an endpoint on
// host wantHost; it fails the test after d.
func waitPeerPath(t *testing.T, l *meshlab.Lab, a, b, wantHost string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st, err := l.Status(a)
		if err != nil {
			t.Fatal(err)
		}
		path, ep := meshlab.PeerPath(st, b)
		if host, _, err := net.SplitHostPort(ep); err == nil && path == api.PathDirect && host == wantHost {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s shows %s as %q %s; want %s at %s", d.Round(time.Millisecond), a, b, path, ep, api.PathDirect, wantHost)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// grepLines is the lines of log that contain any of words.
func grepLines(log string, words ...string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// startNATLab builds the NAT topology of specs with coordinators c1..c3 in
// namespaces unique to this test run, and tears it down when the test
// ends, also on failure. It starts no peer.
func startNATLab(t *testing.T, specs []netlab.NATHostSpec, o meshlab.Options, tools ...string) *meshlab.Lab {
	t.Helper()
	o = labOptions(t, o, append([]string{"nft", "sysctl"}, tools...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := meshlab.StartNAT(ctx, o, specs)
	if err != nil {
		t.Fatal(err)
	}
	closeLabAtEnd(t, l)
	return l
}

// startNATPeers creates one join token per host and starts `meshd peer
// up` on each, all at once; it does not wait for them.
func startNATPeers(t *testing.T, l *meshlab.Lab, hosts ...string) {
	t.Helper()
	toks := map[string]string{}
	for _, h := range hosts {
		tok, err := l.Token()
		if err != nil {
			t.Fatal(err)
		}
		toks[h] = tok
	}
	for _, h := range hosts {
		if err := l.StartPeer(h, toks[h]); err != nil {
			t.Fatal(err)
		}
	}
}

// waitPeersUp waits until every host's agent answers its status socket.
func waitPeersUp(t *testing.T, l *meshlab.Lab, hosts ...string) {
	t.Helper()
	for _, h := range hosts {
		if err := l.WaitPeerUp(context.Background(), h, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func natHostNames(l *meshlab.Lab) []string {
	var out []string
	for _, h := range l.NAT.Hosts {
		out = append(out, h.Name)
	}
	return out
}

// TestNATMatrix runs a peer on every host of the NAT matrix and checks
// that every pair reaches each other, directly where the two NATs allow
// it and through a relay elsewhere, as both sides' status says.
func TestNATMatrix(t *testing.T) {
	begin := time.Now()
	l := startNATLab(t, netlab.DefaultNATMatrix(), meshlab.Options{})
	t.Logf("topology and coordinators up in %s", time.Since(begin).Round(time.Millisecond))
	hosts := natHostNames(l)

	// pub1 first: every other host's time from start to a first reply
	// from pub1's overlay address is measured against it.
	const target = "pub1"
	startNATPeers(t, l, target)
	waitPeersUp(t, l, target)
	st, err := l.Status(target)
	if err != nil {
		t.Fatal(err)
	}
	targetIP := st.Self.OverlayIP
	echo, err := l.StartEcho(target)
	if err != nil {
		t.Fatal(err)
	}

	others := slices.DeleteFunc(slices.Clone(hosts), func(h string) bool { return h == target })
	started := time.Now()
	deadline := started.Add(30 * time.Second)
	startNATPeers(t, l, others...)
	firstReply := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, err := l.FirstReply(h, targetIP, 10*time.Millisecond, deadline)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("%s: %v", h, err)
				return
			}
			firstReply[h] = at.Sub(l.Started[h])
		}()
	}
	wg.Wait()
	echo.Close() // CheckNATMatrix starts its own
	waitPeersUp(t, l, others...)
	var lines []string
	for _, h := range others {
		d, ok := firstReply[h]
		s := "none"
		if ok {
			s = d.Round(time.Millisecond).String()
		}
		lines = append(lines, fmt.Sprintf("  %-6s %-16s %s", h, l.NAT.Host(h).Kind, s))
	}
	t.Logf("from `meshd peer up` to the first UDP echo from %s's overlay address (probes every 10 ms):\n%s", target, strings.Join(lines, "\n"))

	res, err := l.CheckNATMatrix(hosts, started, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NAT matrix %s after the peers started:\n%s", time.Since(started).Round(time.Millisecond), meshlab.MatrixTable(res))
	var direct []string
	for _, p := range res {
		if p.DirectAfter > 0 {
			direct = append(direct, fmt.Sprintf("%s-%s %s", p.A, p.B, p.DirectAfter.Round(time.Millisecond)))
		}
	}
	t.Logf("direct on both sides after: %s", strings.Join(direct, ", "))
	if wrong := meshlab.Summarize(res).Wrong; len(wrong) > 0 {
		var msg []string
		for _, p := range wrong {
			msg = append(msg, "  "+p.String())
		}
		t.Errorf("%d of %d pairs are not as they must be within %s:\n%s", len(wrong), len(res),
			deadline.Sub(started), strings.Join(msg, "\n"))
	}
	t.Logf("TestNATMatrix took %s", time.Since(begin).Round(time.Millisecond))
}

// waitPaths polls both peers' statuses until each shows the other on path
// want, and returns how long that took; it fails the test after d.
func waitPaths(t *testing.T, l *meshlab.Lab, a, b, want string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var pa, ea, pb, eb string
	for {
		sa, err := l.Status(a)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := l.Status(b)
		if err != nil {
			t.Fatal(err)
		}
		pa, ea = meshlab.PeerPath(sa, b)
		pb, eb = meshlab.PeerPath(sb, a)
		if pa == want && pb == want {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("after %s: %s shows %s as %q %s, %s shows %s as %q %s; want %s on both sides",
				d, a, b, pa, ea, b, a, pb, eb, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// TestNATPathSwitch moves a pair of peers behind port-preserving NATs from
// the relay to a direct path and back under a 100 pps ping stream: the
// first switch must lose nothing, the second (the direct path cut) at
// most about 1.5 s.
func TestNATPathSwitch(t *testing.T) {
	begin := time.Now()
	specs := []netlab.NATHostSpec{{Name: "pp1", Kind: netlab.PortPreserving}, {Name: "pp2", Kind: netlab.PortPreserving}}
	l := startNATLab(t, specs, meshlab.Options{}, "conntrack")
	h1, h2 := l.NAT.Host("pp1"), l.NAT.Host("pp2")

	// The two routers cannot exchange UDP: only the relay works.
	if err := l.BlockUDP(h1.Router, h2.WAN); err != nil {
		t.Fatal(err)
	}
	startNATPeers(t, l, "pp1", "pp2")
	waitPeersUp(t, l, "pp1", "pp2")
	st2, err := l.Status("pp2")
	if err != nil {
		t.Fatal(err)
	}
	st1, err := l.Status("pp1")
	if err != nil {
		t.Fatal(err)
	}
	ip1, ip2 := st1.Self.OverlayIP, st2.Self.OverlayIP
	if err := l.Net.Ping("pp1", ip2, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Net.Ping("pp2", ip1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitPaths(t, l, "pp1", "pp2", api.PathRelay, 10*time.Second)
	t.Logf("pp1 and pp2 reach each other through the relay %s after start", time.Since(l.Started["pp2"]).Round(time.Millisecond))

	t.Run("relay to direct loses nothing", func(t *testing.T) {
		ping, err := l.StartPing("pp1", ip2, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // steady traffic through the relay first
		if err := l.UnblockUDP(h1.Router); err != nil {
			t.Fatal(err)
		}
		took := waitPaths(t, l, "pp1", "pp2", api.PathDirect, 8*time.Second)
		gap, sent, recv := ping.Wait()
		t.Logf("direct on both sides %s after the routers could exchange UDP; 100 pps: %d sent, %d answered, %d lost, longest gap %s",
			took.Round(time.Millisecond), sent, recv, sent-recv, gap.Round(time.Millisecond))
		if sent == 0 || recv != sent {
			t.Errorf("%d of %d pings lost while the pair moved from the relay to the direct path; want none", sent-recv, sent)
		}
	})
	t.Run("direct path cut falls back to the relay", func(t *testing.T) {
		waitPaths(t, l, "pp1", "pp2", api.PathDirect, 5*time.Second)
		ping, err := l.StartPing("pp1", ip2, 6*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // steady traffic on the direct path first
		if err := l.BlockUDP(h1.Router, h2.WAN); err != nil {
			t.Fatal(err)
		}
		if err := l.FlushUDPConntrack(h2.Router); err != nil {
			t.Fatal(err)
		}
		took := waitPaths(t, l, "pp1", "pp2", api.PathRelay, 5*time.Second)
		gap, sent, recv := ping.Wait()
		t.Logf("relay on both sides %s after the cut; 100 pps: %d sent, %d answered, %d lost, longest gap %s",
			took.Round(time.Millisecond), sent, recv, sent-recv, gap.Round(time.Millisecond))
		if gap > 1500*time.Millisecond {
			t.Errorf("longest gap %s after the direct path was cut; want at most 1.5 s before the relay carries the traffic", gap.Round(time.Millisecond))
		}
		if err := l.Net.Ping("pp2", ip1, 2*time.Second); err != nil {
			t.Errorf("after the fallback: %v", err)
		}
	})
	t.Logf("TestNATPathSwitch took %s", time.Since(begin).Round(time.Millisecond))
}

// turnAddr is the external TURN server's address on the NAT lab's WAN
// (netlab leaves .200-.254 to tests).
const turnAddr = "198.18.0.200"

// TestRelayExternalCoturn hands the peers coturn instead of the
// coordinators' own relays (--relay-url, --relay-secret-file, coturn's
// use-auth-secret): two peers behind symmetric NATs must reach each other
// through relayed addresses on coturn.
func TestRelayExternalCoturn(t *testing.T) {
	begin := time.Now()
	turnserver, err := exec.LookPath("turnserver")
	if err != nil {
		t.Skip("needs coturn's turnserver (scripts/deps.sh installs Debian's coturn)")
	}
	dir := t.TempDir()
	secret := make([]byte, 16)
	rand.Read(secret)
	secretFile := filepath.Join(dir, "turn.secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	specs := []netlab.NATHostSpec{{Name: "sym1", Kind: netlab.Symmetric}, {Name: "sym2", Kind: netlab.Symmetric}}
	l := startNATLab(t, specs, meshlab.Options{CoordinatorArgs: []string{
		"--relay-url", "turn:" + turnAddr + ":3478", "--relay-secret-file", secretFile}})

	if err := l.Net.AddNS("turn"); err != nil {
		t.Fatal(err)
	}
	if err := l.Net.Connect("turn", "eth0", turnAddr+"/24", "wan", "br0"); err != nil {
		t.Fatal(err)
	}
	p, err := harness.Start(l.Opts.Dir, "turn", l.Net.Wrap("turn"), turnserver,
		"-n", "-v", "--no-cli", "--no-tls", "--no-dtls",
		"--listening-ip="+turnAddr, "--relay-ip="+turnAddr, "--listening-port=3478",
		"--use-auth-secret", "--static-auth-secret="+hex.EncodeToString(secret), "--realm=meshd",
		// The lab's addresses are not public ones; say so rather than
		// rely on coturn's defaults for which peers it relays to.
		"--allowed-peer-ip=198.18.0.0-198.19.255.255",
		"--pidfile="+filepath.Join(l.Opts.Dir, "turnserver.pid"), "--log-file=stdout", "--simple-log")
	if err != nil {
		t.Fatal(err)
	}
	l.Procs["turn"] = p // the lab stops it and shows its log on failure
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := l.Net.Exec("turn", "ss", "-Hlun", "src", turnAddr+":3478")
		if err == nil && strings.Contains(string(out), turnAddr+":3478") {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("turnserver is not listening on %s:3478: %v\n%s", turnAddr, err, tail(p.Log(), 20))
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}

	startNATPeers(t, l, "sym1", "sym2")
	waitPeersUp(t, l, "sym1", "sym2")
	st1, err := l.Status("sym1")
	if err != nil {
		t.Fatal(err)
	}
	st2, err := l.Status("sym2")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Net.Ping("sym1", st2.Self.OverlayIP, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Net.Ping("sym2", st1.Self.OverlayIP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitPaths(t, l, "sym1", "sym2", api.PathRelay, 10*time.Second)
	for _, pair := range [][2]string{{"sym1", "sym2"}, {"sym2", "sym1"}} {
		st, err := l.Status(pair[0])
		if err != nil {
			t.Fatal(err)
		}
		_, ep := meshlab.PeerPath(st, pair[1])
		t.Logf("%s: own relayed address %s; %s through relayed address %s", pair[0], st.Relay, pair[1], ep)
		if !strings.HasPrefix(st.Relay, turnAddr+":") {
			t.Errorf("%s's relayed address is %q; want one on coturn (%s)", pair[0], st.Relay, turnAddr)
		}
		if !strings.HasPrefix(ep, turnAddr+":") {
			t.Errorf("%s reaches %s through %q; want a relayed address on coturn (%s)", pair[0], pair[1], ep, turnAddr)
		}
	}
	t.Logf("TestRelayExternalCoturn took %s", time.Since(begin).Round(time.Millisecond))
}

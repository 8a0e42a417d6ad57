package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

var labSeq atomic.Int32

// labOptions skips the test unless it can build namespace labs (root,
// the tools, /dev/net/tun), and fills o with names unique to this test
// run, a temporary dir and the meshd binary.
func labOptions(t *testing.T, o meshlab.Options, tools ...string) meshlab.Options {
	t.Helper()
	if testing.Short() {
		t.Skip("network-namespace test")
	}
	if os.Geteuid() != 0 {
		t.Skip("network-namespace tests need root")
	}
	for _, tool := range append([]string{"ip", "ping"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	bin, err := harness.Binary()
	if err != nil {
		t.Fatal(err)
	}
	n := labSeq.Add(1)
	o.Prefix = fmt.Sprintf("mt%d%c-", os.Getpid()%100000, 'a'+n-1)
	o.IfPrefix = fmt.Sprintf("t%d%c-", os.Getpid()%100, 'a'+n-1)
	o.Dir = t.TempDir()
	o.Bin = bin
	return o
}

// closeLabAtEnd tears l down when the test ends, also on failure, after
// logging the tail of every process's log if the test failed.
func closeLabAtEnd(t *testing.T, l *meshlab.Lab) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			for name := range l.Procs {
				t.Logf("--- %s log (tail):\n%s", name, tail(l.Logs(name), 40))
			}
			keepLogs(t, l)
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab teardown: %v", err)
		}
		if left, _ := netlab.Namespaces(l.Opts.Prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
}

// keepLogs copies every process's log to $MESHD_E2E_LOGS/TEST/ when that
// variable names a directory: the lab's own dir goes with the test.
func keepLogs(t *testing.T, l *meshlab.Lab) {
	root := os.Getenv("MESHD_E2E_LOGS")
	if root == "" {
		return
	}
	dir := filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	for name := range l.Procs {
		os.WriteFile(filepath.Join(dir, name+".log"), []byte(l.Logs(name)), 0o644)
	}
	t.Logf("logs kept in %s", dir)
}

// startLab brings up the lab in namespaces unique to this test run, and
// tears it down when the test ends, also on failure.
func startLab(t *testing.T, o meshlab.Options) *meshlab.Lab {
	t.Helper()
	o = labOptions(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := meshlab.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	closeLabAtEnd(t, l)
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func status(t *testing.T, l *meshlab.Lab, peer string) *api.LocalStatus {
	t.Helper()
	out, err := l.Net.Exec(peer, l.Opts.Bin, "status", "--json", "--state-dir", l.StateDir(peer))
	if err != nil {
		t.Fatal(err)
	}
	var st api.LocalStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return &st
}

// serveOn starts the source-reporting server in a namespace.
func serveOn(t *testing.T, l *meshlab.Lab, ns, addr string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.Net.NS(ns), "env", helperEnv + "=serve", "MESHD_E2E_ADDR=" + addr}, self)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// probeFrom connects from ns to addr over proto (tcp, udp) and returns the
// source address the server saw; it retries until deadline.
func probeFrom(l *meshlab.Lab, ns, proto, addr string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		out, err := probeOnce(l, ns, proto, addr, 2*time.Second)
		if err == nil {
			return string(out), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s %s from %s: %w", proto, addr, ns, err)
		}
	}
}

// probeOnce connects once from ns to addr over proto, waiting at most
// timeout, and returns the source address the server saw.
func probeOnce(l *meshlab.Lab, ns, proto, addr string, timeout time.Duration) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return l.Net.Exec(ns, "env", helperEnv+"=probe", "MESHD_E2E_PROTO="+proto, "MESHD_E2E_ADDR="+addr, "MESHD_E2E_TIMEOUT="+timeout.String(), self)
}

// meshPair is one check of the mesh matrix: from (a namespace) connects
// to address to, and the server there must see source wantSrc.
type meshPair struct{ from, to, wantSrc string }

// meshPairs is the flat lab's reachability matrix in one address family:
// ip holds each client's overlay address of that family, hostA and hostB
// the site LAN hosts' addresses of it. Clients reach each other, both
// sites' LAN hosts and the LAN hosts each other, each server seeing the
// true source; LAN hosts open connections to clients too.
func meshPairs(ip map[string]string, hostA, hostB string) []meshPair {
	return []meshPair{
		{"cl1", ip["cl2"], ip["cl1"]},
		{"cl1", hostA, ip["cl1"]},
		{"cl2", hostB, ip["cl2"]},
		{"hosta", hostB, hostA},
		{"hostb", hostA, hostB},
		// server-initiated: a LAN host opens a connection to a client
		{"hosta", ip["cl1"], hostA},
		{"hostb", ip["cl2"], hostB},
	}
}

// checkMeshPairs checks every pair over ICMP (ping), TCP and UDP, the
// latter two against the source-reporting servers on port (serveOn).
func checkMeshPairs(t *testing.T, l *meshlab.Lab, pairs []meshPair, port string) {
	t.Helper()
	for _, tt := range pairs {
		if err := l.Net.Ping(tt.from, tt.to, 10*time.Second); err != nil {
			t.Errorf("icmp: %v", err)
		}
		for _, proto := range []string{"tcp", "udp"} {
			src, err := probeFrom(l, tt.from, proto, net.JoinHostPort(tt.to, port), 10*time.Second)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			if src != tt.wantSrc {
				t.Errorf("%s %s -> %s: server saw source %s; want %s", proto, tt.from, tt.to, src, tt.wantSrc)
			}
		}
	}
}

func TestMeshEndToEnd(t *testing.T) {
	l := startLab(t, meshlab.Options{})
	ip := map[string]string{}
	for _, p := range meshlab.Peers {
		ip[p.Name] = status(t, l, p.Name).Self.OverlayIP
	}
	port := "7000"
	serveOn(t, l, "hosta", netlab.HostA+":"+port)
	serveOn(t, l, "hostb", netlab.HostB+":"+port)
	serveOn(t, l, "cl1", ip["cl1"]+":"+port)
	serveOn(t, l, "cl2", ip["cl2"]+":"+port)

	t.Run("reachability and true source IP", func(t *testing.T) {
		checkMeshPairs(t, l, meshPairs(ip, netlab.HostA, netlab.HostB), port)
	})

	t.Run("wg show lists every other peer", func(t *testing.T) {
		out, err := l.Net.Exec("cl1", "wg", "show", l.Interface("cl1"), "allowed-ips")
		if err != nil {
			t.Fatalf("wg show: %v", err)
		}
		for _, p := range []string{"gwa1", "gwb1", "cl2", "gwa2"} {
			if !strings.Contains(string(out), ip[p]+"/32") {
				t.Errorf("wg show on cl1 lacks %s (%s):\n%s", p, ip[p], out)
			}
		}
		if !strings.Contains(string(out), netlab.SiteA) || !strings.Contains(string(out), netlab.SiteB) {
			t.Errorf("wg show on cl1 lacks the site routes:\n%s", out)
		}
	})

	t.Run("reused single-use token is refused", func(t *testing.T) {
		tok, err := l.Admin("token", "create")
		if err != nil {
			t.Fatal(err)
		}
		tok = strings.TrimSpace(tok)
		// peers lists who is in the mesh (last_seen moves on by itself).
		peers := func() string {
			out, err := l.Admin("peer", "list", "--json")
			if err != nil {
				t.Fatal(err)
			}
			var list []struct {
				ID        string `json:"id"`
				Name      string `json:"name"`
				OverlayIP string `json:"overlay_ip"`
			}
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, p := range list {
				ids = append(ids, p.ID+" "+p.Name+" "+p.OverlayIP)
			}
			slices.Sort(ids)
			return strings.Join(ids, ",")
		}
		before := peers()
		dir1, dir2 := filepath.Join(l.Opts.Dir, "x1"), filepath.Join(l.Opts.Dir, "x2")
		run := func(dir, name string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.Net.NS("cl2"), l.Opts.Bin, "peer", "up", "--token", tok,
				"--state-dir", dir, "--name", name, "--interface", l.Interface("x")).CombinedOutput()
			return string(out), err
		}
		// The first use joins; stop it once it has (it keeps running).
		ctx, cancel := context.WithCancel(context.Background())
		first := exec.CommandContext(ctx, "ip", "netns", "exec", l.Net.NS("cl2"), l.Opts.Bin, "peer", "up", "--token", tok,
			"--state-dir", dir1, "--name", "x1", "--interface", l.Interface("x"))
		if err := first.Start(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "x1 to join", func() bool {
			_, err := os.Stat(filepath.Join(dir1, "identity.json"))
			return err == nil
		})
		cancel()
		first.Wait()
		mid := peers()
		out, err := run(dir2, "x2")
		if err == nil || !strings.Contains(out, "token_used_up") {
			t.Fatalf("second use of a single-use token: err %v, output %q; want a token_used_up refusal", err, out)
		}
		after := peers()
		if mid != after || mid == before {
			t.Fatal("the refused join changed the peer list")
		}
		if _, err := l.Admin("peer", "remove", "x1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("restart keeps identity and restores the mesh", func(t *testing.T) {
		before := status(t, l, "cl2")
		l.Procs["cl2"].Stop(10 * time.Second)
		if err := l.StartPeer("cl2", ""); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitPeerUp(context.Background(), "cl2", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		after := status(t, l, "cl2")
		if after.Self.PublicKey != before.Self.PublicKey || after.Self.OverlayIP != before.Self.OverlayIP {
			t.Fatalf("identity changed across restart: %+v -> %+v", before.Self, after.Self)
		}
		if err := l.Net.Ping("cl1", ip["cl2"], 10*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SIGKILL of the coordinator leader loses no packet", func(t *testing.T) {
		st, err := l.Admin("cluster", "status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var cs api.ClusterStatus
		if err := json.Unmarshal([]byte(st), &cs); err != nil {
			t.Fatal(err)
		}
		const count = 300
		ping := exec.Command("ip", "netns", "exec", l.Net.NS("cl1"), "ping", "-n", "-q", "-i", "0.01", "-c", strconv.Itoa(count), "-W", "1", netlab.HostB)
		var out strings.Builder
		ping.Stdout = &out
		if err := ping.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // kill in the middle of the stream
		l.Procs[cs.Leader].Kill()
		if err := ping.Wait(); err != nil {
			t.Fatalf("ping: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), fmt.Sprintf("%d packets transmitted, %d received", count, count)) {
			t.Fatalf("packets lost while the leader was killed:\n%s", out.String())
		}
		if err := l.StartCoordinator(cs.Leader); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("remove a peer: gone everywhere within 2s", func(t *testing.T) {
		key := status(t, l, "cl2").Self.PublicKey
		start := time.Now()
		if _, err := l.Admin("peer", "remove", "cl2"); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"cl1", "gwa1", "gwb1"} {
			waitUntil(t, 10*time.Second, "cl2 to leave "+p, func() bool {
				out, err := l.Net.Exec(p, "wg", "show", l.Interface(p), "peers")
				return err == nil && !strings.Contains(string(out), key)
			})
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("removed peer lingered %s; want within 2s", took)
		}
		select {
		case <-l.Procs["cl2"].Done():
			var ee *exec.ExitError
			if err := l.Procs["cl2"].Err(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("the removed peer's agent ended with %v; want exit status 3", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the removed peer's agent kept running")
		}
		if !strings.Contains(l.Logs("cl2"), "removed from the mesh by an administrator") {
			t.Errorf("the removed agent did not say why it stopped:\n%s", tail(l.Logs("cl2"), 5))
		}
	})

	t.Run("every coordinator down: the mesh still forwards", func(t *testing.T) {
		for _, c := range l.Topo.Coordinators {
			l.Procs[c.Name].Kill()
		}
		if err := l.Net.Ping("cl1", netlab.HostA, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if src, err := probeFrom(l, "hostb", "tcp", netlab.HostA+":"+port, 5*time.Second); err != nil || src != netlab.HostB {
			t.Fatalf("site to site without coordinators: %q, %v", src, err)
		}
		// A peer restarted now comes back from the map it saved.
		l.Procs["cl1"].Stop(10 * time.Second)
		if err := l.StartPeer("cl1", ""); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitPeerUp(context.Background(), "cl1", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.Net.Ping("cl1", netlab.HostA, 10*time.Second); err != nil {
			t.Fatalf("a peer restarted with every coordinator down: %v", err)
		}
		if st := status(t, l, "cl1"); st.Coordinator != "" || len(st.Peers) < 3 || st.MapIndex == 0 {
			t.Fatalf("restarted peer: coordinator %q, %d peers, map index %d; want its saved map and no coordinator", st.Coordinator, len(st.Peers), st.MapIndex)
		}
	})
}

func TestMeshSNAT(t *testing.T) {
	l := startLab(t, meshlab.Options{SNAT: true, Peers: []string{"gwa1", "gwb1", "cl1"}})
	serveOn(t, l, "hosta", netlab.HostA+":7000")
	src, err := probeFrom(l, "cl1", "tcp", netlab.HostA+":7000", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if src != netlab.GWA1LAN {
		t.Fatalf("with --snat hosta saw %s; want the gateway's LAN address %s", src, netlab.GWA1LAN)
	}
}

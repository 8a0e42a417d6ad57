package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
)

// reaches makes one TCP connection from ns to addr with a short timeout.
func reaches(l *meshlab.Lab, ns, addr string) bool {
	_, err := probeOnce(l, ns, "tcp", addr, 300*time.Millisecond)
	return err == nil
}

// within polls until reaches(ns, addr) == want, and returns how long that
// took; it fails the test after d.
func within(t *testing.T, l *meshlab.Lab, ns, addr string, want bool, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for reaches(l, ns, addr) != want {
		if time.Since(start) > d {
			t.Fatalf("%s -> %s: reachable = %v after %v; want %v", ns, addr, !want, d, want)
		}
	}
	return time.Since(start)
}

// TestPolicy: with a policy that lets the clients (tag branch) reach site
// A's LAN on 443 and cl1 reach cl2 on 443, cl1 reaches 443 and not 22 on
// both (the LAN host is protected by its gateway the same way as a peer by
// itself), cl2 reaches nothing of cl1, and a change to the policy takes
// effect within about a second.
func TestPolicy(t *testing.T) {
	l := startLab(t, meshlab.Options{})
	ip := map[string]string{}
	for _, p := range meshlab.Peers {
		ip[p.Name] = status(t, l, p.Name).Self.OverlayIP
	}
	for _, port := range []string{"443", "22"} {
		serveOn(t, l, "hosta", netlab.HostA+":"+port)
		serveOn(t, l, "cl2", ip["cl2"]+":"+port)
		serveOn(t, l, "cl1", ip["cl1"]+":"+port)
	}
	hosta22, hosta443 := netlab.HostA+":22", netlab.HostA+":443"
	cl2_22, cl2_443 := ip["cl2"]+":22", ip["cl2"]+":443"
	// Without a policy everything passes.
	within(t, l, "cl1", hosta22, true, 10*time.Second)
	within(t, l, "cl1", cl2_22, true, 10*time.Second)

	dir := t.TempDir()
	set := func(doc string) {
		t.Helper()
		f := filepath.Join(dir, fmt.Sprintf("policy-%d.json", time.Now().UnixNano()))
		if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := l.Admin("policy", "set", "--vnet", "default", f); err != nil {
			t.Fatalf("policy set: %v\n%s", err, out)
		}
	}
	set(fmt.Sprintf(`{"acls": [{"action": "accept", "src": ["tag:%s"], "dst": ["%s:443"], "proto": "tcp"},
	  {"action": "accept", "src": ["peer:cl1"], "dst": ["peer:cl2:443"], "proto": "tcp"}],
	  "tests": [{"src": "peer:cl1", "accept": ["peer:cl2:443"], "deny": ["peer:cl2:22"]}]}`, meshlab.ClientTag, netlab.SiteA))
	took := within(t, l, "cl1", hosta22, false, 3*time.Second)
	t.Logf("cl1 -> hosta:22 blocked %v after policy set returned", took.Round(time.Millisecond))
	within(t, l, "cl1", cl2_22, false, 3*time.Second)
	for _, addr := range []string{hosta443, cl2_443} {
		if !reaches(l, "cl1", addr) {
			t.Errorf("cl1 -> %s refused; the policy accepts it", addr)
		}
	}
	if reaches(l, "cl2", ip["cl1"]+":443") {
		t.Error("cl2 reached cl1, which no rule accepts")
	}
	// Open 22 on the site: effective within about a second.
	set(fmt.Sprintf(`{"acls": [{"action": "accept", "src": ["tag:%s"], "dst": ["%s:22,443"], "proto": "tcp"},
	  {"action": "accept", "src": ["peer:cl1"], "dst": ["peer:cl2:443"], "proto": "tcp"}]}`, meshlab.ClientTag, netlab.SiteA))
	took = within(t, l, "cl1", hosta22, true, 3*time.Second)
	t.Logf("cl1 -> hosta:22 open %v after the new policy was set", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Errorf("the policy change took %v to reach the gateway; want about a second at most", took)
	}
	if reaches(l, "cl1", cl2_22) {
		t.Error("cl1 reached cl2:22 after a change that did not open it")
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// wireguardGo is the userspace WireGuard binary a stock device runs: the
// distribution's (Debian's wireguard-go, which scripts/deps.sh installs),
// or else wireguard-go built from the module this repository already
// requires, into dir.
func wireguardGo(t *testing.T, dir string) string {
	t.Helper()
	if p, err := exec.LookPath("wireguard-go"); err == nil {
		return p
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "wireguard-go")
	cmd := exec.Command("go", "build", "-o", out, "golang.zx2c4.com/wireguard")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build wireguard-go: %v\n%s", err, b)
	}
	return out
}

// deviceUp brings the wg-quick config conf up in namespace ns with stock
// wg-quick, which drives wireguard-go through a wrapper that keeps its pid
// in a pid file, and takes it down (and stops that wireguard-go by its
// pid) when the test ends.
func deviceUp(t *testing.T, l *meshlab.Lab, ns, conf string) {
	t.Helper()
	dir := l.Opts.Dir
	wggo := wireguardGo(t, dir)
	pidFile := filepath.Join(dir, "wireguard-go.pid")
	iface := strings.TrimSuffix(filepath.Base(conf), ".conf")
	// wg-quick runs WG_QUICK_USERSPACE_IMPLEMENTATION IFACE and expects
	// the UAPI socket to be there when it returns, as wireguard-go's own
	// daemon mode does; this runs it in the foreground (so its pid is the
	// one recorded) and waits for the socket, for at most 10 s.
	wrapper := filepath.Join(dir, "wg-userspace")
	script := fmt.Sprintf(`#!/bin/sh
WG_PROCESS_FOREGROUND=1 %q "$1" </dev/null >>%q 2>&1 &
echo $! >%q
i=0
while [ ! -S /var/run/wireguard/"$1".sock ]; do
	i=$((i+1)); [ $i -gt 200 ] && exit 1
	sleep 0.05
done
`, wggo, filepath.Join(dir, "wireguard-go.log"), pidFile)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Net.Exec(ns, "wg-quick", "down", conf)
		if err := harness.StopPidFile(pidFile, 5*time.Second); err != nil {
			t.Errorf("stop wireguard-go: %v", err)
		}
		os.Remove(filepath.Join("/var/run/wireguard", iface+".sock"))
	})
	if out, err := l.Net.Exec(ns, "env", "WG_QUICK_USERSPACE_IMPLEMENTATION="+wrapper, "wg-quick", "up", conf); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "wireguard-go.log"))
		t.Fatalf("wg-quick up: %v\n%s\nwireguard-go: %s", err, out, b)
	}
}

// TestDeviceExport: a device exported with `meshd peer export` and brought
// up by stock wg-quick with wireguard-go reaches the site LAN behind the
// gateway (which sees the device's overlay address as the source) and a
// client; `peer list` shows it as a device, and `peer remove` cuts it off.
func TestDeviceExport(t *testing.T) {
	if _, err := exec.LookPath("wg-quick"); err != nil {
		t.Skip("needs wg-quick (scripts/deps.sh installs wireguard-tools)")
	}
	l := startLab(t, meshlab.Options{Peers: []string{"gwb1", "cl1"}})
	const dev = "dev1"
	if err := l.Net.AddNS(dev); err != nil {
		t.Fatal(err)
	}
	if err := l.Net.Connect(dev, "eth0", "198.18.99.51/24", "wan", "br0"); err != nil {
		t.Fatal(err)
	}
	clIP := status(t, l, "cl1").Self.OverlayIP
	serveOn(t, l, "hostb", netlab.HostB+":7000")
	serveOn(t, l, "cl1", clIP+":7000")

	conf := filepath.Join(l.Opts.Dir, l.Opts.IfPrefix+"dev.conf")
	if _, err := l.Admin("peer", "export", "phone", "--format", "wg-quick", "--routes", netlab.SiteB, "--out", conf); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(conf); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	out, err := l.Admin("peer", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var peers []api.Peer
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatal(err)
	}
	var phone *api.Peer
	for i := range peers {
		if peers[i].Name == "phone" {
			phone = &peers[i]
		}
	}
	if phone == nil || phone.Role != api.RoleDevice {
		t.Fatalf("peer list %+v; want phone with role device", peers)
	}

	start := time.Now()
	deviceUp(t, l, dev, conf)
	for _, tt := range []struct{ name, addr string }{
		{"the site LAN host", netlab.HostB + ":7000"},
		{"the client", clIP + ":7000"},
	} {
		src, err := probeFrom(l, dev, "tcp", tt.addr, 15*time.Second)
		if err != nil {
			t.Fatalf("device to %s: %v", tt.name, err)
		}
		if src != phone.OverlayIP {
			t.Errorf("device to %s: the server saw source %s; want the device's overlay address %s", tt.name, src, phone.OverlayIP)
		}
	}
	t.Logf("device reached the LAN host and the client %s after wg-quick up began", time.Since(start).Round(time.Millisecond))

	// The gateway's own view: it has handshaken with the device.
	var seen bool
	for _, p := range status(t, l, "gwb1").Peers {
		if p.Name == "phone" {
			seen = p.LastHandshake != nil && p.LastHandshakeAgeSeconds != nil && p.Online && strings.HasPrefix(p.Endpoint, "198.18.99.51:")
		}
	}
	if !seen {
		t.Errorf("gwb1's status does not show phone online with a handshake from 198.18.99.51: %+v", status(t, l, "gwb1").Peers)
	}

	// Removing the device cuts it off everywhere.
	if _, err := l.Admin("peer", "remove", "phone"); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	waitUntil(t, 10*time.Second, "the device to lose the LAN host and the client", func() bool {
		_, e1 := probeOnce(l, dev, "tcp", netlab.HostB+":7000", 500*time.Millisecond)
		_, e2 := probeOnce(l, dev, "tcp", clIP+":7000", 500*time.Millisecond)
		return e1 != nil && e2 != nil
	})
	for _, p := range append(status(t, l, "gwb1").Peers, status(t, l, "cl1").Peers...) {
		if p.Name == "phone" {
			t.Fatalf("phone still in a peer's WireGuard after removal")
		}
	}
	t.Logf("device cut off %s after peer remove", time.Since(removed).Round(time.Millisecond))

	// status tells the truth about a dead peer: the gateway shows the
	// killed client offline within seconds, although its last handshake
	// is recent (peer.PeerOnline).
	online := func() (on, recent bool) {
		for _, p := range status(t, l, "gwb1").Peers {
			if p.Name == "cl1" {
				return p.Online, p.LastHandshakeAgeSeconds != nil && *p.LastHandshakeAgeSeconds < 120
			}
		}
		return false, false
	}
	if on, _ := online(); !on {
		t.Fatal("gwb1 shows cl1 offline while it runs")
	}
	l.Procs["cl1"].Kill()
	killed := time.Now()
	took := waitUntil(t, 15*time.Second, "gwb1 to show the killed cl1 offline", func() bool { on, _ := online(); return !on })
	if _, recent := online(); !recent {
		t.Errorf("cl1's last handshake is not recent: offline came from the handshake age, not from health")
	}
	t.Logf("gwb1 showed the killed cl1 offline %s after the kill", time.Since(killed).Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("offline after %s; want within a few seconds", took)
	}
}

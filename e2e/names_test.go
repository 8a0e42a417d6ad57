package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
)

// TestMeshNames: each agent answers NAME.VNET.mesh for the peers of its
// map. With the lab's resolv.conf in cl2's namespace, the C library there
// (getent, ping) resolves cl1 through cl2's own agent to the overlay
// address `peer list` gives, and the address back to the name; another
// peer is refused; after `peer remove cl1` the name is gone within
// seconds.
func TestMeshNames(t *testing.T) {
	o := labOptions(t, meshlab.Options{Peers: []string{"cl1", "cl2"}, Resolvers: true}, "getent")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := meshlab.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	closeLabAtEnd(t, l)

	out, err := l.Admin("peer", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []struct {
		Name      string `json:"name"`
		VNet      string `json:"vnet"`
		OverlayIP string `json:"overlay_ip"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("peer list --json: %v\n%s", err, out)
	}
	ip := map[string]string{}
	for _, p := range list {
		if p.VNet == "default" {
			ip[p.Name] = p.OverlayIP
		}
	}
	if ip["cl1"] == "" || ip["cl2"] == "" {
		t.Fatalf("peer list lacks cl1 or cl2: %s", out)
	}
	resolv, err := os.ReadFile(filepath.Join(netlab.EtcNetns, l.Net.NS("cl2"), "resolv.conf"))
	if err != nil || !strings.Contains(string(resolv), "nameserver "+ip["cl2"]+"\n") {
		t.Fatalf("cl2's resolv.conf (%v):\n%s\nwant nameserver %s", err, resolv, ip["cl2"])
	}

	// getent resolves the way ping does (the C library, /etc/resolv.conf).
	getent := func(ns, key string) (addr, name string, err error) {
		out, err := l.Net.Exec(ns, "getent", "hosts", key)
		if err != nil {
			return "", "", err
		}
		f := strings.Fields(string(out))
		if len(f) < 2 {
			return "", "", fmt.Errorf("getent hosts %s: %q", key, out)
		}
		return f[0], f[1], nil
	}
	t.Run("forward, reverse, search domain, ping", func(t *testing.T) {
		for _, key := range []string{"cl1.default.mesh", "CL1.Default.Mesh", "cl1"} {
			if addr, _, err := getent("cl2", key); err != nil || addr != ip["cl1"] {
				t.Errorf("getent hosts %s in cl2: %q, %v; want %s", key, addr, err, ip["cl1"])
			}
		}
		if _, name, err := getent("cl2", ip["cl1"]); err != nil || name != "cl1.default.mesh" {
			t.Errorf("getent hosts %s in cl2: %q, %v; want cl1.default.mesh", ip["cl1"], name, err)
		}
		if _, err := l.Net.Exec("cl2", "ping", "-c1", "-W2", "cl1.default.mesh"); err != nil {
			t.Errorf("ping cl1.default.mesh from cl2: %v", err)
		}
	})

	// query asks server (port 53) for name's A records from namespace ns.
	query := func(ns, server, name string, network string) (*dns.Msg, error) {
		var m *dns.Msg
		err := l.Net.InNS(ns, func() error {
			req := new(dns.Msg)
			req.SetQuestion(name, dns.TypeA)
			var err error
			m, _, err = (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(req, net.JoinHostPort(server, "53"))
			return err
		})
		return m, err
	}
	t.Run("TCP; NXDOMAIN with the SOA; another peer is refused", func(t *testing.T) {
		ask := func(ns, server, name string, network string) *dns.Msg {
			t.Helper()
			m, err := query(ns, server, name, network)
			if err != nil {
				t.Fatalf("%s asks %s over %s for %s: %v", ns, server, network, name, err)
			}
			return m
		}
		m := ask("cl2", ip["cl2"], "cl1.default.mesh.", "tcp")
		if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != ip["cl1"] {
			t.Errorf("over TCP: %v; want one A %s", m.Answer, ip["cl1"])
		}
		m = ask("cl2", ip["cl2"], "nope.default.mesh.", "udp")
		if m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("an unknown name: %s with authority %v; want NXDOMAIN with the SOA", dns.RcodeToString[m.Rcode], m.Ns)
		}
		// Through the tunnel, cl1 asks cl2's agent: only the host itself may.
		m = ask("cl1", ip["cl2"], "cl1.default.mesh.", "udp")
		if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
			t.Errorf("cl1 asking cl2's agent: %s %v; want REFUSED", dns.RcodeToString[m.Rcode], m.Answer)
		}
	})

	t.Run("a removed peer's name is gone within seconds", func(t *testing.T) {
		start := time.Now()
		if _, err := l.Admin("peer", "remove", "cl1"); err != nil {
			t.Fatal(err)
		}
		took := waitUntil(t, 10*time.Second, "cl2's agent to answer NXDOMAIN for cl1.default.mesh", func() bool {
			m, err := query("cl2", ip["cl2"], "cl1.default.mesh.", "udp")
			return err == nil && m.Rcode == dns.RcodeNameError
		})
		if addr, _, err := getent("cl2", "cl1.default.mesh"); err == nil {
			t.Errorf("getent hosts cl1.default.mesh in cl2 after the removal: %s", addr)
		}
		t.Logf("cl1.default.mesh stopped resolving %s after peer remove returned (%s after it was called)", took, time.Since(start))
		if took > 5*time.Second {
			t.Errorf("the removed peer's name resolved for %s; want within 5s", took)
		}
	})
}

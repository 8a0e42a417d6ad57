package e2e

import (
	"encoding/json"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// TestMeshIPv6 runs the mesh over both families: a dual-stack lab (IPv6
// beside IPv4 on the wan and site A's LAN, cl2 on the wan over IPv6 only,
// the coordinators serving the API, Raft and STUN over IPv6) and a
// dual-stack vnet. Clients reach each other at their IPv6 overlay
// addresses across an IPv6 underlay, an IPv6 LAN host sees their true
// source address and reaches them back, and site A's IPv6 route fails over
// from the killed active gateway to its standby, the LAN host following
// the IPv6 virtual IP.
func TestMeshIPv6(t *testing.T) {
	l := startLab(t, meshlab.Options{DualStack: true})
	overlay6 := netip.MustParsePrefix(meshlab.Overlay6)
	ip4, ip6 := map[string]string{}, map[string]string{}
	for _, p := range meshlab.Peers {
		st := status(t, l, p.Name)
		a, err := netip.ParseAddr(st.Self.OverlayIP6)
		if err != nil || !overlay6.Contains(a) || st.Self.VNet != meshlab.DualStackVNet {
			t.Fatalf("%s: overlay %q %q in vnet %q; want one in %s in %s", p.Name, st.Self.OverlayIP, st.Self.OverlayIP6, st.Self.VNet, overlay6, meshlab.DualStackVNet)
		}
		ip4[p.Name], ip6[p.Name] = st.Self.OverlayIP, a.String()
	}
	// The coordinators list both addresses of every peer.
	out, err := l.Admin("peer", "list", "--vnet", meshlab.DualStackVNet, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var peers []api.Peer
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatalf("peer list: %v\n%s", err, out)
	}
	for _, p := range peers {
		if p.OverlayIP6 != ip6[p.Name] || !strings.HasPrefix(p.OverlayIP, "100.70.") {
			t.Errorf("peer list: %s has %s %s; want 100.70.x.x and %s", p.Name, p.OverlayIP, p.OverlayIP6, ip6[p.Name])
		}
	}

	const port = "7000"
	for _, srv := range [][2]string{
		{"hosta", netlab.HostA}, {"hostb", netlab.HostB}, {"cl1", ip4["cl1"]}, {"cl2", ip4["cl2"]},
		{"hosta", netlab.HostA6}, {"hostb", netlab.HostB6}, {"cl1", ip6["cl1"]}, {"cl2", ip6["cl2"]},
	} {
		serveOn(t, l, srv[0], net.JoinHostPort(srv[1], port))
	}

	// The checks run on a settled mesh: both clients have a WireGuard
	// session with every other peer and see each site's IPv6 route on its
	// first gateway. That takes a round trip or two after the agents start
	// (about 0.2 s after the last one here); a handshake lost at the start
	// (WireGuard tries again only after 5 s) would miss the deadline.
	const settleWithin = 5 * time.Second
	var lastStart time.Time
	for _, p := range meshlab.Peers {
		if st := l.Started[p.Name]; st.After(lastStart) {
			lastStart = st
		}
	}
	waitUntil(t, settleWithin-time.Since(lastStart), "cl1 and cl2 to have a session with every peer and the IPv6 site routes on gwa1 and gwb1", func() bool {
		for _, cl := range []string{"cl1", "cl2"} {
			st := status(t, l, cl)
			if len(st.Peers) != len(meshlab.Peers)-1 {
				return false
			}
			for _, p := range st.Peers {
				if p.LastHandshake == nil {
					return false
				}
			}
			active := map[string]string{}
			for _, r := range st.Routes {
				active[r.Prefix] = r.ActiveGateway
			}
			if active[netlab.SiteA6] != "gwa1" || active[netlab.SiteB6] != "gwb1" {
				return false
			}
		}
		return true
	})
	t.Logf("mesh settled %s after the last agent started", time.Since(lastStart).Round(time.Millisecond))

	t.Run("clients over the overlay's IPv6 across an IPv6 underlay", func(t *testing.T) {
		if err := l.Net.Ping("cl1", ip6["cl2"], 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.Net.Ping("cl2", ip6["cl1"], 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// cl2 has no IPv4 on the wan: cl1 reaches it at its IPv6 address.
		waitPeerPath(t, l, "cl1", "cl2", l.Topo.Node("cl2").WAN6, 10*time.Second)
		wg, err := l.Net.Exec("cl1", "wg", "show", l.Interface("cl1"), "allowed-ips")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"cl2", "gwa1", "gwa2", "gwb1"} {
			if !strings.Contains(string(wg), ip6[p]+"/128") {
				t.Errorf("wg show on cl1 lacks %s's %s/128:\n%s", p, ip6[p], wg)
			}
		}
		for _, site := range []string{netlab.SiteA6, netlab.SiteB6} {
			if !strings.Contains(string(wg), site) {
				t.Errorf("wg show on cl1 lacks the IPv6 site route %s:\n%s", site, wg)
			}
		}
		// Status names both addresses of every other peer, and only
		// announced prefixes as its routes.
		for _, p := range status(t, l, "cl1").Peers {
			if p.OverlayIP6 != ip6[p.Name] || slices.Contains(p.Routes, ip6[p.Name]+"/128") {
				t.Errorf("cl1's status shows %s as %s %s with routes %v; want %s and no /128 route", p.Name, p.OverlayIP, p.OverlayIP6, p.Routes, ip6[p.Name])
			}
		}
	})

	// The mesh matrix of TestMeshEndToEnd, in each family: IPv6 end to
	// end, and IPv4 overlay addresses and LANs across a wan where cl2 has
	// IPv6 alone.
	for _, fam := range []struct {
		name         string
		ip           map[string]string
		hostA, hostB string
		more         []meshPair
	}{
		// cl2, on IPv6 alone, reaches site A's HA pair too.
		{"mesh matrix over IPv6", ip6, netlab.HostA6, netlab.HostB6, []meshPair{{"cl2", netlab.HostA6, ip6["cl2"]}}},
		{"mesh matrix over IPv4 across the dual-stack underlay", ip4, netlab.HostA, netlab.HostB, nil},
	} {
		t.Run(fam.name, func(t *testing.T) {
			start := time.Now()
			checkMeshPairs(t, l, append(meshPairs(fam.ip, fam.hostA, fam.hostB), fam.more...), port)
			t.Logf("%s: %s", fam.name, time.Since(start).Round(time.Millisecond))
		})
	}

	t.Run("an IPv6-only vnet", func(t *testing.T) {
		if _, err := l.Admin("vnet", "create", "v6only", "--overlay", "fd7b:1::/48"); err != nil {
			t.Fatal(err)
		}
		tok, err := l.Admin("token", "create", "--vnet", "v6only", "--uses", "2")
		if err != nil {
			t.Fatal(err)
		}
		// A second agent beside cl1's and cl2's, on its own interface.
		hosts := map[string]string{"v6a": "cl1", "v6b": "cl2"}
		for name, ns := range hosts {
			if err := l.StartPeerIn(ns, name, strings.TrimSpace(tok), "--listen-port", map[string]string{"v6a": "51901", "v6b": "51902"}[name]); err != nil {
				t.Fatal(err)
			}
		}
		ip := map[string]string{}
		for name, ns := range hosts {
			waitUntil(t, 20*time.Second, name+" to come up with an IPv6 overlay address", func() bool {
				out, err := l.Net.Exec(ns, l.Opts.Bin, "status", "--json", "--state-dir", l.StateDir(name))
				var st api.LocalStatus
				if err != nil || json.Unmarshal(out, &st) != nil {
					return false
				}
				a, err := netip.ParseAddr(st.Self.OverlayIP)
				ip[name] = st.Self.OverlayIP
				return err == nil && netip.MustParsePrefix("fd7b:1::/48").Contains(a) && st.Self.OverlayIP6 == ""
			})
		}
		if err := l.Net.Ping("cl1", ip["v6b"], 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.Net.Ping("cl2", ip["v6a"], 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SIGKILL the active gateway of the IPv6 route", func(t *testing.T) {
		waitUntil(t, 20*time.Second, "site A's IPv6 route carried by gwa1 in cl1's view and the coordinators'", func() bool {
			gw, _ := l.ActiveGateway("cl1", netlab.SiteA6)
			return gw == "gwa1" && lookupActive(l, netlab.HostA6, meshlab.DualStackVNet) == "gwa1"
		})
		ping, err := l.StartPing("cl1", netlab.HostA6, 4*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // steady traffic before the kill
		l.Procs["gwa1"].Kill()
		gap, sent, recv := ping.Wait()
		t.Logf("SIGKILL of gwa1: longest gap %s over IPv6 (%d sent, %d answered)", gap, sent, recv)
		if recv < sent/2 {
			t.Fatalf("only %d of %d pings answered", recv, sent)
		}
		if gap > time.Second {
			t.Errorf("failover gap %s; want at most 1s", gap)
		}
		if gw, _ := l.ActiveGateway("cl1", netlab.SiteA6); gw != "gwa2" {
			t.Fatalf("after the kill site A's IPv6 route goes through %q; want gwa2", gw)
		}
		waitUntil(t, 10*time.Second, "the coordinators to see site A's IPv6 route via gwa2", func() bool {
			return lookupActive(l, netlab.HostA6, meshlab.DualStackVNet) == "gwa2"
		})
		// The LAN host's own connections follow the IPv6 VIP to gwa2.
		if src, err := probeFrom(l, "hosta", "tcp", net.JoinHostPort(ip6["cl1"], port), 5*time.Second); err != nil || src != netlab.HostA6 {
			t.Fatalf("hosta -> cl1 after the failover: source %q, %v; want %s", src, err, netlab.HostA6)
		}
	})
}

// lookupActive is the active gateway `route lookup IP --vnet VNET` names
// (the coordinators' view); "" when the lookup fails or nothing carries ip.
func lookupActive(l *meshlab.Lab, ip, vnet string) string {
	out, err := l.Admin("route", "lookup", ip, "--vnet", vnet, "--json")
	if err != nil {
		return ""
	}
	var r api.LookupResult
	if json.Unmarshal([]byte(out), &r) != nil {
		return ""
	}
	return r.ActiveGateway
}

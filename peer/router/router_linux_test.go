package router

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/peer/internal/netnstest"
)

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestLinuxRouter runs the netlink router against a dummy interface in a
// throwaway network namespace (root only). The namespace, and every
// interface, route and nftables table in it, disappears when the test
// returns, failed or not.
func TestLinuxRouter(t *testing.T) {
	netnstest.Run(t, false, func() {
		if err := testLinuxRouter(t); err != nil {
			t.Error(err)
		}
	})
}

const (
	meshDev = "meshdtest0"
	lanDev  = "lantest0"
)

// testLinuxRouter runs in the test's namespace on a locked thread, where
// t.Fatal cannot be used: it returns the first fatal problem, and reports
// the others with t.Errorf.
func testLinuxRouter(t *testing.T) error {
	if err := os.WriteFile(ipForward, []byte("0\n"), 0o644); err != nil {
		return err
	}
	for _, name := range []string{meshDev, lanDev} {
		if err := addTestLink(name); err != nil {
			return err
		}
	}
	// The LAN interface has its subnet route, which a remote site also uses.
	lan, err := netlink.LinkByName(lanDev)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(lan, &netlink.Addr{IPNet: toIPNet(netip.MustParsePrefix("10.9.0.1/24"))}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lan); err != nil {
		return err
	}

	r, err := New(meshDev, slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		return err
	}
	lr := r.(*linuxRouter)
	if err := r.Up(); err != nil {
		return err
	}
	mesh, err := netlink.LinkByName(meshDev)
	if err != nil {
		return err
	}
	if mesh.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s is down after Up", meshDev)
	}
	// A route someone else installed through the mesh interface.
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mesh.Attrs().Index, Dst: toIPNet(netip.MustParsePrefix("172.16.0.0/16")),
		Protocol: unix.RTPROT_STATIC}); err != nil {
		return err
	}
	others := func(step string) {
		t.Helper()
		for _, want := range []struct{ dst, dev string }{{"172.16.0.0/16", meshDev}, {"10.9.0.0/24", lanDev}} {
			if !hasRoute(want.dst, want.dev) {
				t.Errorf("%s: the route to %s dev %s that meshd did not install is gone", step, want.dst, want.dev)
			}
		}
	}

	cfg := &Config{
		Addrs:   pfxs("100.96.0.5/32"),
		Routes:  pfxs("100.96.0.0/12", "192.168.10.0/24", "10.9.0.0/24"),
		MTU:     1380,
		Forward: true, SNAT: true, ClampMSS: true,
	}
	if err := r.Set(cfg); err != nil {
		return err
	}
	check(t, "first Set", []string{"100.96.0.5/32"}, []string{"100.96.0.0/12 src 100.96.0.5", "192.168.10.0/24 src 100.96.0.5"}, true, true)
	others("first Set")
	if l, _ := netlink.LinkByName(meshDev); l == nil || l.Attrs().MTU != 1380 {
		t.Errorf("MTU not set to 1380: %v", l)
	}
	checkForward(t, "first Set", "1")
	if lr.changes == 0 {
		t.Errorf("first Set: no changes counted")
	}

	n := lr.changes
	if err := r.Set(cfg); err != nil {
		return err
	}
	if lr.changes != n {
		t.Errorf("the same Set again made %d changes; want 0", lr.changes-n)
	}

	// The address moves, a site goes, another comes, SNAT is no longer
	// wanted.
	cfg = &Config{Addrs: pfxs("100.96.0.9/32"), Routes: pfxs("100.96.0.0/12", "192.168.20.0/24"), MTU: 1380, Forward: true, ClampMSS: true}
	if err := r.Set(cfg); err != nil {
		return err
	}
	check(t, "second config", []string{"100.96.0.9/32"}, []string{"100.96.0.0/12 src 100.96.0.9", "192.168.20.0/24 src 100.96.0.9"}, false, true)
	others("second config")

	// What others remove of meshd's is put back on the next Set.
	if err := netlink.RouteDel(lr.kernelRoute(mesh, rt("192.168.20.0/24 src 100.96.0.9"))); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(meshDev)})
	if err := c.Flush(); err != nil {
		return err
	}
	if err := r.Set(cfg); err != nil {
		return err
	}
	check(t, "after tampering", []string{"100.96.0.9/32"}, []string{"100.96.0.0/12 src 100.96.0.9", "192.168.20.0/24 src 100.96.0.9"}, false, true)

	// Moving an address within its subnet: the new one comes in as a
	// secondary, which the kernel may delete along with the old primary;
	// Set still ends with exactly the wanted addresses.
	for _, a := range []string{"10.50.0.5/24", "10.50.0.9/24"} {
		cfg.Addrs = pfxs("100.96.0.9/32", a)
		if err := r.Set(cfg); err != nil {
			return err
		}
		check(t, "address "+a, []string{a, "100.96.0.9/32"}, []string{"100.96.0.0/12 src 100.96.0.9", "192.168.20.0/24 src 100.96.0.9"}, false, true)
	}

	// Dual-stack: an IPv6 address beside the IPv4 one, IPv6 routes with
	// the IPv6 source (usable at once: no duplicate address detection),
	// and IPv6 forwarding for an IPv6 site; taking the site away puts
	// IPv6 forwarding back and leaves IPv4 as it was.
	if err := os.WriteFile(ip6Forward, []byte("0\n"), 0o644); err != nil {
		return err
	}
	dual := &Config{Addrs: pfxs("100.96.0.9/32", "fd7a:115c:a1e0::9/128"), MTU: 1380, Forward: true, Forward6: true, ClampMSS: true,
		Routes: pfxs("100.96.0.0/12", "192.168.20.0/24", "fd7a:115c:a1e0::/48", "fd00:20::/64")}
	if err := r.Set(dual); err != nil {
		return err
	}
	check(t, "dual-stack", []string{"100.96.0.9/32", "fd7a:115c:a1e0::9/128"}, []string{"100.96.0.0/12 src 100.96.0.9", "192.168.20.0/24 src 100.96.0.9",
		"fd00:20::/64 src fd7a:115c:a1e0::9", "fd7a:115c:a1e0::/48 src fd7a:115c:a1e0::9"}, false, true)
	checkSysctl(t, "dual-stack", ip6Forward, "1")
	dual.Routes, dual.Forward6 = pfxs("100.96.0.0/12", "192.168.20.0/24", "fd7a:115c:a1e0::/48"), false
	if err := r.Set(dual); err != nil {
		return err
	}
	check(t, "IPv6 site gone", []string{"100.96.0.9/32", "fd7a:115c:a1e0::9/128"}, []string{"100.96.0.0/12 src 100.96.0.9", "192.168.20.0/24 src 100.96.0.9",
		"fd7a:115c:a1e0::/48 src fd7a:115c:a1e0::9"}, false, true)
	checkSysctl(t, "IPv6 site gone", ip6Forward, "0")
	checkForward(t, "IPv6 site gone", "1")

	if err := r.Close(); err != nil {
		return err
	}
	check(t, "Close", nil, nil, false, false)
	checkForward(t, "Close", "0")
	// The kernel drops every IPv4 route through an interface with its last
	// IPv4 address, so only the LAN's route is sure to be left.
	if !hasRoute("10.9.0.0/24", lanDev) {
		t.Errorf("Close removed the LAN route")
	}

	// Forwarding that was on before meshd stays on.
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return err
	}
	if err := r.Set(&Config{Forward: true}); err != nil {
		return err
	}
	if err := r.Close(); err != nil {
		return err
	}
	checkForward(t, "Close after forwarding was on already", "1")

	// Close after the interface is gone still removes the table.
	if err := r.Set(&Config{SNAT: true}); err != nil {
		return err
	}
	check(t, "SNAT only", nil, nil, true, false)
	if err := netlink.LinkDel(mesh); err != nil {
		return err
	}
	if err := r.Close(); err != nil {
		return fmt.Errorf("close without the interface: %w", err)
	}
	if snat, clamp := lr.readFirewall(); snat || clamp {
		t.Errorf("close without the interface left the nftables table")
	}
	if tables, _ := c.ListTablesOfFamily(nftables.TableFamilyINet); slices.ContainsFunc(tables, func(tb *nftables.Table) bool {
		return tb.Name == TableName(meshDev)
	}) {
		t.Errorf("table inet %s still there", TableName(meshDev))
	}
	return nil
}

// addTestLink adds a dummy interface, or, on kernels built without dummy
// support, one end of a veth pair (the other end, name+"p", is brought up so
// that the link has a carrier).
func addTestLink(name string) error {
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
	if !errors.Is(err, unix.EOPNOTSUPP) {
		if err != nil {
			return fmt.Errorf("add dummy %s: %w", name, err)
		}
		return nil
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		return fmt.Errorf("add veth %s: %w", name, err)
	}
	peer, err := netlink.LinkByName(name + "p")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(peer)
}

// check compares what the kernel has on the mesh interface with the wanted
// addresses, meshd routes and nftables rules.
func check(t *testing.T, step string, wantAddrs, wantRoutes []string, wantSNAT, wantClamp bool) {
	t.Helper()
	if err := checkErr(wantAddrs, wantRoutes, wantSNAT, wantClamp); err != nil {
		t.Errorf("%s: %v", step, err)
	}
}

func checkErr(wantAddrs, wantRoutes []string, wantSNAT, wantClamp bool) error {
	l, err := netlink.LinkByName(meshDev)
	if err != nil {
		return err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	var gotAddrs []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			gotAddrs = append(gotAddrs, a.IPNet.String())
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Protocol: RouteProtocol},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return err
	}
	var gotRoutes []string
	for _, r := range routes {
		gotRoutes = append(gotRoutes, fmt.Sprintf("%s src %s", r.Dst, r.Src))
	}
	slices.Sort(gotAddrs)
	slices.Sort(gotRoutes)
	var errs []error
	if !slices.Equal(gotAddrs, wantAddrs) {
		errs = append(errs, fmt.Errorf("addresses: got %v; want %v", gotAddrs, wantAddrs))
	}
	if !slices.Equal(gotRoutes, wantRoutes) {
		errs = append(errs, fmt.Errorf("routes with proto %d: got %v; want %v", RouteProtocol, gotRoutes, wantRoutes))
	}
	if err := checkRules(wantSNAT, wantClamp); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkRules compares the rules in meshd's nftables table with the wanted
// ones: one masquerade rule for SNAT, two MSS clamps (in, out); no table
// when neither is wanted.
func checkRules(wantSNAT, wantClamp bool) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == TableName(meshDev) })
	if i < 0 {
		if wantSNAT || wantClamp {
			return fmt.Errorf("no table inet %s; want SNAT %v, MSS clamp %v", TableName(meshDev), wantSNAT, wantClamp)
		}
		return nil
	}
	if !wantSNAT && !wantClamp {
		return fmt.Errorf("table inet %s is there; want none", TableName(meshDev))
	}
	want := map[string]int{}
	if wantSNAT {
		want[snatChain] = 1
	}
	if wantClamp {
		want[clampChain] = 2
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	got := map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != TableName(meshDev) {
			continue
		}
		rules, err := c.GetRules(tables[i], ch)
		if err != nil {
			return err
		}
		got[ch.Name] = len(rules)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("rules per chain: got %v; want %v", got, want)
	}
	return nil
}

func checkForward(t *testing.T, step, want string) {
	t.Helper()
	b, err := os.ReadFile(ipForward)
	if err != nil {
		t.Errorf("%s: %v", step, err)
	} else if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s: ip_forward got %s; want %s", step, got, want)
	}
}

// hasRoute reports whether the main table routes dst through dev.
func hasRoute(dst, dev string) bool {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return false
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && r.Dst.String() == dst })
}

func checkSysctl(t *testing.T, step, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%s: %v", step, err)
		return
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s: %s is %s; want %s", step, path, got, want)
	}
}

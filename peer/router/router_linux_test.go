package router

import (
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/peer/internal/netnstest"
)

func TestLinuxRouter(t *testing.T) {
	netnstest.Run(t, false, func() {
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "meshdtest0"}, PeerName: "meshdtest1"}
		if err := netlink.LinkAdd(link); err != nil {
			t.Error(err)
			return
		}
		// A route someone else installed on the same interface.
		r, err := New("meshdtest0", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Error(err)
			return
		}
		if err := r.Up(); err != nil {
			t.Error(err)
			return
		}
		l, _ := netlink.LinkByName("meshdtest0")
		_, foreign, _ := net.ParseCIDR("172.16.0.0/16")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: foreign}); err != nil {
			t.Error(err)
			return
		}
		cfg := &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.10.0/24"), Forward: true, ClampMSS: true, SNAT: true}
		for i := 0; i < 2; i++ { // the second Set changes nothing
			if err := r.Set(cfg); err != nil {
				t.Error(err)
				return
			}
		}
		check := func(wantAddrs, wantRoutes []string, wantTable bool) {
			t.Helper()
			lr := r.(*linuxRouter)
			st, err := lr.installed(l)
			if err != nil {
				t.Error(err)
				return
			}
			var addrs, routes []string
			for _, a := range st.Addrs {
				addrs = append(addrs, a.String())
			}
			for _, p := range st.Routes {
				routes = append(routes, p.String())
			}
			slices.Sort(routes)
			if !slices.Equal(addrs, wantAddrs) || !slices.Equal(routes, wantRoutes) {
				t.Errorf("got addrs %v routes %v; want %v %v", addrs, routes, wantAddrs, wantRoutes)
			}
			all, _ := netlink.RouteList(l, unix.AF_INET)
			found := false
			for _, rt := range all {
				if rt.Dst != nil && rt.Dst.String() == "172.16.0.0/16" {
					found = true
				}
			}
			if !found && len(wantAddrs) > 0 { // the kernel flushes a device's routes with its last address

				t.Error("a route meshd did not install was removed")
			}
			c, err := nftables.New()
			if err != nil {
				t.Error(err)
				return
			}
			tables, _ := c.ListTables()
			has := slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == lr.tableName() })
			if has != wantTable {
				t.Errorf("nftables table present %v; want %v", has, wantTable)
			}
			if wantTable {
				chains, _ := c.ListChains()
				var names []string
				for _, ch := range chains {
					if ch.Table.Name == lr.tableName() {
						names = append(names, ch.Name)
					}
				}
				slices.Sort(names)
				if !slices.Equal(names, []string{"forward", "postrouting"}) {
					t.Errorf("chains %v; want forward (MSS clamp) and postrouting (SNAT)", names)
				}
			}
		}
		check([]string{"100.96.0.5/32"}, []string{"100.96.0.0/12", "192.168.10.0/24"}, true)
		if b, _ := os.ReadFile(ipForward); string(b) != "1\n" {
			t.Errorf("ip_forward %q; want 1", b)
		}
		// Fewer routes: the stale one goes, nothing else changes.
		cfg.Routes = pfxs("100.96.0.0/12")
		if err := r.Set(cfg); err != nil {
			t.Error(err)
		}
		check([]string{"100.96.0.5/32"}, []string{"100.96.0.0/12"}, true)
		if err := r.Close(); err != nil {
			t.Error(err)
		}
		check(nil, nil, false)
		if b, _ := os.ReadFile(ipForward); string(b) != "0\n" {
			t.Errorf("ip_forward %q after close; want it restored to 0", b)
		}
	})
}

package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDirectPathPossible(t *testing.T) {
	kinds := []Kind{Public, PortPreserving, FullCone, Symmetric, UDPBlocked, Shared, CGNAT}
	// want[a][b] for hosts behind different routers; the rule must be
	// symmetric, so only the upper triangle is written.
	const (
		y = true
		n = false
	)
	want := map[Kind]map[Kind]bool{
		Public:         {Public: y, PortPreserving: y, FullCone: y, Symmetric: y, UDPBlocked: n, Shared: y, CGNAT: y},
		PortPreserving: {PortPreserving: y, FullCone: y, Symmetric: n, UDPBlocked: n, Shared: y, CGNAT: y},
		FullCone:       {FullCone: y, Symmetric: y, UDPBlocked: n, Shared: y, CGNAT: y},
		Symmetric:      {Symmetric: n, UDPBlocked: n, Shared: n, CGNAT: n},
		UDPBlocked:     {UDPBlocked: n, Shared: n, CGNAT: n},
		Shared:         {Shared: y, CGNAT: y},
		CGNAT:          {CGNAT: y},
	}
	for i, a := range kinds {
		for _, b := range kinds[i:] {
			w, ok := want[a][b]
			if !ok {
				t.Fatalf("table misses %s/%s", a, b)
			}
			t.Run(a.String()+"/"+b.String(), func(t *testing.T) {
				if got := DirectPathPossible(a, b, false); got != w {
					t.Errorf("DirectPathPossible(%s, %s) got %v; want %v", a, b, got, w)
				}
				if got := DirectPathPossible(b, a, false); got != w {
					t.Errorf("DirectPathPossible(%s, %s) got %v; want %v", b, a, got, w)
				}
				if !DirectPathPossible(a, b, true) {
					t.Errorf("DirectPathPossible(%s, %s) behind one router got false; want true", a, b)
				}
			})
		}
	}
}

func TestNATTopologyDirectPath(t *testing.T) {
	topo := &NATTopology{Hosts: []NATHost{
		{Name: "sh1", Kind: Shared, Router: "sh-nat"},
		{Name: "sh2", Kind: Shared, Router: "sh-nat"},
		{Name: "sym1", Kind: Symmetric, Router: "sym1-nat"},
		{Name: "sym2", Kind: Symmetric, Router: "sym2-nat"},
		{Name: "pub1", Kind: Public},
	}}
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"sh1", "sh2", true},
		{"sym1", "sym2", false},
		{"sym1", "sh1", false},
		{"sym1", "pub1", true},
	} {
		if got := topo.DirectPath(tt.a, tt.b); got != tt.want {
			t.Errorf("DirectPath(%s, %s) got %v; want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestBuildNATRejectsSpecs(t *testing.T) {
	l := &Lab{Prefix: "never-built-"} // every spec here fails before a namespace is made
	for _, tt := range []struct {
		name  string
		specs []NATHostSpec
	}{
		{"duplicate host", []NATHostSpec{{Name: "a", Kind: Public}, {Name: "a", Kind: PortPreserving}}},
		{"coordinator name", []NATHostSpec{{Name: "c2", Kind: Public}}},
		{"bad name", []NATHostSpec{{Name: "A b", Kind: Public}}},
		{"unknown kind", []NATHostSpec{{Name: "a", Kind: CGNAT + 1}}},
		{"two hosts on a non-shared router", []NATHostSpec{{Name: "a", Kind: PortPreserving, Router: "r"}, {Name: "b", Kind: PortPreserving, Router: "r"}}},
		{"shared router of another kind", []NATHostSpec{{Name: "a", Kind: FullCone, Router: "r"}, {Name: "b", Kind: Shared, Router: "r"}}},
		{"router named like a host", []NATHostSpec{{Name: "a", Kind: Public}, {Name: "b", Kind: Symmetric, Router: "a"}}},
		{"carrier named like a host", []NATHostSpec{{Name: "b-nat-cgn", Kind: Public}, {Name: "b", Kind: CGNAT}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := BuildNAT(l, tt.specs); err == nil {
				t.Errorf("BuildNAT(%v) got no error; want one", tt.specs)
			}
		})
	}
}

func TestNATRuleset(t *testing.T) {
	for k := Public; k <= CGNAT; k++ {
		rs := natRuleset(k, "198.18.0.101", "198.19.1.10")
		for _, must := range []string{
			`iifname "wan0" ct state established,related accept`,
			`iifname "wan0" counter drop`,
			`policy drop;`,
		} {
			if !strings.Contains(rs, must) {
				t.Errorf("%s ruleset lacks %q:\n%s", k, must, rs)
			}
		}
		if got, want := strings.Contains(rs, "dnat"), k == FullCone; got != want {
			t.Errorf("%s ruleset has dnat: got %v; want %v", k, got, want)
		}
		if got, want := strings.Contains(rs, "fully-random"), k == Symmetric; got != want {
			t.Errorf("%s ruleset has fully-random: got %v; want %v", k, got, want)
		}
		if got, want := strings.Contains(rs, "l4proto udp counter drop"), k == UDPBlocked; got != want {
			t.Errorf("%s ruleset drops UDP: got %v; want %v", k, got, want)
		}
	}
}

// The rest needs root: the NAT matrix itself, checked with UDP reflectors
// on the coordinators' hosts.

const (
	reflectorPort = 7001
	quiet         = 500 * time.Millisecond // how long a packet that must not arrive is waited for
)

// natLab builds the default NAT matrix under a fresh prefix; its cleanup
// closes the lab and checks nothing is left.
func natLab(t *testing.T) (*Lab, *NATTopology) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, c := range []string{"ip", "nft", "sysctl"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", c)
		}
	}
	prefix := fmt.Sprintf("nt%d-", os.Getpid())
	l, err := New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if left, _ := Namespaces(prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
		// The routers' rules lived in their namespaces only.
		if out, err := run("nft", "list", "tables"); err == nil && strings.Contains(string(out), "netlab") {
			t.Errorf("nftables tables in the host's namespace after Close:\n%s", out)
		}
	})
	start := time.Now()
	topo, err := BuildNAT(l, DefaultNATMatrix())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %d hosts and %d routers in %s", len(topo.Hosts), len(topo.Routers), time.Since(start).Round(time.Millisecond))
	return l, topo
}

// listenUDP opens a UDP socket on port in namespace name, closed at the
// end of the test.
func listenUDP(t *testing.T, l *Lab, name string, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := l.InNS(name, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// reflector answers every UDP datagram with its payload, a space and the
// address it came from, and every TCP connection with the address it came
// from.
type reflector struct {
	addr netip.AddrPort
	udp  *net.UDPConn
}

func startReflector(t *testing.T, l *Lab, h NATHost) *reflector {
	t.Helper()
	return startReflectorAt(t, l, h.Name, netip.AddrPortFrom(netip.MustParseAddr(h.Addr), reflectorPort))
}

// startReflectorAt starts a reflector on addr (either family) in
// namespace name.
func startReflectorAt(t *testing.T, l *Lab, name string, addr netip.AddrPort) *reflector {
	t.Helper()
	r := &reflector{addr: addr}
	udp, tcp := "udp4", "tcp4"
	if addr.Addr().Is6() {
		udp, tcp = "udp6", "tcp6"
	}
	var tl net.Listener
	err := l.InNS(name, func() error {
		var err error
		if r.udp, err = net.ListenUDP(udp, net.UDPAddrFromAddrPort(r.addr)); err != nil {
			return err
		}
		tl, err = net.Listen(tcp, r.addr.String())
		return err
	})
	if err != nil {
		if r.udp != nil {
			r.udp.Close()
		}
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	t.Cleanup(func() {
		r.udp.Close()
		tl.Close()
		<-done
		<-done
	})
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 1500)
		for {
			n, from, err := r.udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.udp.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s", buf[:n], from), from)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	return r
}

// query sends a fresh token to r from c, again every 100 ms, until r's
// answer comes back or d passes, and returns the address r saw.
func query(c *net.UDPConn, r *reflector, d time.Duration) (netip.AddrPort, error) {
	token := fmt.Sprintf("q%d", rand.Uint64())
	deadline := time.Now().Add(d)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := c.WriteToUDPAddrPort([]byte(token), r.addr); err != nil {
			return netip.AddrPort{}, err
		}
		rd := time.Now().Add(100 * time.Millisecond)
		if rd.After(deadline) {
			rd = deadline
		}
		c.SetReadDeadline(rd)
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return netip.AddrPort{}, err
			}
			if f := strings.Fields(string(buf[:n])); len(f) == 2 && f[0] == token {
				return netip.ParseAddrPort(f[1])
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %s within %s", r.addr, d)
}

// receive reads from c for d and returns the payloads among want that
// arrived.
func receive(c *net.UDPConn, d time.Duration, want ...string) map[string]bool {
	got := map[string]bool{}
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1500)
	for len(got) < len(want) {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		for _, w := range want {
			if string(buf[:n]) == w {
				got[w] = true
			}
		}
	}
	return got
}

// tcpSource connects from namespace name to r over TCP and returns the
// address r saw.
func tcpSource(l *Lab, name string, r *reflector) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.DialContext(name)(ctx, "tcp", r.addr.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(strings.TrimSpace(line))
}

var dropCounter = regexp.MustCompile(`iifname "wan0" counter packets (\d+)`)

// inputDrops is how many packets router has dropped from its WAN in the
// input chain of its nftables table (family inet, table netlab for the NAT
// routers; ip6, netlab6 for the IPv6 firewalls).
func inputDrops(l *Lab, router, family, table string) (int, error) {
	out, err := l.Exec(router, "nft", "list", "chain", family, table, "input")
	if err != nil {
		return 0, err
	}
	m := dropCounter.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no drop counter in %s's input chain:\n%s", router, out)
	}
	return strconv.Atoi(string(m[1]))
}

// TestNAT checks that every router kind behaves as its Kind says: the
// mapped address and port two reflectors see, whether unsolicited packets
// from a third WAN host get in, that the WAN cannot route into a LAN, and
// that UDP but not TCP is blocked where it should be.
func TestNAT(t *testing.T) {
	start := time.Now()
	l, topo := natLab(t)
	t.Cleanup(func() { t.Logf("TestNAT took %s", time.Since(start).Round(time.Millisecond)) })
	var refl [3]*reflector
	for i, c := range topo.Coordinators {
		refl[i] = startReflector(t, l, c)
	}
	prober := refl[2] // c3 sends the unsolicited packets

	// These run before the parallel subtests, while nothing else talks
	// through the routers.
	t.Run("probe-first", func(t *testing.T) {
		// A peer's probe that reaches a port-preserving router before the
		// host's own first packet to that peer must not move the host's
		// mapping for it.
		h := topo.Host("pp1")
		const port = 43000
		before, err := inputDrops(l, h.Router, "inet", "netlab")
		if err != nil {
			t.Fatal(err)
		}
		target := netip.AddrPortFrom(netip.MustParseAddr(h.WAN), port)
		if _, err := prober.udp.WriteToUDPAddrPort([]byte("early"), target); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			n, err := inputDrops(l, h.Router, "inet", "netlab")
			if err != nil {
				t.Fatal(err)
			}
			if n > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never dropped the early probe", h.Router)
			}
			time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
		}
		c := listenUDP(t, l, h.Name, port)
		m, err := query(c, prober, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if want := target; m != want {
			t.Errorf("after an early probe the prober sees %s; want %s", m, want)
		}
	})
	t.Run("shared-same-port", func(t *testing.T) {
		// Two hosts behind one router sending from the same port.
		var sh []NATHost
		for _, h := range topo.Hosts {
			if h.Kind == Shared {
				sh = append(sh, h)
			}
		}
		if len(sh) < 2 || sh[0].Router != sh[1].Router {
			t.Fatalf("the matrix has no two hosts behind one shared router: %v", sh)
		}
		c := [2]*net.UDPConn{}
		seen := func(i int, r *reflector) netip.AddrPort {
			t.Helper()
			m, err := query(c[i], r, 3*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", sh[i].Name, err)
			}
			t.Logf("%s:%d seen by %s as %s", sh[i].Name, c[i].LocalAddr().(*net.UDPAddr).Port, r.addr, m)
			return m
		}

		// The first host talks to two reflectors, then the second to the
		// same two: the first keeps the port; the second gets another one
		// for the first reflector and reuses it for the second.
		const port = 42000
		c[0], c[1] = listenUDP(t, l, sh[0].Name, port), listenUDP(t, l, sh[1].Name, port)
		for _, r := range refl[:2] {
			if m := seen(0, r); m.Port() != port {
				t.Errorf("%s seen as %s; want port %d", sh[0].Name, m, port)
			}
		}
		m1, m2 := seen(1, refl[0]), seen(1, refl[1])
		if m1.Port() == port || m1 != m2 {
			t.Errorf("%s seen as %s and %s; want one port other than %d", sh[1].Name, m1, m2, port)
		}

		// The second host talks first to a reflector the first host has
		// not: it gets the port there, but not at the reflector the first
		// host already holds it for. Its mapping now depends on the
		// destination.
		const port2 = 42001
		c[0], c[1] = listenUDP(t, l, sh[0].Name, port2), listenUDP(t, l, sh[1].Name, port2)
		if m := seen(0, refl[0]); m.Port() != port2 {
			t.Errorf("%s seen as %s; want port %d", sh[0].Name, m, port2)
		}
		if m := seen(1, refl[2]); m.Port() != port2 {
			t.Errorf("%s seen as %s; want port %d", sh[1].Name, m, port2)
		}
		if m := seen(1, refl[0]); m.Port() == port2 {
			t.Errorf("%s seen as %s: both hosts on one mapping", sh[1].Name, m)
		}
	})

	for i, h := range topo.Hosts {
		t.Run(h.Name, func(t *testing.T) {
			t.Parallel()
			port := 41000 + i
			c := listenUDP(t, l, h.Name, port)

			src, err := tcpSource(l, h.Name, refl[0])
			if err != nil {
				t.Fatalf("TCP to %s: %v", refl[0].addr, err)
			}
			if src.Addr().String() != h.WAN {
				t.Errorf("TCP seen from %s; want address %s", src, h.WAN)
			}

			if h.Kind == UDPBlocked {
				if m, err := query(c, refl[0], quiet); err == nil {
					t.Errorf("UDP got out of %s: seen as %s", h.Router, m)
				}
				return
			}
			var seen [2]netip.AddrPort
			for j, r := range refl[:2] {
				m, err := query(c, r, 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if m.Addr().String() != h.WAN {
					t.Errorf("%s sees %s; want address %s", r.addr, m, h.WAN)
				}
				seen[j] = m
			}
			t.Logf("%s (%s) port %d seen as %s and %s", h.Name, h.Kind, port, seen[0], seen[1])
			if h.Kind == Symmetric {
				if seen[0].Port() == seen[1].Port() {
					t.Errorf("symmetric NAT kept one port for two destinations: %s, %s", seen[0], seen[1])
				}
			} else if seen[0].Port() != uint16(port) || seen[1].Port() != uint16(port) {
				t.Errorf("%s did not keep port %d: seen as %s and %s", h.Kind, port, seen[0], seen[1])
			}

			// A third WAN host sends to the mapping it did not open, and,
			// with a route of its own through the router, straight to the
			// host's LAN address.
			unsolicited, direct := "unsolicited-"+h.Name, "direct-"+h.Name
			if _, err := prober.udp.WriteToUDPAddrPort([]byte(unsolicited), seen[0]); err != nil {
				t.Fatal(err)
			}
			if h.Kind != Public {
				if _, err := l.Exec("c3", "ip", "route", "add", h.Addr+"/32", "via", h.WAN); err != nil {
					t.Fatal(err)
				}
				to := netip.AddrPortFrom(netip.MustParseAddr(h.Addr), uint16(port))
				if _, err := prober.udp.WriteToUDPAddrPort([]byte(direct), to); err != nil {
					t.Fatal(err)
				}
			}
			got := receive(c, quiet, unsolicited, direct)
			if want := h.Kind == Public || h.Kind == FullCone; got[unsolicited] != want {
				t.Errorf("unsolicited packet to %s arrived: got %v; want %v", seen[0], got[unsolicited], want)
			}
			if h.Kind != Public && got[direct] {
				t.Errorf("a WAN host routed a packet through %s to %s", h.Router, h.Addr)
			}
		})
	}
}

func TestAddNATHostsRejectsSpecs(t *testing.T) {
	l := &Lab{Prefix: "never-built-", nss: []string{"never-built-wan", "never-built-cl1"}}
	wan := func(n int) string { return fmt.Sprintf("198.18.99.%d", 100+n) }
	for _, tt := range []struct {
		name  string
		specs []NATHostSpec
	}{
		{"public host", []NATHostSpec{{Name: "a", Kind: Public}}},
		{"name of a lab namespace", []NATHostSpec{{Name: "cl1", Kind: Symmetric}}},
		{"router named like a lab namespace", []NATHostSpec{{Name: "a", Kind: Symmetric, Router: "wan"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := AddNATHosts(l, "wan", "br0", wan, tt.specs); err == nil {
				t.Errorf("AddNATHosts(%v) got no error; want one", tt.specs)
			}
		})
	}
}

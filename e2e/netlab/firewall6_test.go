package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestDirectPathPossible6(t *testing.T) {
	filters := []Filter{Open, EndpointIndependent, AddressPortDependent, BlocksUDP}
	// want[a][b]; the rule must be symmetric, so only the upper triangle
	// is written.
	const (
		y = true
		n = false
	)
	want := map[Filter]map[Filter]bool{
		Open:                 {Open: y, EndpointIndependent: y, AddressPortDependent: y, BlocksUDP: n},
		EndpointIndependent:  {EndpointIndependent: y, AddressPortDependent: y, BlocksUDP: n},
		AddressPortDependent: {AddressPortDependent: y, BlocksUDP: n},
		BlocksUDP:            {BlocksUDP: n},
	}
	for i, a := range filters {
		for _, b := range filters[i:] {
			w, ok := want[a][b]
			if !ok {
				t.Fatalf("table misses %s/%s", a, b)
			}
			t.Run(a.String()+"/"+b.String(), func(t *testing.T) {
				if got := DirectPathPossible6(a, b); got != w {
					t.Errorf("DirectPathPossible6(%s, %s) got %v; want %v", a, b, got, w)
				}
				if got := DirectPathPossible6(b, a); got != w {
					t.Errorf("DirectPathPossible6(%s, %s) got %v; want %v", b, a, got, w)
				}
			})
		}
	}
}

func TestFirewall6TopologyDirectPath(t *testing.T) {
	topo := &Firewall6Topology{Hosts: []Firewall6Host{
		{Name: "a", Filter: AddressPortDependent}, {Name: "b", Filter: AddressPortDependent},
		{Name: "u", Filter: BlocksUDP}, {Name: "o", Filter: Open},
	}}
	for _, tt := range []struct {
		a, b string
		want bool
	}{{"a", "b", true}, {"a", "u", false}, {"u", "o", false}, {"o", "b", true}} {
		if got := topo.DirectPath(tt.a, tt.b); got != tt.want {
			t.Errorf("DirectPath(%s, %s) got %v; want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestBuildFirewall6RejectsSpecs(t *testing.T) {
	l := &Lab{Prefix: "never-built-"} // every spec here fails before a namespace is made
	for _, tt := range []struct {
		name  string
		specs []Firewall6HostSpec
	}{
		{"duplicate host", []Firewall6HostSpec{{Name: "a", Filter: Open}, {Name: "a", Filter: BlocksUDP}}},
		{"coordinator name", []Firewall6HostSpec{{Name: "c1", Filter: Open}}},
		{"bad name", []Firewall6HostSpec{{Name: "a-b", Filter: Open}}},
		{"name too long for a veth", []Firewall6HostSpec{{Name: "abcdefgh", Filter: BlocksUDP}}},
		{"unknown filter", []Firewall6HostSpec{{Name: "a", Filter: BlocksUDP + 1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := BuildFirewall6(l, tt.specs); err == nil {
				t.Errorf("BuildFirewall6(%v) got no error; want one", tt.specs)
			}
		})
	}
}

func TestFirewall6Ruleset(t *testing.T) {
	for f := EndpointIndependent; f <= BlocksUDP; f++ {
		rs := firewall6Ruleset(f)
		for _, must := range []string{
			`iifname "wan0" ct state established,related accept`,
			`iifname "wan0" counter drop`,
			`policy drop;`,
			`nd-neighbor-solicit`,
		} {
			if !strings.Contains(rs, must) {
				t.Errorf("%s ruleset lacks %q:\n%s", f, must, rs)
			}
		}
		if got, want := strings.Contains(rs, "@outbound"), f == EndpointIndependent; got != want {
			t.Errorf("%s ruleset lets in by the outbound set: got %v; want %v", f, got, want)
		}
		if got, want := strings.Contains(rs, "udp counter drop"), f == BlocksUDP; got != want {
			t.Errorf("%s ruleset drops UDP: got %v; want %v", f, got, want)
		}
		if strings.Contains(rs, "nat") {
			t.Errorf("%s ruleset translates addresses:\n%s", f, rs)
		}
	}
}

// TestFirewall6 checks that every IPv6 firewall behaves as its Filter
// says, with UDP reflectors on the coordinators' hosts: the address and
// port a reflector sees (the host's own: nothing is translated), whether
// packets from a third WAN host and from the reflector's address on
// another port get in, that TCP passes where UDP is blocked, that the WAN
// cannot open a connection into a LAN, and that a router drops what comes
// unsolicited for itself.
func TestFirewall6(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, c := range []string{"ip", "nft", "sysctl"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", c)
		}
	}
	start := time.Now()
	prefix := fmt.Sprintf("nf%d-", os.Getpid())
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
		t.Logf("TestFirewall6 took %s", time.Since(start).Round(time.Millisecond))
	})
	topo, err := BuildFirewall6(l, DefaultFirewall6Matrix())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %d hosts in %s", len(topo.Hosts), time.Since(start).Round(time.Millisecond))
	var refl [3]*reflector
	for i, c := range topo.Coordinators {
		refl[i] = startReflectorAt(t, l, c.Name, netip.AddrPortFrom(netip.MustParseAddr(c.Addr), reflectorPort))
	}
	// other sends from the first reflector's address on another port.
	other := startReflectorAt(t, l, topo.Coordinators[0].Name, netip.AddrPortFrom(netip.MustParseAddr(topo.Coordinators[0].Addr), reflectorPort+1))
	third := refl[2]

	for i, h := range topo.Hosts {
		t.Run(h.Name, func(t *testing.T) {
			t.Parallel()
			port := 44000 + i
			var c *net.UDPConn
			if err := l.InNS(h.Name, func() error {
				var err error
				c, err = net.ListenUDP("udp6", &net.UDPAddr{Port: port})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			self := netip.AddrPortFrom(netip.MustParseAddr(h.Addr), uint16(port))

			m, err := query(c, refl[0], 2*time.Second)
			if h.Filter == BlocksUDP {
				if err == nil {
					t.Errorf("UDP got out through a firewall that blocks it: seen as %s", m)
				}
			} else if err != nil || m != self {
				t.Errorf("reflector saw %v, %v; want %s (no translation)", m, err, self)
			}
			// Another address and another port of the same address send to
			// the host's port.
			tok3, tokP := "third-"+h.Name, "otherport-"+h.Name
			third.udp.WriteToUDPAddrPort([]byte(tok3), self)
			other.udp.WriteToUDPAddrPort([]byte(tokP), self)
			got := receive(c, quiet, tok3, tokP)
			wantIn := h.Filter == Open || h.Filter == EndpointIndependent
			if got[tok3] != wantIn || got[tokP] != wantIn {
				t.Errorf("from a third host: in %v, from the reflector's other port: in %v; want %v for both (%s)", got[tok3], got[tokP], wantIn, h.Filter)
			}
			// TCP goes out everywhere, untranslated.
			if src, err := tcpSource(l, h.Name, refl[1]); err != nil || src.Addr() != self.Addr() {
				t.Errorf("tcp out: seen as %v, %v; want %s", src, err, self.Addr())
			}
			if h.Filter == Open {
				return
			}
			// The WAN cannot open a connection into the LAN: the SYN is
			// dropped (a timeout), not answered with a reset.
			ctx, cancel := context.WithTimeout(context.Background(), quiet)
			defer cancel()
			conn, err := l.DialContext(topo.Coordinators[2].Name)(ctx, "tcp6", net.JoinHostPort(h.Addr, "22"))
			if err == nil {
				conn.Close()
			}
			if !errors.Is(err, context.DeadlineExceeded) && !os.IsTimeout(err) {
				t.Errorf("tcp from the WAN into the LAN: %v; want it dropped (a timeout)", err)
			}
			// Nor reach the router itself.
			before, err := inputDrops(l, h.Router, "ip6", "netlab6")
			if err != nil {
				t.Fatal(err)
			}
			third.udp.WriteToUDPAddrPort([]byte("unsolicited"), netip.AddrPortFrom(netip.MustParseAddr(h.RouterWAN), 9))
			deadline := time.Now().Add(3 * time.Second)
			for {
				n, err := inputDrops(l, h.Router, "ip6", "netlab6")
				if err != nil {
					t.Fatal(err)
				}
				if n > before {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s never dropped an unsolicited packet to itself", h.Router)
				}
				time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
			}
		})
	}
}

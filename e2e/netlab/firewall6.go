package netlab

import (
	"fmt"
	"regexp"
	"strings"
)

// Filter is how a host of an IPv6 firewall topology (BuildFirewall6)
// reaches the WAN. IPv6 needs no NAT: every host has its own global
// (here: unique local) address and is reached at it, and what stands
// between it and the WAN is a stateful firewall in a router namespace
// (wan0 on the WAN, lan0 on the host's LAN, IPv6 forwarding on, nftables).
// Every router drops what arrives unsolicited from the WAN for itself
// (neighbor discovery aside), and forwards from the WAN to its LAN only
// what its Filter lets in. Nothing is translated, so a host's address and
// port are the same on both sides of its router.
type Filter int

const (
	// Open is a host directly on the WAN: no firewall.
	Open Filter = iota
	// EndpointIndependent lets in, from anyone, UDP to a LAN address and
	// port that has sent UDP out within the last 120 s (RFC 4787's
	// endpoint-independent filtering; RFC 6092 allows it for UDP). The
	// router keeps a set of the inside addresses and ports it has seen
	// send out, refreshed by every outbound packet, beside conntrack's
	// replies.
	EndpointIndependent
	// AddressPortDependent lets in only replies: packets of a flow a LAN
	// host started, from the address and port it sent to (conntrack's
	// established state; RFC 6092's default for UDP).
	AddressPortDependent
	// BlocksUDP forwards no UDP at all, either way; TCP and ICMPv6 go out
	// and their replies come back.
	BlocksUDP
)

var filterNames = [...]string{
	Open:                 "open",
	EndpointIndependent:  "endpoint-independent",
	AddressPortDependent: "address-port-dependent",
	BlocksUDP:            "udp-blocked",
}

func (f Filter) String() string {
	if f >= 0 && int(f) < len(filterNames) {
		return filterNames[f]
	}
	return fmt.Sprintf("Filter(%d)", int(f))
}

// DirectPathPossible6 reports whether two IPv6 hosts behind firewalls a
// and b (each behind its own router) can get a direct UDP path to each
// other by probing both ways at once. It is the one place that rule
// lives:
//
//   - either side BlocksUDP: never (relay only, over TCP from that side);
//   - otherwise always: with no translation each side learns the other's
//     real address and port (its own address, or STUN's answer, which is
//     the same), and a firewall that lets in only replies lets in the
//     other side's probes once its own host has sent to that address and
//     port; probes both ways at once are a simultaneous open, so even two
//     address-and-port-dependent firewalls open for each other.
func DirectPathPossible6(a, b Filter) bool {
	return a != BlocksUDP && b != BlocksUDP
}

// Addresses of an IPv6 firewall topology: unique local sub-ranges of
// fd00:198:18::/48, never routed out (nothing has a default route but the
// hosts behind routers, through their router).
const (
	// Firewall6WAN is the WAN: coordinators c1..c3 at ::11-::13, open
	// hosts from ::21, routers from ::101. Addresses ::200-::2ff are never
	// given out, for a test's own WAN hosts.
	Firewall6WAN = "fd00:198:18::/64"
	// Firewall6LANs holds the LANs: router N has fd00:198:18:N::/64,
	// itself at ::1, its host at ::10.
	Firewall6LANs = "fd00:198:18::/48"
)

// Firewall6HostSpec is one host of an IPv6 firewall topology.
type Firewall6HostSpec struct {
	// Name is required: one to seven lower case letters and digits,
	// starting with a letter; Lab.NS(Name) is its namespace, and its
	// router (unless Open) is Name+"-fw".
	Name   string
	Filter Filter // required
}

// Firewall6Host is one host of a built IPv6 firewall topology.
type Firewall6Host struct {
	Name   string // short name, as in the spec
	NS     string // its namespace's full name (Lab.NS(Name))
	Filter Filter
	// Addr is its IPv6 address on eth0 (on the WAN when Open, on its LAN
	// otherwise); with no translation it is also how the WAN sees it.
	Addr string
	// Router is its router's name, RouterWAN the router's WAN address,
	// LANNet its LAN; all empty when Open.
	Router, RouterWAN, LANNet string
}

// Firewall6Topology is a built IPv6 firewall topology: the WAN bridge
// (namespace "wan"), the LAN bridges (namespace "lans"), coordinators,
// routers and hosts.
type Firewall6Topology struct {
	// Coordinators are c1..c3, Open, at fd00:198:18::11-13.
	Coordinators []Firewall6Host
	// Hosts are the spec's hosts, in its order.
	Hosts []Firewall6Host
}

// Host finds a host or coordinator by name; it panics when there is none.
func (t *Firewall6Topology) Host(name string) Firewall6Host {
	for _, h := range append(append([]Firewall6Host{}, t.Coordinators...), t.Hosts...) {
		if h.Name == name {
			return h
		}
	}
	panic(fmt.Sprintf("netlab: no firewall host %q", name))
}

// DirectPath reports whether hosts a and b must be able to get a direct
// path (DirectPathPossible6 for their filters).
func (t *Firewall6Topology) DirectPath(a, b string) bool {
	return DirectPathPossible6(t.Host(a).Filter, t.Host(b).Filter)
}

// DefaultFirewall6Matrix is the IPv6 firewall matrix: an open host, one
// behind an endpoint-independent firewall, two behind address-and-port
// dependent ones (which must open for each other) and one behind a
// firewall that blocks UDP.
func DefaultFirewall6Matrix() []Firewall6HostSpec {
	return []Firewall6HostSpec{
		{Name: "open6", Filter: Open},
		{Name: "eif6", Filter: EndpointIndependent},
		{Name: "apd6a", Filter: AddressPortDependent},
		{Name: "apd6b", Filter: AddressPortDependent},
		{Name: "udpb6", Filter: BlocksUDP},
	}
}

// A host name of at most seven characters keeps every veth name Connect
// derives ("v" + router name + interface) within the kernel's 15.
var fw6Name = regexp.MustCompile(`^[a-z][a-z0-9]{0,6}$`)

// checkFirewall6Specs checks names and filters; at most 79 open hosts and
// 99 routers fit the address plan.
func checkFirewall6Specs(specs []Firewall6HostSpec) error {
	taken := map[string]bool{"wan": true, "lans": true, "c1": true, "c2": true, "c3": true}
	open, routers := 0, 0
	for _, s := range specs {
		if !fw6Name.MatchString(s.Name) || taken[s.Name] {
			return fmt.Errorf("firewall host %q: name invalid or taken", s.Name)
		}
		taken[s.Name] = true
		switch {
		case s.Filter == Open:
			open++
		case s.Filter > Open && s.Filter <= BlocksUDP:
			routers++
		default:
			return fmt.Errorf("firewall host %s: unknown filter %d", s.Name, int(s.Filter))
		}
	}
	if open > 79 || routers > 99 {
		return fmt.Errorf("firewall topology: %d open hosts and %d routers; at most 79 and 99", open, routers)
	}
	return nil
}

// BuildFirewall6 creates an IPv6 firewall topology in l: the WAN bridge,
// coordinators c1..c3 on it, every Open host of specs on it and every
// other host behind a router of its own, with routes on every WAN-side
// namespace to every LAN through its router. Names must match
// Firewall6HostSpec's rule and not collide with c1..c3, "wan" or "lans".
//
// On error part of the topology may exist; l.Close removes it, as it
// removes all of it after use. Close every socket opened in its
// namespaces and stop every process started there first.
func BuildFirewall6(l *Lab, specs []Firewall6HostSpec) (*Firewall6Topology, error) {
	if err := checkFirewall6Specs(specs); err != nil {
		return nil, err
	}
	for _, ns := range []string{"wan", "lans"} {
		if err := addNS6(l, ns); err != nil {
			return nil, err
		}
	}
	if err := l.AddBridge("wan", "br0"); err != nil {
		return nil, err
	}
	t := &Firewall6Topology{Hosts: make([]Firewall6Host, len(specs))}
	// wanSide are the namespaces on the WAN, each of which needs a route
	// to every LAN.
	var wanSide []string
	open := func(name, addr string) (Firewall6Host, error) {
		if err := addNS6(l, name); err != nil {
			return Firewall6Host{}, err
		}
		if err := l.Connect(name, natHostIf, "", "wan", "br0"); err != nil {
			return Firewall6Host{}, err
		}
		if err := addAddr6(l, name, natHostIf, addr); err != nil {
			return Firewall6Host{}, err
		}
		wanSide = append(wanSide, name)
		return Firewall6Host{Name: name, NS: l.NS(name), Filter: Open, Addr: addr}, nil
	}
	for i := 1; i <= 3; i++ {
		h, err := open(fmt.Sprintf("c%d", i), fmt.Sprintf("fd00:198:18::%d", 10+i))
		if err != nil {
			return nil, err
		}
		t.Coordinators = append(t.Coordinators, h)
	}
	n, pub := 0, 0
	for i, s := range specs {
		if s.Filter == Open {
			pub++
			h, err := open(s.Name, fmt.Sprintf("fd00:198:18::%d", 20+pub))
			if err != nil {
				return nil, err
			}
			t.Hosts[i] = h
			continue
		}
		n++
		h, err := buildFirewall6Router(l, s, n)
		if err != nil {
			return nil, err
		}
		wanSide = append(wanSide, h.Router)
		t.Hosts[i] = h
	}
	for _, ns := range wanSide {
		for _, h := range t.Hosts {
			if h.Router == "" || h.Router == ns {
				continue
			}
			if _, err := l.Exec(ns, "ip", "-6", "route", "add", h.LANNet, "via", h.RouterWAN); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// addNS6 creates namespace name with duplicate address detection off for
// the interfaces it will get, so their link-local addresses too are
// usable at once (the lab assigns every address once) and neighbor
// discovery works from the first packet.
func addNS6(l *Lab, name string) error {
	if err := l.AddNS(name); err != nil {
		return err
	}
	_, err := l.Exec(name, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
	return err
}

// buildFirewall6Router creates router number n for the host of s: its
// namespace on the WAN and on a new LAN bridge, forwarding and the rules
// of s.Filter; then the host on that LAN with its default route through
// the router.
func buildFirewall6Router(l *Lab, s Firewall6HostSpec, n int) (Firewall6Host, error) {
	router := s.Name + "-fw"
	h := Firewall6Host{Name: s.Name, NS: l.NS(s.Name), Filter: s.Filter, Router: router,
		Addr: fmt.Sprintf("fd00:198:18:%d::10", n), RouterWAN: fmt.Sprintf("fd00:198:18::%d", 100+n),
		LANNet: fmt.Sprintf("fd00:198:18:%d::/64", n)}
	lanGW, lanBr := fmt.Sprintf("fd00:198:18:%d::1", n), fmt.Sprintf("lan%d", n)
	if err := l.AddBridge("lans", lanBr); err != nil {
		return h, err
	}
	for _, ns := range []string{router, s.Name} {
		if err := addNS6(l, ns); err != nil {
			return h, err
		}
	}
	for _, leg := range []struct{ ns, ifname, addr, brNS, br string }{
		{router, natWANIf, h.RouterWAN, "wan", "br0"},
		{router, natLANIf, lanGW, "lans", lanBr},
		{s.Name, natHostIf, h.Addr, "lans", lanBr},
	} {
		if err := l.Connect(leg.ns, leg.ifname, "", leg.brNS, leg.br); err != nil {
			return h, err
		}
		if err := addAddr6(l, leg.ns, leg.ifname, leg.addr); err != nil {
			return h, err
		}
	}
	if _, err := l.Exec(router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return h, err
	}
	if _, err := runStdin(firewall6Ruleset(s.Filter), append(l.Wrap(router), "nft", "-f", "-")...); err != nil {
		return h, fmt.Errorf("firewall router %s: %w", router, err)
	}
	if _, err := l.Exec(s.Name, "ip", "-6", "route", "add", "default", "via", lanGW); err != nil {
		return h, err
	}
	return h, nil
}

// firewall6Ruleset is the nftables ruleset of a router with filter f.
func firewall6Ruleset(f Filter) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("table ip6 netlab6 {")
	if f == EndpointIndependent {
		// The inside addresses and ports that sent UDP out lately.
		p("\tset outbound {")
		p("\t\ttype ipv6_addr . inet_service")
		p("\t\tflags dynamic,timeout")
		p("\t\ttimeout 120s")
		p("\t}")
	}
	// Nothing unsolicited from the WAN reaches the router itself
	// (ct state new and anything untracked), except neighbor discovery,
	// without which the WAN could not deliver it anything.
	p("\tchain input {")
	p("\t\ttype filter hook input priority filter; policy accept;")
	p("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept")
	p("\t\tiifname %q ct state established,related accept", natWANIf)
	p("\t\tiifname %q counter drop", natWANIf)
	p("\t}")
	p("\tchain forward {")
	p("\t\ttype filter hook forward priority filter; policy drop;")
	if f == BlocksUDP {
		p("\t\tmeta l4proto udp counter drop")
	}
	if f == EndpointIndependent {
		// Every outbound packet refreshes its address and port, as a
		// mapping's timer would be.
		p("\t\tiifname %q oifname %q update @outbound { ip6 saddr . udp sport }", natLANIf, natWANIf)
	}
	p("\t\tct state established,related accept")
	p("\t\tiifname %q oifname %q accept", natLANIf, natWANIf)
	if f == EndpointIndependent {
		p("\t\tiifname %q oifname %q ip6 daddr . udp dport @outbound accept", natWANIf, natLANIf)
	}
	p("\t}")
	p("}")
	return b.String()
}

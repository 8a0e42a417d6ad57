package netlab

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

// Kind is how a host of a NAT topology reaches the WAN: directly, or
// through a router of one of the NAT behaviours below. Every router is a
// namespace with a WAN leg (wan0) and a LAN leg (lan0), forwards with
// ip_forward on and is configured with nftables. Every router drops what
// arrives unsolicited from the WAN, both for itself and for its LAN, except
// what the FullCone router forwards on purpose.
//
// The routers do not hairpin: a LAN host that sends to its own router's WAN
// address reaches the router, not another host behind it. Mappings age out
// with the kernel's UDP conntrack timeouts: 30 s for a flow that has only
// seen one direction, 120 s once both directions have talked.
type Kind int

const (
	// Public is a host directly on the WAN: no NAT, no firewall.
	Public Kind = iota
	// PortPreserving masquerades. Linux keeps the source port when the
	// resulting tuple is free, and a new flow from an inside address and
	// port that already has a mapping reuses that mapping when it can, so
	// in practice the mapping is endpoint-independent. Filtering is
	// address-and-port dependent (only replies get in).
	PortPreserving
	// FullCone maps like PortPreserving and also forwards every UDP packet
	// that arrives on its WAN address to its one LAN host on the same port
	// (endpoint-independent filtering): anyone who learned the mapping can
	// send in.
	FullCone
	// Symmetric masquerades with fully-random ports: a new random port for
	// every destination, and only replies get in.
	Symmetric
	// UDPBlocked is a firewall that masquerades TCP and ICMP but drops all
	// UDP from its LAN.
	UDPBlocked
	// Shared is a PortPreserving router with two or more hosts on its LAN
	// (the hosts name it in NATHostSpec.Router). Its mappings are only
	// endpoint-independent while the hosts send from different ports.
	// When two of them use the same port, the first to reach a destination
	// keeps the port for it, the other gets a random port for that
	// destination, and each reuses its newest mapping for later
	// destinations where it can: depending on the order, one host may be
	// seen on the port by some destinations and on another port by the
	// rest, which defeats hole punching. Give each host behind one Shared
	// router its own source port.
	Shared
	// CGNAT is two PortPreserving NATs in a row: the host's home router
	// (LAN 198.19.N.0/24) sits inside a carrier NAT (inside network
	// 100.65.N.0/24), and only the carrier is on the WAN.
	CGNAT
)

var kindNames = [...]string{
	Public:         "public",
	PortPreserving: "port-preserving",
	FullCone:       "full-cone",
	Symmetric:      "symmetric",
	UDPBlocked:     "udp-blocked",
	Shared:         "shared",
	CGNAT:          "cgnat",
}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// portPreserving reports whether k keeps a host's source port for every
// destination (given distinct source ports behind a Shared router).
func (k Kind) portPreserving() bool {
	return k == PortPreserving || k == Shared || k == CGNAT
}

// DirectPathPossible reports whether two hosts of kinds a and b can get a
// direct UDP path to each other by probing both ways at once, with no port
// prediction; sameRouter says whether they sit behind the same router (so
// they share a LAN). It is the one place that rule lives:
//
//   - behind the same router: always, over the LAN;
//   - either side UDPBlocked: never;
//   - either side Public or FullCone: yes, the other side's packets get in
//     whatever port its NAT chose;
//   - both sides PortPreserving, Shared or CGNAT: yes, each learns the
//     other's mapping from STUN and the simultaneous probes open both NATs;
//   - otherwise (Symmetric against Symmetric, PortPreserving, Shared or
//     CGNAT): no, the symmetric side's port for the other peer is not the
//     one anyone could learn, and the other side filters. Relay only.
func DirectPathPossible(a, b Kind, sameRouter bool) bool {
	switch {
	case sameRouter:
		return true
	case a == UDPBlocked || b == UDPBlocked:
		return false
	case a == Public || b == Public || a == FullCone || b == FullCone:
		return true
	default:
		return a.portPreserving() && b.portPreserving()
	}
}

// Addresses of a NAT topology. The WAN is the whole world: routers have no
// default route, and nothing leaves the lab.
const (
	// NATWAN is the WAN every coordinator, public host and outermost
	// router is on: coordinators c1..c3 at .11-.13, public hosts from .21,
	// routers from .101. Addresses .200-.254 are never given out, for a
	// test's own WAN hosts.
	NATWAN = "198.18.0.0/24"
	// NATLANs holds the LANs: the Nth router (in the order of first
	// mention) has 198.19.N.0/24, itself at .1, its hosts from .10.
	NATLANs = "198.19.0.0/16"
	// NATCarrierInside holds the CGNAT carriers' inside networks: the
	// carrier of router N has 100.65.N.0/24, itself at .1, the home router
	// at .2.
	NATCarrierInside = "100.65.0.0/16"
)

// Interface names in a NAT topology.
const (
	natWANIf  = "wan0" // a router's outside leg
	natLANIf  = "lan0" // a router's LAN leg
	natHostIf = "eth0" // a host's only interface
)

// NATHostSpec is one host of a NAT topology.
type NATHostSpec struct {
	Name string // required: the host's name; Lab.NS(Name) is its namespace
	Kind Kind   // required
	// Router is optional: the name of the host's router (and its
	// namespace). Hosts of kind Shared that give the same name sit behind
	// one router; other kinds must have a router of their own. Default
	// Name+"-nat". Ignored for Public.
	Router string
}

// DefaultNATMatrix is the NAT matrix: a host of every kind, two of the
// kinds that must traverse each other (two PortPreserving, two Symmetric,
// each behind a router of its own) and two hosts behind one Shared router.
func DefaultNATMatrix() []NATHostSpec {
	return []NATHostSpec{
		{Name: "pub1", Kind: Public},
		{Name: "pp1", Kind: PortPreserving},
		{Name: "pp2", Kind: PortPreserving},
		{Name: "fc1", Kind: FullCone},
		{Name: "sym1", Kind: Symmetric},
		{Name: "sym2", Kind: Symmetric},
		{Name: "udpb1", Kind: UDPBlocked},
		{Name: "sh1", Kind: Shared, Router: "sh-nat"},
		{Name: "sh2", Kind: Shared, Router: "sh-nat"},
		{Name: "cg1", Kind: CGNAT},
	}
}

// NATHost is one host of a built NAT topology.
type NATHost struct {
	Name string // short name, as in the spec
	NS   string // its namespace's full name (Lab.NS(Name)), for ip netns exec
	Kind Kind
	// Addr is the host's own address on eth0: on the WAN for Public and
	// the coordinators, on its LAN otherwise.
	Addr string
	// WAN is the address its traffic has on the WAN: Addr for Public, its
	// router's WAN address behind a NAT (the carrier's for CGNAT).
	WAN string
	// LANNet is its LAN (CIDR), LANGateway its router's address there and
	// its default route; both empty for Public.
	LANNet, LANGateway string
	// Router is its router's name (the home router for CGNAT), Carrier the
	// carrier NAT's for CGNAT; empty when there is none.
	Router, Carrier string
}

// NATRouter is one router of a built NAT topology.
type NATRouter struct {
	Name string // short name; Lab.NS(Name) is its namespace
	NS   string // its namespace's full name
	Kind Kind   // the kind of the hosts behind it (CGNAT for home and carrier)
	// WAN is its address on wan0: on the WAN, or on the carrier's inside
	// network for a CGNAT home router.
	WAN string
	// LAN is its address on lan0, LANNet the network there.
	LAN, LANNet string
	// Hosts are the names on its LAN: hosts, or the home router for a
	// carrier NAT.
	Hosts []string
}

// NATTopology is a built NAT topology: the WAN bridge (namespace "wan"),
// the LAN bridges (namespace "lans"), coordinators, routers and hosts.
type NATTopology struct {
	// Coordinators are c1..c3, Public, at 198.18.0.11-.13.
	Coordinators []NATHost
	// Hosts are the spec's hosts, in its order.
	Hosts []NATHost
	// Routers are every NAT, carriers included, in the order built.
	Routers []NATRouter
}

// Host finds a host or coordinator by name; it panics when there is none.
func (t *NATTopology) Host(name string) NATHost {
	for _, h := range append(append([]NATHost{}, t.Coordinators...), t.Hosts...) {
		if h.Name == name {
			return h
		}
	}
	panic(fmt.Sprintf("netlab: no NAT host %q", name))
}

// Router finds a router by name; it panics when there is none.
func (t *NATTopology) Router(name string) NATRouter {
	for _, r := range t.Routers {
		if r.Name == name {
			return r
		}
	}
	panic(fmt.Sprintf("netlab: no NAT router %q", name))
}

// DirectPath reports whether hosts a and b must be able to get a direct
// path (DirectPathPossible for their kinds and routers).
func (t *NATTopology) DirectPath(a, b string) bool {
	ha, hb := t.Host(a), t.Host(b)
	return DirectPathPossible(ha.Kind, hb.Kind, ha.Router != "" && ha.Router == hb.Router)
}

var natName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}$`)

// natBuilder holds the state of one BuildNAT or AddNATHosts.
type natBuilder struct {
	l     *Lab
	ports int // bridge ports made so far: p1, p2, ... in the WAN namespace and "lans"
	// wanNS and wanBr are the WAN bridge the outermost routers join;
	// wanAddr(N) is router N's address on it (a /24).
	wanNS, wanBr string
	wanAddr      func(n int) string
}

// natGroup is one router of a spec and the hosts behind it.
type natGroup struct {
	name  string
	kind  Kind
	hosts []int // indexes into the specs
}

// natGroups checks specs against the names already taken (and marks
// theirs taken) and groups the hosts behind NATs by router, in the order
// of first mention. It returns how many hosts are Public.
func natGroups(specs []NATHostSpec, taken map[string]bool) ([]*natGroup, int, error) {
	var groups []*natGroup
	byRouter := map[string]*natGroup{}
	publics := 0
	for i, s := range specs {
		if !natName.MatchString(s.Name) || taken[s.Name] {
			return nil, 0, fmt.Errorf("nat host %q: name invalid or taken", s.Name)
		}
		taken[s.Name] = true
		if s.Kind < Public || s.Kind > CGNAT {
			return nil, 0, fmt.Errorf("nat host %s: unknown kind %d", s.Name, int(s.Kind))
		}
		if s.Kind == Public {
			publics++
			continue
		}
		r := s.Router
		if r == "" {
			r = s.Name + "-nat"
		}
		g := byRouter[r]
		switch {
		case g == nil:
			g = &natGroup{name: r, kind: s.Kind}
			byRouter[r] = g
			groups = append(groups, g)
		case g.kind != Shared || s.Kind != Shared:
			return nil, 0, fmt.Errorf("nat host %s: router %s is taken (only Shared routers serve several hosts)", s.Name, r)
		}
		g.hosts = append(g.hosts, i)
	}
	for _, g := range groups {
		names := []string{g.name}
		if g.kind == CGNAT {
			names = append(names, g.name+"-cgn")
		}
		for _, n := range names {
			if !natName.MatchString(n) || taken[n] {
				return nil, 0, fmt.Errorf("nat router %q: name invalid or taken", n)
			}
			taken[n] = true
		}
	}
	if publics > 79 || len(groups) > 99 {
		return nil, 0, fmt.Errorf("nat topology: %d public hosts and %d routers; at most 79 and 99", publics, len(groups))
	}
	return groups, publics, nil
}

// BuildNAT creates a NAT topology in l: the WAN bridge, coordinators c1..c3
// on it, and every host of specs directly on it (Public) or behind its
// router. Names must be lower case letters, digits and dashes, start with a
// letter, and not collide with each other, c1..c3, "wan" or "lans".
//
// On error part of the topology may exist; l.Close removes it, as it
// removes all of it after use (the nftables state dies with the router
// namespaces). Close every socket opened in the topology's namespaces and
// stop every process started in them first: a namespace lives on, out of
// sight, as long as anything still holds it.
func BuildNAT(l *Lab, specs []NATHostSpec) (*NATTopology, error) {
	taken := map[string]bool{"wan": true, "lans": true, "c1": true, "c2": true, "c3": true}
	groups, _, err := natGroups(specs, taken)
	if err != nil {
		return nil, err
	}
	b := &natBuilder{l: l, wanNS: "wan", wanBr: "br0",
		wanAddr: func(n int) string { return fmt.Sprintf("198.18.0.%d", 100+n) }}
	for _, ns := range []string{"wan", "lans"} {
		if err := l.AddNS(ns); err != nil {
			return nil, err
		}
	}
	if err := l.AddBridge("wan", "br0"); err != nil {
		return nil, err
	}
	t := &NATTopology{Hosts: make([]NATHost, len(specs))}
	for i := 1; i <= 3; i++ {
		h, err := b.public(fmt.Sprintf("c%d", i), fmt.Sprintf("198.18.0.%d", 10+i))
		if err != nil {
			return nil, err
		}
		t.Coordinators = append(t.Coordinators, h)
	}
	pub := 0
	for i, s := range specs {
		if s.Kind != Public {
			continue
		}
		pub++
		h, err := b.public(s.Name, fmt.Sprintf("198.18.0.%d", 20+pub))
		if err != nil {
			return nil, err
		}
		t.Hosts[i] = h
	}
	if err := b.routers(t, groups, specs); err != nil {
		return nil, err
	}
	return t, nil
}

// AddNATHosts puts the hosts of specs behind NAT routers in a lab that has
// a WAN of its own: the bridge wanBr in namespace wanNS, a /24 on which
// wanAddr(N) is free for router N (counted from one, in the order of first
// mention; a CGNAT carrier takes its home router's number). LANs, kinds and
// names are as in BuildNAT: the LANs are 198.19.N.0/24, bridged in a new
// namespace "lans"; no host may be Public, and no name may be taken by a
// namespace of the lab. It returns the hosts and routers (no
// coordinators). Call it once per lab.
func AddNATHosts(l *Lab, wanNS, wanBr string, wanAddr func(n int) string, specs []NATHostSpec) (*NATTopology, error) {
	taken := map[string]bool{"lans": true}
	l.mu.Lock()
	for _, ns := range l.nss {
		taken[strings.TrimPrefix(ns, l.Prefix)] = true
	}
	l.mu.Unlock()
	for _, s := range specs {
		if s.Kind == Public {
			return nil, fmt.Errorf("nat host %s: AddNATHosts puts hosts behind routers; a public host belongs on the WAN itself", s.Name)
		}
	}
	groups, _, err := natGroups(specs, taken)
	if err != nil {
		return nil, err
	}
	if err := l.AddNS("lans"); err != nil {
		return nil, err
	}
	b := &natBuilder{l: l, wanNS: wanNS, wanBr: wanBr, wanAddr: wanAddr}
	t := &NATTopology{Hosts: make([]NATHost, len(specs))}
	if err := b.routers(t, groups, specs); err != nil {
		return nil, err
	}
	return t, nil
}

// routers creates the routers of groups on the WAN, their LANs and the
// hosts behind them, and fills t.Routers and those hosts in t.Hosts.
func (b *natBuilder) routers(t *NATTopology, groups []*natGroup, specs []NATHostSpec) error {
	l := b.l
	for i, g := range groups {
		n := i + 1 // router N has 198.19.N.0/24 and wanAddr(N)
		wan := b.wanAddr(n)
		lanNet := fmt.Sprintf("198.19.%d.0/24", n)
		lanGW := fmt.Sprintf("198.19.%d.1", n)
		lanBr := fmt.Sprintf("lan%d", n)
		if err := l.AddBridge("lans", lanBr); err != nil {
			return err
		}
		var lanHost string // the one host behind a FullCone router
		if g.kind == FullCone {
			lanHost = fmt.Sprintf("198.19.%d.10", n)
		}
		routerWAN, carrier := wan, ""
		if g.kind == CGNAT {
			carrier = g.name + "-cgn"
			inBr := fmt.Sprintf("cgn%d", n)
			inNet := fmt.Sprintf("100.65.%d.0/24", n)
			carrierIn := fmt.Sprintf("100.65.%d.1", n)
			routerWAN = fmt.Sprintf("100.65.%d.2", n)
			if err := l.AddBridge("lans", inBr); err != nil {
				return err
			}
			if err := b.router(carrier, CGNAT, wan, b.wanNS, b.wanBr, carrierIn, inBr, ""); err != nil {
				return err
			}
			t.Routers = append(t.Routers, NATRouter{Name: carrier, NS: l.NS(carrier), Kind: CGNAT,
				WAN: wan, LAN: carrierIn, LANNet: inNet, Hosts: []string{g.name}})
			if err := b.router(g.name, CGNAT, routerWAN, "lans", inBr, lanGW, lanBr, ""); err != nil {
				return err
			}
			if _, err := run("ip", "-n", l.NS(g.name), "route", "add", "default", "via", carrierIn); err != nil {
				return err
			}
		} else if err := b.router(g.name, g.kind, wan, b.wanNS, b.wanBr, lanGW, lanBr, lanHost); err != nil {
			return err
		}
		r := NATRouter{Name: g.name, NS: l.NS(g.name), Kind: g.kind, WAN: routerWAN, LAN: lanGW, LANNet: lanNet}
		for j, i := range g.hosts {
			s := specs[i]
			addr := fmt.Sprintf("198.19.%d.%d", n, 10+j)
			if err := l.AddNS(s.Name); err != nil {
				return err
			}
			if err := b.attach(s.Name, natHostIf, addr+"/24", "lans", lanBr); err != nil {
				return err
			}
			if _, err := run("ip", "-n", l.NS(s.Name), "route", "add", "default", "via", lanGW); err != nil {
				return err
			}
			t.Hosts[i] = NATHost{Name: s.Name, NS: l.NS(s.Name), Kind: s.Kind, Addr: addr, WAN: wan,
				LANNet: lanNet, LANGateway: lanGW, Router: g.name, Carrier: carrier}
			r.Hosts = append(r.Hosts, s.Name)
		}
		t.Routers = append(t.Routers, r)
	}
	return nil
}

// public creates a host directly on the WAN.
func (b *natBuilder) public(name, addr string) (NATHost, error) {
	if err := b.l.AddNS(name); err != nil {
		return NATHost{}, err
	}
	if err := b.attach(name, natHostIf, addr+"/24", b.wanNS, b.wanBr); err != nil {
		return NATHost{}, err
	}
	return NATHost{Name: name, NS: b.l.NS(name), Kind: Public, Addr: addr, WAN: addr}, nil
}

// router creates a NAT router: wan0 with wanAddr on bridge wanBr (in
// namespace wanNS), lan0 with lanAddr on bridge lanBr in "lans", forwarding
// on and the rules of kind loaded. lanHost is the FullCone router's one
// LAN host.
func (b *natBuilder) router(name string, kind Kind, wanAddr, wanNS, wanBr, lanAddr, lanBr, lanHost string) error {
	if err := b.l.AddNS(name); err != nil {
		return err
	}
	if err := b.attach(name, natWANIf, wanAddr+"/24", wanNS, wanBr); err != nil {
		return err
	}
	if err := b.attach(name, natLANIf, lanAddr+"/24", "lans", lanBr); err != nil {
		return err
	}
	if _, err := b.l.Exec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if _, err := runStdin(natRuleset(kind, wanAddr, lanHost), append(b.l.Wrap(name), "nft", "-f", "-")...); err != nil {
		return fmt.Errorf("nat router %s: %w", name, err)
	}
	return nil
}

// attach adds a veth: ifname with addr (CIDR) in namespace name, its other
// end a port of bridge br in namespace brName. Port names are numbered per
// build, so they never collide however long the names are.
func (b *natBuilder) attach(name, ifname, addr, brName, br string) error {
	b.ports++
	port := fmt.Sprintf("p%d", b.ports)
	ns, brNS := b.l.NS(name), b.l.NS(brName)
	for _, s := range [][]string{
		{"ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", brNS},
		{"ip", "-n", brNS, "link", "set", port, "master", br},
		{"ip", "-n", brNS, "link", "set", port, "up"},
		{"ip", "-n", ns, "addr", "add", addr, "dev", ifname},
		{"ip", "-n", ns, "link", "set", ifname, "up"},
	} {
		if _, err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// natRuleset is the nftables ruleset of a router of kind k whose WAN
// address is wanAddr; lanHost is the FullCone router's one LAN host.
func natRuleset(k Kind, wanAddr, lanHost string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("table inet netlab {")
	// Unsolicited packets to the router itself are dropped, not merely
	// left to find no socket. A packet the input hook accepts leaves a
	// confirmed conntrack entry (remote:rport -> wan:port) even though the
	// router answers it with a port unreachable. When a peer's probe
	// arrives before this side's own first packet to that peer, that
	// entry already holds the tuple the masquerade wants for the outbound
	// flow, so the flow gets another port and the hole the peer is
	// punching leads nowhere. A drop in the input hook discards the
	// unconfirmed entry.
	p("\tchain input {")
	p("\t\ttype filter hook input priority filter; policy accept;")
	p("\t\tiifname %q ct state established,related accept", natWANIf)
	p("\t\tiifname %q counter drop", natWANIf)
	p("\t}")
	// From the WAN to the LAN only replies pass (and, on a FullCone
	// router, what its DNAT sent in): a WAN host that routes a LAN
	// address through the router gets nowhere.
	p("\tchain forward {")
	p("\t\ttype filter hook forward priority filter; policy drop;")
	if k == UDPBlocked {
		p("\t\tiifname %q meta l4proto udp counter drop", natLANIf)
	}
	p("\t\tct state established,related accept")
	p("\t\tiifname %q oifname %q accept", natLANIf, natWANIf)
	if k == FullCone {
		p("\t\tiifname %q oifname %q ct status dnat accept", natWANIf, natLANIf)
	}
	p("\t}")
	p("}")
	p("table ip netlab_nat {")
	if k == FullCone {
		p("\tchain prerouting {")
		p("\t\ttype nat hook prerouting priority dstnat; policy accept;")
		p("\t\tiifname %q ip daddr %s meta l4proto udp dnat to %s", natWANIf, wanAddr, lanHost)
		p("\t}")
	}
	p("\tchain postrouting {")
	p("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	if k == Symmetric {
		p("\t\toifname %q masquerade fully-random", natWANIf)
	} else {
		p("\t\toifname %q masquerade", natWANIf)
	}
	p("\t}")
	p("}")
	return b.String()
}

// runStdin runs a command with stdin as its input.
func runStdin(stdin string, args ...string) ([]byte, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

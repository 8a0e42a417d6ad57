package netlab

import (
	"fmt"
	"strings"
)

// Addresses of the meshd lab. The wan is the underlay "internet" every
// coordinator, gateway and client sits on; site A and site B each have a LAN
// behind their gateways.
const (
	WANNet   = "198.18.99.0/24"
	SiteA    = "198.19.10.0/24"
	SiteB    = "198.19.20.0/24"
	HostA    = "198.19.10.10"
	HostB    = "198.19.20.10"
	SiteAVIP = "198.19.10.1" // the HA pair's virtual IP, hosta's default gateway
	GWA1LAN  = "198.19.10.2"
	SiteBGW  = "198.19.20.1"
)

// IPv6 addresses of the dual-stack lab (MeshdLabDualStack): unique local
// prefixes beside the IPv4 ones, never global, never routed out.
const (
	WANNet6   = "fd00:198:18::/64"
	SiteA6    = "fd00:198:19:10::/64"
	SiteB6    = "fd00:198:19:20::/64"
	HostA6    = "fd00:198:19:10::10"
	HostB6    = "fd00:198:19:20::10"
	SiteAVIP6 = "fd00:198:19:10::1" // the HA pair's IPv6 virtual IP, hosta's IPv6 default gateway
	GWA1LAN6  = "fd00:198:19:10::2"
	SiteBGW6  = "fd00:198:19:20::1"
)

// Node is one host of the topology.
type Node struct {
	Name string // short name; the namespace is Lab.NS(Name)
	WAN  string // address on the wan, empty for LAN hosts
	LAN  string // address on its site LAN, empty for wan-only hosts
	// WAN6 and LAN6 are its IPv6 addresses there (a dual-stack lab);
	// empty in an IPv4 lab. A node with WAN6 and no WAN is on the wan
	// over IPv6 only.
	WAN6, LAN6 string
}

// Topology is the meshd lab: three coordinators; site A with an HA pair of
// gateways (gwa1, gwa2) and a LAN host (hosta); site B with one gateway
// (gwb1) and a LAN host (hostb); two roaming clients (cl1, cl2).
type Topology struct {
	Coordinators  []Node
	SiteAGateways []Node
	SiteBGateways []Node
	Clients       []Node
	HostA, HostB  Node
}

// Nodes returns every node.
func (t *Topology) Nodes() []Node {
	out := append([]Node{}, t.Coordinators...)
	out = append(out, t.SiteAGateways...)
	out = append(out, t.SiteBGateways...)
	out = append(out, t.Clients...)
	return append(out, t.HostA, t.HostB)
}

// Node finds a node by name.
func (t *Topology) Node(name string) Node {
	for _, n := range t.Nodes() {
		if n.Name == name {
			return n
		}
	}
	panic(fmt.Sprintf("netlab: no node %q", name))
}

// MeshdLab is the topology's layout.
func MeshdLab() *Topology {
	return &Topology{
		Coordinators: []Node{{Name: "c1", WAN: "198.18.99.11"}, {Name: "c2", WAN: "198.18.99.12"}, {Name: "c3", WAN: "198.18.99.13"}},
		SiteAGateways: []Node{
			{Name: "gwa1", WAN: "198.18.99.21", LAN: GWA1LAN},
			{Name: "gwa2", WAN: "198.18.99.22", LAN: "198.19.10.3"},
		},
		SiteBGateways: []Node{{Name: "gwb1", WAN: "198.18.99.31", LAN: SiteBGW}},
		Clients:       []Node{{Name: "cl1", WAN: "198.18.99.41"}, {Name: "cl2", WAN: "198.18.99.42"}},
		HostA:         Node{Name: "hosta", LAN: HostA},
		HostB:         Node{Name: "hostb", LAN: HostB},
	}
}

// MeshdLabDualStack is MeshdLab with IPv6 beside IPv4 on the wan and the
// site LANs (each address's last IPv4 byte is its IPv6 interface id:
// 198.18.99.21 is fd00:198:18::21), except that cl2 is on the wan over
// IPv6 only, so whatever reaches it crosses an IPv6 underlay.
func MeshdLabDualStack() *Topology {
	t := MeshdLab()
	v6 := func(v4, prefix string) string {
		if v4 == "" {
			return ""
		}
		return prefix + v4[strings.LastIndex(v4, ".")+1:]
	}
	for _, nodes := range [][]Node{t.Coordinators, t.SiteAGateways, t.SiteBGateways, t.Clients} {
		for i := range nodes {
			n := &nodes[i]
			n.WAN6 = v6(n.WAN, "fd00:198:18::")
			n.LAN6 = v6(n.LAN, lanPrefix6(n.LAN))
			if n.Name == "cl2" {
				n.WAN = ""
			}
		}
	}
	t.HostA.LAN6, t.HostB.LAN6 = HostA6, HostB6
	return t
}

// lanPrefix6 is the start of the IPv6 addresses of the site LAN that
// holds IPv4 address lan.
func lanPrefix6(lan string) string {
	if strings.HasPrefix(lan, "198.19.10.") {
		return "fd00:198:19:10::"
	}
	return "fd00:198:19:20::"
}

// addAddr6 adds IPv6 address addr (a /64) to ifname in namespace name,
// usable at once (no duplicate address detection: the lab assigns every
// address once).
func addAddr6(l *Lab, name, ifname, addr string) error {
	if addr == "" {
		return nil
	}
	_, err := run("ip", "-n", l.NS(name), "addr", "add", addr+"/64", "dev", ifname, "nodad")
	return err
}

// Build creates the topology's namespaces and links in l: the wan bridge
// in namespace "wan", each site's LAN bridge in "lana"/"lanb", a veth from
// every node to its networks, and the LAN hosts' default routes through
// their site's first gateway.
func (t *Topology) Build(l *Lab) error {
	for _, ns := range []string{"wan", "lana", "lanb"} {
		if err := l.AddNS(ns); err != nil {
			return err
		}
		if err := l.AddBridge(ns, "br0"); err != nil {
			return err
		}
	}
	lanOf := func(n Node) string {
		if strings.HasPrefix(n.LAN, "198.19.10.") {
			return "lana"
		}
		return "lanb"
	}
	for _, n := range t.Nodes() {
		if err := l.AddNS(n.Name); err != nil {
			return err
		}
		if n.WAN != "" || n.WAN6 != "" {
			addr := ""
			if n.WAN != "" {
				addr = n.WAN + "/24"
			}
			if err := l.Connect(n.Name, "eth0", addr, "wan", "br0"); err != nil {
				return err
			}
			if err := addAddr6(l, n.Name, "eth0", n.WAN6); err != nil {
				return err
			}
		}
		if n.LAN != "" {
			ifname := "eth1"
			if n.WAN == "" && n.WAN6 == "" {
				ifname = "eth0"
			}
			if err := l.Connect(n.Name, ifname, n.LAN+"/24", lanOf(n), "br0"); err != nil {
				return err
			}
			if err := addAddr6(l, n.Name, ifname, n.LAN6); err != nil {
				return err
			}
		}
	}
	for _, r := range []struct {
		host      Node
		via, via6 string
	}{{t.HostA, SiteAVIP, SiteAVIP6}, {t.HostB, SiteBGW, SiteBGW6}} {
		if _, err := run("ip", "-n", l.NS(r.host.Name), "route", "add", "default", "via", r.via); err != nil {
			return err
		}
		if r.host.LAN6 == "" {
			continue
		}
		if _, err := run("ip", "-n", l.NS(r.host.Name), "-6", "route", "add", "default", "via", r.via6); err != nil {
			return err
		}
	}
	return nil
}

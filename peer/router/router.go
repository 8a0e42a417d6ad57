// Package router is the OS side of the peer's data plane: the overlay
// address on the mesh interface, routes for the vnet overlay and every
// announced subnet through it, IPv4 forwarding on gateways, and (only when
// asked) source NAT and TCP MSS clamping.
//
// Set is declarative: it is handed the whole wanted Config and makes the OS
// match it, removing what meshd installed before and no longer wants, and
// leaving alone what others installed (meshd's routes carry RouteProtocol).
// The difference is computed by the pure Plan, shared by the Linux router
// and the Fake, so it is tested without root.
package router

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// RouteProtocol marks the routes meshd installs ("proto 77" in `ip route`),
// so that reconciling never touches routes it did not add.
const RouteProtocol = 77

// DefaultMTU is the mesh interface MTU when Config.MTU is 0.
const DefaultMTU = 1420

// Config is the whole desired OS state for the mesh interface.
type Config struct {
	Addrs  []netip.Prefix // addresses on the interface, e.g. the overlay IP as /32
	Routes []netip.Prefix // destinations routed through the interface
	MTU    int            // 0 means DefaultMTU
	// Forward enables IPv4 forwarding (a gateway).
	Forward bool
	// SNAT masquerades mesh traffic leaving through other interfaces.
	SNAT bool
	// ClampMSS clamps the MSS of forwarded TCP SYNs entering or leaving the
	// interface to the route MTU, so LAN hosts with MTU 1500 work.
	ClampMSS bool
}

// Router is the mesh interface's OS configuration under meshd's control.
type Router interface {
	// Up brings the interface up with its MTU.
	Up() error
	// Set reconciles the OS to cfg (nil: nothing), adding what is missing
	// and removing what meshd added that cfg no longer has. Setting the same
	// Config twice changes nothing.
	Set(cfg *Config) error
	// Close removes everything meshd installed (routes, addresses, firewall
	// table, forwarding it turned on) but not the interface itself.
	Close() error
}

// Plan is the difference between what is installed and what is wanted.
type Plan struct {
	AddAddrs, DelAddrs   []netip.Prefix
	AddRoutes, DelRoutes []netip.Prefix
	// Firewall is set when the SNAT/clamp rules must be rebuilt (FirewallOn
	// says whether any are wanted afterwards).
	Firewall   bool
	FirewallOn bool
	Forward    *bool // nil: leave as is
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.AddAddrs)+len(p.DelAddrs)+len(p.AddRoutes)+len(p.DelRoutes) == 0 && !p.Firewall && p.Forward == nil
}

// Ops describes the plan as commands, for logs and tests.
func (p *Plan) Ops(dev string) []string {
	var out []string
	for _, a := range p.DelAddrs {
		out = append(out, fmt.Sprintf("addr del %s dev %s", a, dev))
	}
	for _, a := range p.AddAddrs {
		out = append(out, fmt.Sprintf("addr add %s dev %s", a, dev))
	}
	for _, r := range p.DelRoutes {
		out = append(out, fmt.Sprintf("route del %s dev %s", r, dev))
	}
	for _, r := range p.AddRoutes {
		out = append(out, fmt.Sprintf("route add %s dev %s", r, dev))
	}
	if p.Forward != nil {
		out = append(out, fmt.Sprintf("forwarding %s", onOff(*p.Forward)))
	}
	if p.Firewall {
		out = append(out, fmt.Sprintf("firewall %s", onOff(p.FirewallOn)))
	}
	return out
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// State is what meshd has installed.
type State struct {
	Addrs    []netip.Prefix
	Routes   []netip.Prefix
	SNAT     bool
	ClampMSS bool
	Forward  bool // meshd turned forwarding on
}

// MakePlan computes the changes that turn have into want (nil: nothing).
func MakePlan(have State, want *Config) Plan {
	if want == nil {
		want = &Config{}
	}
	var p Plan
	p.AddAddrs, p.DelAddrs = diff(have.Addrs, want.Addrs)
	p.AddRoutes, p.DelRoutes = diff(have.Routes, want.Routes)
	if have.SNAT != want.SNAT || have.ClampMSS != want.ClampMSS {
		p.Firewall = true
		p.FirewallOn = want.SNAT || want.ClampMSS
	}
	if have.Forward != want.Forward {
		f := want.Forward
		p.Forward = &f
	}
	return p
}

// diff returns what is in want but not have, and in have but not want.
func diff(have, want []netip.Prefix) (add, del []netip.Prefix) {
	h := map[netip.Prefix]bool{}
	for _, x := range have {
		h[x.Masked()] = true
	}
	w := map[netip.Prefix]bool{}
	for _, x := range want {
		w[x] = true
		if !h[x.Masked()] && !slices.Contains(add, x) {
			add = append(add, x)
		}
	}
	for _, x := range have {
		if !w[x] && !containsMasked(want, x) {
			del = append(del, x)
		}
	}
	sortPrefixes(add)
	sortPrefixes(del)
	return add, del
}

func containsMasked(list []netip.Prefix, x netip.Prefix) bool {
	for _, y := range list {
		if y.Masked() == x.Masked() {
			return true
		}
	}
	return false
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
}

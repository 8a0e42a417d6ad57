// Package router is the OS side of the peer agent's data plane (what
// tailscale calls wgengine/router): the overlay address on the mesh
// interface, its MTU, routes through it for the vnet overlay and every subnet
// other gateways announce, IPv4 (and IPv6) forwarding on gateways, and, only when asked,
// source NAT and TCP MSS clamping.
//
// Set is declarative. It is handed the whole wanted Config and makes the OS
// match it: it adds what is missing, removes what meshd installed before and
// no longer wants, and changes nothing when everything is in place. It never
// touches what others installed:
//
//   - routes meshd installs carry RouteProtocol, and only those routes on the
//     mesh interface are ever replaced or deleted;
//   - a wanted destination that another owner already routes in the main
//     table at the same metric (a client's home LAN that a remote site also
//     uses, say) is left to that owner, and logged once;
//   - addresses are reconciled on the mesh interface only, which meshd owns
//     (link-local addresses are left alone);
//   - IPv4 forwarding is turned on only when Forward is wanted, and put back
//     only if meshd was the one that turned it on;
//   - SNAT and MSS clamping live in one nftables table of meshd's own
//     (TableName), rebuilt in one atomic batch and deleted when unused.
//
// The work is split so that it can be tested without root. The OS is read
// into a State, the pure MakePlan computes the Plan that turns it into the
// wanted Config, and an implementation carries the plan out: the Linux
// router through netlink and nftables (router_linux.go), the Fake by applying
// it to a model and recording the commands it stands for
// ("route add 10.1.0.0/24 dev meshd0").
package router

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// RouteProtocol is the route protocol number (rtm_protocol) on every route
// meshd installs: "proto 77" in `ip route` (0x4d, 'M'). Linux leaves 5 to
// 252 to routing daemons and 77 is not in iproute2's rt_protos list. The
// router lists and removes only routes on the mesh interface that carry it,
// so routes added by anyone else are never deleted.
const RouteProtocol = 0x4d

// DefaultMTU is the mesh interface MTU when Config.MTU is 0: a 1500-byte
// path minus the IPv6 + UDP + WireGuard overhead (80 bytes).
const DefaultMTU = 1420

// TableName returns the name of meshd's nftables table (family inet) for
// the mesh interface dev. It is per interface so that two agents in one
// network namespace do not rebuild each other's rules.
func TableName(dev string) string { return "meshd_" + dev }

// Config is the whole desired OS state for the mesh interface. Set
// reconciles to it.
type Config struct {
	// Addrs are the addresses on the interface, e.g. 100.96.0.5/32 (the
	// overlay IP). Optional.
	Addrs []netip.Prefix
	// Routes are the destinations routed through the interface: the vnet
	// overlay (100.96.0.0/12) and every subnet other gateways announce.
	// Host bits are ignored. Optional.
	Routes []netip.Prefix
	// MTU is the interface MTU; 0 means DefaultMTU. Optional.
	MTU int
	// Forward enables IPv4 forwarding in this network namespace (a gateway).
	Forward bool
	// Forward6 enables IPv6 forwarding in this network namespace (a
	// gateway that announces an IPv6 route).
	Forward6 bool
	// SNAT masquerades mesh traffic leaving through other interfaces. Only
	// when the user asks (--snat): meshd keeps true source addresses.
	SNAT bool
	// ClampMSS clamps the MSS of forwarded TCP SYNs entering or leaving the
	// interface to the route MTU, so LAN hosts with MTU 1500 work through the
	// tunnel (gateways).
	ClampMSS bool
}

// Validate reports the first malformed field of c. A nil Config is valid
// (it wants nothing).
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	for _, a := range c.Addrs {
		if err := checkPrefix(a); err != nil {
			return fmt.Errorf("router: address %v: %w", a, err)
		}
		if a.Addr().IsUnspecified() {
			return fmt.Errorf("router: address %v: unspecified address", a)
		}
	}
	for _, r := range c.Routes {
		if err := checkPrefix(r); err != nil {
			return fmt.Errorf("router: route %v: %w", r, err)
		}
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("router: MTU %d: want 68 to 65535 (or 0 for %d)", c.MTU, DefaultMTU)
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid prefix")
	case p.Addr().Is4In6():
		return errors.New("IPv4-mapped IPv6 address; use the IPv4 form")
	case p.Addr().Zone() != "":
		return errors.New("address with a zone")
	}
	return nil
}

// Router is the mesh interface's OS configuration under meshd's control.
// Its methods may be called from any goroutine.
type Router interface {
	// Up brings the interface up.
	Up() error
	// Set reconciles the OS to cfg: it adds what is missing, removes what
	// meshd added before that cfg no longer has (addresses, routes,
	// firewall rules), and changes nothing if all is already in place.
	// Set(nil) or an empty Config removes everything meshd installed (an
	// empty Config still sets DefaultMTU). A malformed cfg changes nothing.
	// A destination another owner already routes is skipped, not an error.
	Set(cfg *Config) error
	// Close removes everything meshd installed (routes, addresses, nftables
	// table, forwarding it turned on) but not the interface itself.
	Close() error
}

// Route is one route meshd installs through the mesh interface.
type Route struct {
	Dst netip.Prefix // masked
	Src netip.Addr   // preferred source address; zero: the kernel picks
}

// String formats r as in `ip route`: "10.1.0.0/24 src 100.96.0.5".
func (r Route) String() string {
	if r.Src.IsValid() {
		return r.Dst.String() + " src " + r.Src.String()
	}
	return r.Dst.String()
}

// State is what is installed, as far as reconciling is concerned.
type State struct {
	MTU      int            // the interface MTU
	Addrs    []netip.Prefix // addresses on the interface, link-local ones excepted
	Routes   []Route        // meshd's routes (RouteProtocol) through the interface
	Occupied []netip.Prefix // destinations another owner routes in the main table at meshd's metric
	Forward  bool           // meshd has turned IPv4 forwarding on
	Forward6 bool           // meshd has turned IPv6 forwarding on
	SNAT     bool           // meshd's masquerade rule is installed
	ClampMSS bool           // meshd's MSS clamp rules are installed
}

// Plan is the difference between a State and a wanted Config: the changes
// to make, in the order Ops lists them.
type Plan struct {
	MTU          int // set the interface MTU; 0: leave it
	AddAddrs     []netip.Prefix
	DelRoutes    []Route
	AddRoutes    []Route // new destinations
	ChangeRoutes []Route // destinations meshd routes already, with another source: replace
	DelAddrs     []netip.Prefix
	// Forward, SNAT and ClampMSS are the new settings; nil: unchanged.
	// Forward off means "put back what was there before meshd turned it on".
	Forward, Forward6, SNAT, ClampMSS *bool
	// Skipped are wanted destinations left to the other owner that routes
	// them already. Not a change.
	Skipped []netip.Prefix
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return p.MTU == 0 && len(p.AddAddrs)+len(p.DelRoutes)+len(p.AddRoutes)+len(p.ChangeRoutes)+len(p.DelAddrs) == 0 &&
		p.Forward == nil && p.Forward6 == nil && !p.FirewallChanged()
}

// FirewallChanged reports whether the nftables table must be rebuilt.
func (p *Plan) FirewallChanged() bool { return p.SNAT != nil || p.ClampMSS != nil }

// Ops describes the plan as commands on interface dev, in the order they
// are carried out, for logs and tests.
func (p *Plan) Ops(dev string) []string {
	var out []string
	if p.MTU != 0 {
		out = append(out, fmt.Sprintf("link set %s mtu %d", dev, p.MTU))
	}
	for _, a := range p.AddAddrs {
		out = append(out, fmt.Sprintf("addr add %s dev %s", a, dev))
	}
	for _, r := range p.DelRoutes {
		out = append(out, fmt.Sprintf("route del %s dev %s", r.Dst, dev))
	}
	for _, r := range p.AddRoutes {
		out = append(out, fmt.Sprintf("route add %s dev %s%s", r.Dst, dev, srcSuffix(r)))
	}
	for _, r := range p.ChangeRoutes {
		out = append(out, fmt.Sprintf("route replace %s dev %s%s", r.Dst, dev, srcSuffix(r)))
	}
	for _, a := range p.DelAddrs {
		out = append(out, fmt.Sprintf("addr del %s dev %s", a, dev))
	}
	if p.Forward != nil {
		out = append(out, "forwarding "+onOff(*p.Forward))
	}
	if p.Forward6 != nil {
		out = append(out, "ipv6 forwarding "+onOff(*p.Forward6))
	}
	if p.SNAT != nil {
		out = append(out, "snat "+onOff(*p.SNAT))
	}
	if p.ClampMSS != nil {
		out = append(out, "mss clamp "+onOff(*p.ClampMSS))
	}
	return out
}

func srcSuffix(r Route) string {
	if r.Src.IsValid() {
		return " src " + r.Src.String()
	}
	return ""
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// MakePlan computes the changes that turn have into want. A nil want wants
// nothing and leaves the MTU alone. want must be valid (Config.Validate).
func MakePlan(have State, want *Config) Plan {
	var p Plan
	if want != nil {
		if mtu := cmp.Or(want.MTU, DefaultMTU); have.MTU != mtu {
			p.MTU = mtu
		}
	} else {
		want = &Config{}
	}

	wantAddrs := uniq(want.Addrs)
	for _, a := range wantAddrs {
		if !slices.Contains(have.Addrs, a) {
			p.AddAddrs = append(p.AddAddrs, a)
		}
	}
	for _, a := range uniq(have.Addrs) {
		if !slices.Contains(wantAddrs, a) {
			p.DelAddrs = append(p.DelAddrs, a)
		}
	}

	wantRoutes := routesFor(want)
	installed := map[netip.Prefix]Route{}
	for _, r := range have.Routes {
		if _, dup := installed[r.Dst]; dup {
			continue
		}
		installed[r.Dst] = r
		if _, ok := wantRoutes[r.Dst]; !ok {
			p.DelRoutes = append(p.DelRoutes, r)
		}
	}
	for _, r := range wantRoutes {
		switch old, ok := installed[r.Dst]; {
		case ok && old.Src != r.Src:
			p.ChangeRoutes = append(p.ChangeRoutes, r)
		case ok:
		case slices.Contains(have.Occupied, r.Dst):
			p.Skipped = append(p.Skipped, r.Dst)
		default:
			p.AddRoutes = append(p.AddRoutes, r)
		}
	}

	p.Forward = change(have.Forward, want.Forward)
	p.Forward6 = change(have.Forward6, want.Forward6)
	p.SNAT = change(have.SNAT, want.SNAT)
	p.ClampMSS = change(have.ClampMSS, want.ClampMSS)

	sortPrefixes(p.AddAddrs)
	sortPrefixes(p.DelAddrs)
	sortPrefixes(p.Skipped)
	for _, rs := range [][]Route{p.DelRoutes, p.AddRoutes, p.ChangeRoutes} {
		sortRoutes(rs)
	}
	return p
}

// routesFor returns the routes cfg wants, by destination. Routes take the
// first address of their family in cfg as their source, so traffic the
// host itself sends into the mesh carries the overlay address.
func routesFor(cfg *Config) map[netip.Prefix]Route {
	var src4, src6 netip.Addr
	for _, a := range cfg.Addrs {
		switch {
		case a.Addr().Is4() && !src4.IsValid():
			src4 = a.Addr()
		case a.Addr().Is6() && !src6.IsValid():
			src6 = a.Addr()
		}
	}
	out := map[netip.Prefix]Route{}
	for _, p := range cfg.Routes {
		r := Route{Dst: p.Masked(), Src: src6}
		if r.Dst.Addr().Is4() {
			r.Src = src4
		}
		out[r.Dst] = r
	}
	return out
}

func change(have, want bool) *bool {
	if have == want {
		return nil
	}
	return &want
}

// Apply returns the state after p is carried out on s. It does not modify
// s.
func (s State) Apply(p Plan) State {
	out := State{MTU: s.MTU, Occupied: slices.Clone(s.Occupied), Forward: s.Forward, Forward6: s.Forward6, SNAT: s.SNAT, ClampMSS: s.ClampMSS}
	if p.MTU != 0 {
		out.MTU = p.MTU
	}
	for _, a := range s.Addrs {
		if !slices.Contains(p.DelAddrs, a) && !slices.Contains(out.Addrs, a) {
			out.Addrs = append(out.Addrs, a)
		}
	}
	for _, a := range p.AddAddrs {
		if !slices.Contains(out.Addrs, a) {
			out.Addrs = append(out.Addrs, a)
		}
	}
	routes := map[netip.Prefix]Route{}
	for _, r := range s.Routes {
		routes[r.Dst] = r
	}
	for _, r := range p.DelRoutes {
		delete(routes, r.Dst)
	}
	for _, rs := range [][]Route{p.AddRoutes, p.ChangeRoutes} {
		for _, r := range rs {
			routes[r.Dst] = r
		}
	}
	for _, r := range routes {
		out.Routes = append(out.Routes, r)
	}
	for _, f := range []struct {
		to   *bool
		from *bool
	}{{&out.Forward, p.Forward}, {&out.Forward6, p.Forward6}, {&out.SNAT, p.SNAT}, {&out.ClampMSS, p.ClampMSS}} {
		if f.from != nil {
			*f.to = *f.from
		}
	}
	sortPrefixes(out.Addrs)
	sortRoutes(out.Routes)
	return out
}

// uniq returns ps without duplicates, sorted.
func uniq(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	sortPrefixes(out)
	return slices.Compact(out)
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func sortPrefixes(ps []netip.Prefix) { slices.SortFunc(ps, comparePrefixes) }

func sortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		if c := comparePrefixes(a.Dst, b.Dst); c != 0 {
			return c
		}
		return a.Src.Compare(b.Src)
	})
}

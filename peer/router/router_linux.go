package router

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipForward and ip6Forward are IPv4 and IPv6 forwarding of the caller's
// network namespace.
const (
	ipForward  = "/proc/sys/net/ipv4/ip_forward"
	ip6Forward = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// maxRounds bounds how often Set plans and applies before the OS settles.
// One round is the rule; a second is needed when the kernel undoes part of
// the first (deleting a primary address takes its secondaries with it, the
// last IPv4 address takes the interface's routes).
const maxRounds = 3

// linuxRouter drives the kernel through netlink, nftables and /proc. It
// reads addresses, routes and the nftables table back from the kernel on
// every Set; forwarding is remembered, not read, so that an operator who
// turns it off is not overruled (the agent reports such a gateway
// unhealthy instead).
type linuxRouter struct {
	dev   string
	table string // nftables table, family inet
	log   *slog.Logger

	mu       sync.Mutex
	forward  sysctl                // guarded by mu: IPv4 forwarding
	forward6 sysctl                // guarded by mu: IPv6 forwarding
	skipped  map[netip.Prefix]bool // guarded by mu: skipped destinations already logged
	changes  int                   // guarded by mu: operations carried out, for tests
}

var _ Router = (*linuxRouter)(nil)

// New returns the router for the mesh interface ifName, which must exist.
// It changes nothing until Up or Set.
func New(ifName string, log *slog.Logger) (Router, error) {
	if _, err := netlink.LinkByName(ifName); err != nil {
		return nil, fmt.Errorf("router: interface %s: %w", ifName, err)
	}
	return &linuxRouter{
		dev:      ifName,
		table:    TableName(ifName),
		log:      log.With("component", "router", "interface", ifName),
		skipped:  map[netip.Prefix]bool{},
		forward:  sysctl{path: ipForward, what: "IPv4 forwarding"},
		forward6: sysctl{path: ip6Forward, what: "IPv6 forwarding"},
	}, nil
}

// Up implements Router.
func (r *linuxRouter) Up() error {
	l, err := netlink.LinkByName(r.dev)
	if err != nil {
		return fmt.Errorf("router: interface %s: %w", r.dev, err)
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("router: bring up %s: %w", r.dev, err)
	}
	return nil
}

// Close implements Router.
func (r *linuxRouter) Close() error { return r.Set(nil) }

// Set implements Router.
func (r *linuxRouter) Set(cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for round := 1; ; round++ {
		l, err := netlink.LinkByName(r.dev)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if cfg != nil || !errors.As(err, &notFound) {
				return fmt.Errorf("router: interface %s: %w", r.dev, err)
			}
			// Gone with its addresses and routes; the firewall table and
			// forwarding are still to undo.
			l = nil
		}
		have, routes, err := r.read(l)
		if err != nil {
			return err
		}
		plan := MakePlan(have, cfg)
		r.noteSkipped(plan.Skipped)
		if plan.Empty() {
			return nil
		}
		if round > maxRounds {
			return fmt.Errorf("router: %s does not settle; still to do: %s", r.dev, strings.Join(plan.Ops(r.dev), "; "))
		}
		r.log.Debug("reconcile", "round", round, "ops", strings.Join(plan.Ops(r.dev), "; "))
		if err := r.apply(l, have, plan, routes); err != nil {
			return fmt.Errorf("router: %w", err)
		}
	}
}

// read returns what is installed, and the kernel's form of each of meshd's
// routes (to delete exactly those). A nil l is an interface that is gone.
func (r *linuxRouter) read(l netlink.Link) (State, map[netip.Prefix][]netlink.Route, error) {
	s := State{Forward: r.forward.on, Forward6: r.forward6.on}
	s.SNAT, s.ClampMSS = r.readFirewall()
	if l == nil {
		return s, nil, nil
	}
	s.MTU = l.Attrs().MTU
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return s, nil, fmt.Errorf("router: list addresses of %s: %w", r.dev, err)
	}
	for _, a := range addrs {
		if p, ok := toPrefix(a.IPNet, false); ok && !p.Addr().IsLinkLocalUnicast() {
			s.Addrs = append(s.Addrs, p)
		}
	}
	all, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return s, nil, fmt.Errorf("router: list routes: %w", err)
	}
	routes := map[netip.Prefix][]netlink.Route{}
	for _, rt := range all {
		dst, ok := toPrefix(rt.Dst, true)
		if !ok {
			continue
		}
		if rt.LinkIndex == l.Attrs().Index && rt.Protocol == RouteProtocol {
			if len(routes[dst]) == 0 {
				src, _ := netip.AddrFromSlice(rt.Src)
				s.Routes = append(s.Routes, Route{Dst: dst, Src: src.Unmap()})
			}
			routes[dst] = append(routes[dst], rt)
			continue
		}
		// Routes with the key a route of meshd's would have: the kernel
		// would let RouteReplace overwrite them.
		if rt.Priority == defaultMetric(dst) && rt.Tos == 0 {
			s.Occupied = append(s.Occupied, dst)
		}
	}
	return s, routes, nil
}

// defaultMetric is the metric the kernel gives a route added with none.
func defaultMetric(dst netip.Prefix) int {
	if dst.Addr().Is4() {
		return 0
	}
	return 1024 // IP6_RT_PRIO_USER
}

// retryDump runs a netlink dump again when a concurrent change interrupted
// it (its result may then be inconsistent).
func retryDump[T any](dump func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return v, err
	}
}

func (r *linuxRouter) noteSkipped(skipped []netip.Prefix) {
	for p := range r.skipped {
		if !containsPrefix(skipped, p) {
			delete(r.skipped, p)
		}
	}
	for _, p := range skipped {
		if !r.skipped[p] {
			r.skipped[p] = true
			r.log.Warn("route left alone: another route for this destination exists in the main table", "prefix", p)
		}
	}
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// apply carries out plan, in the order Plan.Ops lists it: addresses are
// added before stale ones go, so the interface never loses its last
// address (which would take every route through it along, not just
// meshd's). It goes on after a failed step and returns all the errors.
func (r *linuxRouter) apply(l netlink.Link, have State, plan Plan, kernel map[netip.Prefix][]netlink.Route) error {
	var errs []error
	did := func(err error, op string, args ...any) {
		if err != nil {
			errs = append(errs, fmt.Errorf(op+": %w", append(args, err)...))
			return
		}
		r.changes++
	}
	if l != nil {
		if plan.MTU != 0 {
			did(netlink.LinkSetMTU(l, plan.MTU), "set mtu %d on %s", plan.MTU, r.dev)
		}
		for _, a := range plan.AddAddrs {
			na := &netlink.Addr{IPNet: toIPNet(a)}
			if a.Addr().Is6() {
				// No duplicate detection on a point-to-point tunnel: the
				// address is usable (as a route source) at once.
				na.Flags = unix.IFA_F_NODAD
			}
			did(netlink.AddrReplace(l, na), "addr add %s dev %s", a, r.dev)
		}
		for _, rt := range plan.DelRoutes {
			for _, k := range kernel[rt.Dst] {
				err := netlink.RouteDel(&k)
				if errors.Is(err, unix.ESRCH) {
					err = nil // gone already
				}
				did(err, "route del %s dev %s", rt.Dst, r.dev)
			}
		}
		for _, rt := range append(plan.AddRoutes, plan.ChangeRoutes...) {
			did(netlink.RouteReplace(r.kernelRoute(l, rt)), "route add %s dev %s", rt, r.dev)
		}
		for _, a := range plan.DelAddrs {
			err := netlink.AddrDel(l, &netlink.Addr{IPNet: toIPNet(a)})
			if errors.Is(err, unix.EADDRNOTAVAIL) {
				err = nil // gone already
			}
			did(err, "addr del %s dev %s", a, r.dev)
		}
	}
	if plan.Forward != nil {
		did(r.forward.set(*plan.Forward, r.log), "forwarding %s", onOff(*plan.Forward))
	}
	if plan.Forward6 != nil {
		did(r.forward6.set(*plan.Forward6, r.log), "ipv6 forwarding %s", onOff(*plan.Forward6))
	}
	if plan.FirewallChanged() {
		snat, clamp := have.SNAT, have.ClampMSS
		if plan.SNAT != nil {
			snat = *plan.SNAT
		}
		if plan.ClampMSS != nil {
			clamp = *plan.ClampMSS
		}
		err := r.setFirewall(snat, clamp)
		if err == nil {
			r.log.Info("firewall rules", "table", "inet "+r.table, "snat", snat, "mss_clamp", clamp)
		}
		did(err, "nftables table inet %s (SNAT %s, MSS clamp %s; does the kernel have nf_tables?)", r.table, onOff(snat), onOff(clamp))
	}
	return errors.Join(errs...)
}

func (r *linuxRouter) kernelRoute(l netlink.Link, rt Route) *netlink.Route {
	k := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       toIPNet(rt.Dst),
		Protocol:  RouteProtocol,
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
	}
	if rt.Src.IsValid() {
		k.Src = rt.Src.AsSlice()
	}
	return k
}

// sysctl is a forwarding switch meshd turns on and, when done, puts back
// only if it was the one that turned it on.
type sysctl struct {
	path string
	what string // for logs
	on   bool   // meshd turned it on
	prev []byte // its value before
}

// set turns the switch on, remembering the value it had, or puts that
// value back.
func (s *sysctl) set(on bool, log *slog.Logger) error {
	if on {
		prev, err := os.ReadFile(s.path)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(prev)) != "1" {
			if err := os.WriteFile(s.path, []byte("1\n"), 0o644); err != nil {
				return err
			}
			log.Info(s.what + " enabled")
		}
		s.prev, s.on = prev, true
		return nil
	}
	if s.prev != nil && strings.TrimSpace(string(s.prev)) != "1" {
		if err := os.WriteFile(s.path, s.prev, 0o644); err != nil {
			return err
		}
		log.Info(s.what+" restored", "value", strings.TrimSpace(string(s.prev)))
	}
	s.prev, s.on = nil, false
	return nil
}

// ForwardingEnabled reports whether IPv4 forwarding is on in this network
// namespace; a gateway with forwarding off is a zombie that must not carry
// routes.
func ForwardingEnabled() (bool, error) {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Chains of meshd's table; their presence says which rules are installed.
const (
	snatChain  = "postrouting"
	clampChain = "forward"
)

// readFirewall reports which of meshd's rules are installed. A kernel
// without nf_tables has none.
func (r *linuxRouter) readFirewall() (snat, clamp bool) {
	c, err := nftables.New()
	if err != nil {
		return false, false
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, false
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != r.table {
			continue
		}
		switch ch.Name {
		case snatChain:
			snat = true
		case clampChain:
			clamp = true
		}
	}
	return snat, clamp
}

// setFirewall replaces meshd's nftables table in one atomic batch with one
// holding a masquerade rule for mesh traffic leaving through other
// interfaces (snat) and an MSS clamp for TCP SYNs crossing the mesh
// interface (clamp); with neither, the table is deleted.
//
//	table inet meshd_meshd0 {
//		chain postrouting { type nat hook postrouting priority srcnat;
//			iifname "meshd0" oifname != "meshd0" masquerade }
//		chain forward { type filter hook forward priority mangle;
//			iifname "meshd0" tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
//			oifname "meshd0" tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu }
//	}
func (r *linuxRouter) setFirewall(snat, clamp bool) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: r.table}
	// Adding, then deleting, removes the table whether or not it existed.
	c.AddTable(table)
	c.DelTable(table)
	if snat || clamp {
		c.AddTable(table)
	}
	dev := make([]byte, unix.IFNAMSIZ) // as meta iifname loads it: NUL-padded
	copy(dev, r.dev)
	if snat {
		ch := c.AddChain(&nftables.Chain{Name: snatChain, Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dev},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: dev},
			&expr.Masq{},
		}})
	}
	if clamp {
		ch := c.AddChain(&nftables.Chain{Name: clampChain, Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
		for _, key := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
			c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dev},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				// tcp flags & (syn|rst) == syn
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
				// tcp option maxseg size set rt mtu (the kernel only lowers it)
				&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
				&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
			}})
		}
	}
	return c.Flush()
}

// toPrefix converts a kernel address or destination; masked for routes.
func toPrefix(n *net.IPNet, masked bool) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	p := netip.PrefixFrom(a.Unmap(), ones)
	if masked {
		p = p.Masked()
	}
	return p, p.IsValid()
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

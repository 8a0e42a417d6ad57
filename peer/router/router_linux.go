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

const ipForward = "/proc/sys/net/ipv4/ip_forward"

// linuxRouter drives the kernel through netlink and nftables.
type linuxRouter struct {
	dev string
	log *slog.Logger

	mu       sync.Mutex
	mtu      int   // guarded by mu
	fw       State // guarded by mu: firewall and forwarding meshd installed
	prevFwd  []byte
	fwdTaken bool // guarded by mu: meshd turned forwarding on
}

var _ Router = (*linuxRouter)(nil)

// New returns the router for interface dev, which must exist.
func New(dev string, log *slog.Logger) (Router, error) {
	if _, err := netlink.LinkByName(dev); err != nil {
		return nil, fmt.Errorf("router: interface %s: %w", dev, err)
	}
	r := &linuxRouter{dev: dev, log: log.With("component", "router", "interface", dev), mtu: DefaultMTU}
	// A table left by a crashed run is removed, so the firewall state
	// starts known.
	if err := r.setFirewall(false, false); err != nil {
		r.log.Debug("nftables not available", "err", err)
	}
	return r, nil
}

func (r *linuxRouter) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(r.dev)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", r.dev, err)
	}
	return l, nil
}

// Up implements Router.
func (r *linuxRouter) Up() error {
	l, err := r.link()
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", r.dev, err)
	}
	return nil
}

// installed reads meshd's addresses and routes on the interface.
func (r *linuxRouter) installed(l netlink.Link) (State, error) {
	var s State
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return s, fmt.Errorf("list addresses of %s: %w", r.dev, err)
	}
	for _, a := range addrs {
		p, ok := toPrefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		s.Addrs = append(s.Addrs, p)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return s, fmt.Errorf("list routes of %s: %w", r.dev, err)
	}
	for _, rt := range routes {
		if p, ok := toPrefix(rt.Dst); ok {
			s.Routes = append(s.Routes, p.Masked())
		}
	}
	return s, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Set implements Router.
func (r *linuxRouter) Set(cfg *Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := r.link()
	if err != nil {
		if cfg == nil {
			return r.setFirewallState(nil) // the interface is gone with its routes
		}
		return err
	}
	if cfg != nil {
		mtu := cfg.MTU
		if mtu == 0 {
			mtu = DefaultMTU
		}
		if l.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(l, mtu); err != nil {
				return fmt.Errorf("set mtu %d on %s: %w", mtu, r.dev, err)
			}
		}
	}
	have, err := r.installed(l)
	if err != nil {
		return err
	}
	have.SNAT, have.ClampMSS, have.Forward = r.fw.SNAT, r.fw.ClampMSS, r.fw.Forward
	plan := MakePlan(have, cfg)
	if plan.Empty() {
		return nil
	}
	var errs []error
	for _, a := range plan.DelAddrs {
		if err := netlink.AddrDel(l, &netlink.Addr{IPNet: toIPNet(a)}); err != nil {
			errs = append(errs, fmt.Errorf("addr del %s: %w", a, err))
		}
	}
	for _, a := range plan.AddAddrs {
		if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: toIPNet(a)}); err != nil {
			errs = append(errs, fmt.Errorf("addr add %s: %w", a, err))
		}
	}
	for _, p := range plan.DelRoutes {
		// Scope, table and type must match the installed route, or the
		// kernel finds nothing (or another route) to delete.
		del := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: toIPNet(p), Protocol: RouteProtocol,
			Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST}
		if err := netlink.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("route del %s: %w", p, err))
		}
	}
	var src net.IP
	if cfg != nil {
		for _, a := range cfg.Addrs {
			if a.Addr().Is4() {
				src = a.Addr().AsSlice()
				break
			}
		}
	}
	for _, p := range plan.AddRoutes {
		rt := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: toIPNet(p), Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN}
		if p.Addr().Is4() && src != nil {
			rt.Src = src
		}
		if err := netlink.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("route add %s: %w", p, err))
		}
	}
	if plan.Forward != nil || plan.Firewall {
		if err := r.setFirewallState(cfg); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		r.log.Debug("reconciled", "ops", strings.Join(plan.Ops(r.dev), "; "))
	}
	return errors.Join(errs...)
}

// setFirewallState makes forwarding and the nftables table match cfg.
func (r *linuxRouter) setFirewallState(cfg *Config) error {
	want := State{}
	if cfg != nil {
		want = State{SNAT: cfg.SNAT, ClampMSS: cfg.ClampMSS, Forward: cfg.Forward}
	}
	var errs []error
	if want.Forward != r.fw.Forward {
		if err := r.setForward(want.Forward); err != nil {
			errs = append(errs, err)
		} else {
			r.fw.Forward = want.Forward
		}
	}
	if want.SNAT != r.fw.SNAT || want.ClampMSS != r.fw.ClampMSS {
		if err := r.setFirewall(want.SNAT, want.ClampMSS); err != nil {
			errs = append(errs, fmt.Errorf("nftables (needed for --snat and MSS clamping): %w", err))
		} else {
			r.fw.SNAT, r.fw.ClampMSS = want.SNAT, want.ClampMSS
			r.log.Info("firewall rules", "snat", want.SNAT, "mss_clamp", want.ClampMSS)
		}
	}
	return errors.Join(errs...)
}

// setForward turns IPv4 forwarding on, remembering the previous value, or
// restores that value.
func (r *linuxRouter) setForward(on bool) error {
	if on {
		prev, err := os.ReadFile(ipForward)
		if err != nil {
			return fmt.Errorf("read %s: %w", ipForward, err)
		}
		r.prevFwd = prev
		if strings.TrimSpace(string(prev)) == "1" {
			return nil
		}
		if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
		r.log.Info("IPv4 forwarding enabled")
		return nil
	}
	if r.prevFwd != nil && strings.TrimSpace(string(r.prevFwd)) != "1" {
		if err := os.WriteFile(ipForward, r.prevFwd, 0o644); err != nil {
			return fmt.Errorf("restore forwarding: %w", err)
		}
	}
	return nil
}

func (r *linuxRouter) tableName() string { return "meshd_" + r.dev }

// setFirewall rebuilds meshd's nftables table in one batch: a masquerade
// rule for mesh traffic leaving other interfaces (snat) and an MSS clamp for
// TCP SYNs crossing the mesh interface (clamp). Neither: no table.
func (r *linuxRouter) setFirewall(snat, clamp bool) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: r.tableName()}
	// Adding then deleting removes the table whether or not it existed.
	c.AddTable(table)
	c.DelTable(table)
	if snat || clamp {
		c.AddTable(table)
	}
	ifname := func(name string) []byte {
		b := make([]byte, 16)
		copy(b, name)
		return b
	}
	if snat {
		ch := c.AddChain(&nftables.Chain{Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.dev)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(r.dev)},
			&expr.Masq{},
		}})
	}
	if clamp {
		ch := c.AddChain(&nftables.Chain{Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
		for _, key := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
			c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.dev)},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				// tcp flags & (syn|rst) == syn
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
				// tcp option maxseg size set rt mtu
				&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
				&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
			}})
		}
	}
	return c.Flush()
}

// Close implements Router.
func (r *linuxRouter) Close() error {
	return r.Set(nil)
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

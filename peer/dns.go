package peer

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/meshd/meshd/peer/meshdns"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
)

// Names: the agent answers DNS for NAME.VNET.SUFFIX on its overlay address
// (meshdns) and points the host's resolver at it for SUFFIX only.
//
//	loop: map changed -> meshdns.Input -> dnsWant --offer--> DNS worker
//	DNS worker: meshdns.Build, swap the table; listen on OVERLAY_IP:53 (UDP,
//	            TCP) once the interface has the address (retry while the
//	            port is taken); point the host resolver at it; on stop
//	            revert and close

// DefaultDNSPort is the port the agent's name server listens on.
const DefaultDNSPort = 53

// DNSConfig configures the agent's name server.
type DNSConfig struct {
	// Enabled serves the names; `meshd peer up` turns it on unless
	// --dns=false.
	Enabled bool
	Suffix  string // optional: meshdns.DefaultSuffix (--dns-suffix)
	Port    int    // optional: DefaultDNSPort
	// HostResolver points the host's resolver at the server; optional:
	// systemd-resolved when this host runs it (meshdns.ChooseResolver),
	// otherwise nothing but a hint in the log.
	HostResolver meshdns.HostResolver
}

// normalize fills in the defaults and checks the suffix.
func (c *DNSConfig) normalize() error {
	if c.Suffix == "" {
		c.Suffix = meshdns.DefaultSuffix
	}
	s, err := meshdns.CleanSuffix(c.Suffix)
	if err != nil {
		return err
	}
	c.Suffix = s
	if c.Port == 0 {
		c.Port = DefaultDNSPort
	}
	if c.Port < 0 || c.Port > 65535 {
		return errors.New("the DNS port must be in 1..65535")
	}
	return nil
}

// dnsWant is what the loop hands the DNS worker: what the names of the
// current map are built from (the worker builds them, off the loop) and
// the address to serve them on.
type dnsWant struct {
	in   meshdns.Input
	addr netip.Addr
}

// dnsKey is what the table depends on besides the peers, which change
// only with the map index.
type dnsKey struct {
	index            uint64
	vnet             string
	overlay          netip.Prefix
	selfName, selfIP string
}

// dnsRetry is how soon the DNS worker tries again to listen (the port is
// taken, the address is not on the interface yet) or to configure the
// host's resolver.
const dnsRetry = 5 * time.Second

// offerDNS runs in the loop after the interface has been configured: when
// the map changed, it hands the DNS worker what the names are made of.
func (a *Agent) offerDNS(st *state) {
	if !a.cfg.DNS.Enabled || st.nm.self == nil {
		return
	}
	k := dnsKey{index: st.nm.index, vnet: st.nm.vnet, overlay: st.nm.overlay, selfName: st.nm.self.Name, selfIP: st.nm.self.OverlayIP}
	if st.dnsKey != nil && *st.dnsKey == k {
		return
	}
	st.dnsKey = &k
	want := dnsWant{in: a.dnsInput(&st.nm)}
	if addrs := overlayAddrs(st.nm.self); len(addrs) > 0 {
		want.addr = addrs[0]
	}
	offer(a.dnsCh, want)
}

// dnsInput is what the table of names is built from: every peer of the
// map, this one included.
func (a *Agent) dnsInput(m *netMap) meshdns.Input {
	in := meshdns.Input{Suffix: a.cfg.DNS.Suffix, VNet: m.vnet, Serial: uint32(m.index)}
	if in.VNet == "" {
		in.VNet = a.id.VNet
	}
	overlay := m.overlay
	if !overlay.IsValid() {
		overlay, _ = netip.ParsePrefix(a.id.Overlay)
	}
	if overlay.IsValid() {
		in.Overlays = append(in.Overlays, overlay)
	}
	if m.overlay6.IsValid() {
		in.Overlays = append(in.Overlays, m.overlay6)
	}
	if m.self != nil {
		in.Self = m.self.Name
		in.Hosts = append(in.Hosts, meshdns.Host{Name: m.self.Name, Addrs: overlayAddrs(m.self)})
	}
	for _, p := range m.peers {
		in.Hosts = append(in.Hosts, meshdns.Host{Name: p.Name, Addrs: overlayAddrs(&p)})
	}
	return in
}

// overlayAddrs are a peer's overlay addresses.
func overlayAddrs(p *api.MapPeer) []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{p.OverlayIP, p.OverlayIP6} {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// hostResolver is what points the host's resolver at the server, or nil
// and why there is none.
func (a *Agent) hostResolver() (meshdns.HostResolver, string) {
	if a.cfg.DNS.HostResolver != nil {
		return a.cfg.DNS.HostResolver, ""
	}
	if ok, why := meshdns.ChooseResolver(meshdns.Facts()); !ok {
		return nil, why
	}
	return &meshdns.Resolved{}, ""
}

// dnsLoop serves the names the loop hands it on the overlay address, and
// points the host's resolver at them while it does. A port another
// program holds is reported once and tried again every dnsRetry; the
// agent runs on without names meanwhile.
func (a *Agent) dnsLoop(ctx context.Context) error {
	log := a.cfg.Logger.With("component", "dns", "peer", a.id.Name)
	srv := meshdns.NewServer(a.cfg.Logger)
	hr, why := a.hostResolver()
	iface := a.eng.Name()
	retry := clock.Stopped(a.clk)
	defer retry.Stop()
	var (
		want     dnsWant
		table    *meshdns.Table
		ln       *meshdns.Listener
		resolver []string // the domains the host's resolver sends here; nil: none
		lastErr  string   // the last failure reported, so it is reported once
		hinted   bool
	)
	revert := func() {
		if resolver == nil {
			return
		}
		if err := hr.Revert(iface); err != nil {
			log.Warn("revert the host's resolver", "interface", iface, "err", err)
		}
		resolver = nil
	}
	report := func(msg string, err error, args ...any) {
		if err.Error() != lastErr {
			lastErr = err.Error()
			log.Warn(msg, append(args, "err", err, "retry_every", dnsRetry)...)
		}
		retry.Reset(dnsRetry)
	}
	defer func() {
		revert()
		if ln != nil {
			ln.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case want = <-a.dnsCh:
			table = meshdns.Build(want.in)
			srv.Set(table)
		case <-retry.C():
		}
		if ln != nil && ln.Addr().Addr() != want.addr {
			revert()
			ln.Close()
			ln = nil
		}
		if ln == nil && want.addr.IsValid() {
			l, err := srv.Listen(netip.AddrPortFrom(want.addr, uint16(a.cfg.DNS.Port)))
			if errors.Is(err, meshdns.ErrPortInUse) {
				report("names are not served: another program holds the DNS port on the overlay address (a resolver listening on every address, like dnsmasq without bind-interfaces?); the mesh runs on without names", err)
				continue
			}
			if errors.Is(err, meshdns.ErrPortDenied) {
				report("names are not served: the agent may not bind the DNS port (give it CAP_NET_BIND_SERVICE, or turn names off with --dns=false); the mesh runs on without names", err)
				continue
			}
			if err != nil {
				report("names are not served yet", err)
				continue
			}
			ln, lastErr = l, ""
			log.Info("serving names", "names", "*."+want.in.VNet+"."+want.in.Suffix, "addr", ln.Addr())
		}
		if ln == nil {
			continue
		}
		domains := table.Domains()
		if hr == nil {
			if !hinted {
				hinted = true
				log.Info("the host's resolver is not pointed at the mesh's names: "+why, "to_use_them", meshdns.ManualHint(iface, want.addr, a.cfg.DNS.Suffix))
			}
			continue
		}
		if slices.Equal(domains, resolver) {
			continue
		}
		if err := hr.Set(iface, want.addr, domains); err != nil {
			resolver = []string{} // part of it may be set: revert on the way out
			report("the host's resolver is not pointed at the mesh's names", err, "hint", meshdns.ManualHint(iface, want.addr, a.cfg.DNS.Suffix))
			continue
		}
		resolver, lastErr = domains, ""
		log.Info("the host's resolver sends the mesh's names here", "interface", iface, "domains", domains)
	}
}

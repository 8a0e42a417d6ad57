package peer

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/gateway"
)

// KeepaliveSeconds is the WireGuard persistent keepalive every peer uses, so
// NAT bindings on the path stay open.
const KeepaliveSeconds = 25

// netMap is the network map as the agent last received it.
type netMap struct {
	index   uint64
	vnet    string
	overlay netip.Prefix
	// overlay6 is the vnet's IPv6 overlay when it is dual-stack.
	overlay6     netip.Prefix
	self         *api.MapPeer
	peers        map[string]api.MapPeer // by peer ID
	coordinators []string
	stunServers  []string
	gossipKeys   [][]byte
	// policy is the vnet's access policy in force (nil: none), as the
	// last full map carried it.
	policy []byte
}

// apply folds one update into m.
func (m *netMap) apply(u *api.MapUpdate) {
	if u.Full || m.peers == nil {
		m.peers = map[string]api.MapPeer{}
	}
	if u.Full {
		m.policy = u.Policy
	}
	if u.Index > m.index {
		m.index = u.Index
	}
	if u.VNet != "" {
		m.vnet = u.VNet
	}
	if p, err := netip.ParsePrefix(u.Overlay); err == nil {
		m.overlay = p
		m.overlay6, _ = netip.ParsePrefix(u.Overlay6) // sent with Overlay; absent: none
	}
	if u.Self != nil {
		self := *u.Self
		m.self = &self
	}
	for _, p := range u.Peers {
		if m.self != nil && p.ID == m.self.ID { // a shared delta names us among the others
			self := p
			m.self = &self
			continue
		}
		m.peers[p.ID] = p
	}
	for _, id := range u.Removed {
		delete(m.peers, id)
	}
	if len(u.Coordinators) > 0 {
		m.coordinators = u.Coordinators
	}
	if len(u.STUNServers) > 0 {
		m.stunServers = u.STUNServers
	}
	if len(u.GossipKeys) > 0 {
		m.gossipKeys = u.GossipKeys
	}
}

// gatewayOf is one announcement of a prefix.
type gatewayOf struct {
	name     string
	peerID   string // empty for this peer itself
	priority int
	drained  bool
	// why explains the choice: every candidate in order with its state.
	why string
	// all are the candidates, best first, with their states.
	all []api.Gateway
}

// activeGateways picks, for every announced prefix, the one gateway that
// carries it by the rule both planes share (gateway.Choose): the highest
// priority among the healthy ones, drained gateways only when no undrained
// healthy one is left, ties broken by name so that every peer picks the
// same. healthy (by peer ID) nil means all others are healthy; selfHealthy
// says whether this peer may carry its own routes. lastResort (nil: none)
// names the peers that are not healthy only because they are held down
// after coming back: when no gateway of a prefix is healthy, those count as
// healthy for it, since holding a route with nobody only lengthens an
// outage.
func activeGateways(m *netMap, healthy func(peerID string) bool, selfHealthy bool, lastResort func(peerID string) bool) map[netip.Prefix]gatewayOf {
	cands := map[netip.Prefix][]gatewayOf{}
	add := func(p *api.MapPeer, id string) {
		for _, r := range p.Routes {
			pfx, err := netip.ParsePrefix(r.Prefix)
			if err != nil {
				continue
			}
			cands[pfx.Masked()] = append(cands[pfx.Masked()], gatewayOf{name: p.Name, peerID: id, priority: r.Priority, drained: p.Drained})
		}
	}
	if m.self != nil {
		add(m.self, "")
	}
	for id, p := range m.peers {
		add(&p, id)
	}
	out := map[netip.Prefix]gatewayOf{}
	for pfx, gs := range cands {
		cs := make([]gateway.Candidate, len(gs))
		for i, g := range gs {
			ok := g.peerID == "" && selfHealthy || g.peerID != "" && (healthy == nil || healthy(g.peerID))
			cs[i] = gateway.Candidate{Name: g.name, Priority: g.priority, Healthy: ok, Drained: g.drained}
		}
		i, why := gateway.Choose(cs)
		if i < 0 && lastResort != nil {
			for k, g := range gs {
				if g.peerID != "" && lastResort(g.peerID) {
					cs[k].Healthy = true
				}
			}
			if i, why = gateway.Choose(cs); i >= 0 {
				why = "held down after coming back, but no other gateway is healthy; " + why
			}
		}
		if i >= 0 {
			g := gs[i]
			g.why = why
			_, sts := gateway.Assess(cs)
			for _, k := range sortedCandidates(cs) {
				g.all = append(g.all, api.Gateway{Name: cs[k].Name, Priority: cs[k].Priority, Healthy: cs[k].Healthy, Drained: cs[k].Drained,
					State: string(sts[k].State), Reason: sts[k].Reason})
			}
			out[pfx] = g
		}
	}
	return out
}

// desired is the whole configuration the agent wants from a map.
type desired struct {
	wg     *wgcfg.Config
	router *router.Config
	routes []api.LocalRoute // for status
	names  map[wgcfg.Key]string
	// addrs are each peer's overlay addresses among its AllowedIPs (the
	// rest are the routes it carries), for status.
	addrs map[wgcfg.Key][]netip.Prefix
}

// buildOptions are the local facts compute needs besides the map.
type buildOptions struct {
	privateKey wgcfg.Key
	listenPort uint16
	mtu        int
	// localNets are the prefixes of this host's own interfaces, used to
	// prefer a peer's endpoint on a shared LAN.
	localNets []netip.Prefix
	snat      bool
	healthy   func(peerID string) bool
	// selfUnhealthy: this gateway's LAN check fails. (Being drained is in
	// the map: activeGateways reads it from self.)
	selfUnhealthy bool
	// endpointPick rotates through a peer's endpoints when the chosen one
	// does not complete a handshake: peer ID -> offset.
	endpointPick map[string]int
	// noEndpoints leaves endpoints out: the bind picks each peer's path.
	noEndpoints bool
	// active, when not nil, is the failover core's choice of gateways
	// (decide); healthy and selfUnhealthy are then not used.
	active map[netip.Prefix]gatewayOf
}

// compute turns the map into the WireGuard and OS configuration: one
// WireGuard peer per other peer with its overlay address, each announced
// prefix at its active gateway, routes for the vnet overlay and every prefix
// this peer does not announce itself.
func compute(m *netMap, o buildOptions) *desired {
	d := &desired{
		wg:     &wgcfg.Config{PrivateKey: o.privateKey, ListenPort: o.listenPort},
		router: &router.Config{MTU: o.mtu, SNAT: o.snat},
		names:  map[wgcfg.Key]string{},
		addrs:  map[wgcfg.Key][]netip.Prefix{},
	}
	if m.self == nil {
		return d
	}
	d.router.Addrs = hostPrefixes(m.self)
	for _, o := range []netip.Prefix{m.overlay, m.overlay6} {
		if o.IsValid() {
			d.router.Routes = append(d.router.Routes, o)
		}
	}
	if len(m.self.Routes) > 0 {
		d.router.Forward = true
		d.router.ClampMSS = true
		d.router.Forward6 = announcesIPv6(m.self)
	}
	index := map[string]int{} // peer ID -> position in d.wg.Peers
	ids := make([]string, 0, len(m.peers))
	for id := range m.peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		p := m.peers[id]
		key, err := wgcfg.ParseKey(p.PublicKey)
		if err != nil {
			continue
		}
		allowed := hostPrefixes(&p)
		if len(allowed) == 0 {
			continue
		}
		index[id] = len(d.wg.Peers)
		var ep netip.AddrPort
		if !o.noEndpoints {
			ep = pickEndpoint(p.Endpoints, o.localNets, o.endpointPick[id])
		}
		device := p.Role == api.RoleDevice
		if device {
			ep = netip.AddrPort{} // learned from its packets
		}
		d.wg.Peers = append(d.wg.Peers, wgcfg.Peer{
			PublicKey:           key,
			Endpoint:            ep,
			AllowedIPs:          allowed,
			PersistentKeepalive: KeepaliveSeconds,
			Roaming:             device,
		})
		d.names[key] = p.Name
		d.addrs[key] = slices.Clone(allowed)
	}
	active := o.active
	if active == nil {
		active = activeGateways(m, o.healthy, !o.selfUnhealthy, nil)
	}
	prefixes := make([]netip.Prefix, 0, len(active))
	for pfx := range active {
		prefixes = append(prefixes, pfx)
	}
	slices.SortFunc(prefixes, func(a, b netip.Prefix) int { return cmp.Compare(a.String(), b.String()) })
	for _, pfx := range prefixes {
		g := active[pfx]
		d.routes = append(d.routes, api.LocalRoute{Prefix: pfx.String(), ActiveGateway: g.name, Local: g.peerID == "" || announces(m.self, pfx), Why: g.why, Gateways: g.all})
		if announces(m.self, pfx) {
			continue // our own LAN: never route it into the tunnel
		}
		i, ok := index[g.peerID]
		if !ok {
			continue
		}
		d.wg.Peers[i].AllowedIPs = append(d.wg.Peers[i].AllowedIPs, pfx)
		if !m.inOverlay(pfx) {
			d.router.Routes = append(d.router.Routes, pfx)
		}
	}
	d.wg.Normalize()
	return d
}

// hostPrefixes are a peer's overlay addresses as host prefixes (/32 and,
// in a dual-stack vnet, /128).
func hostPrefixes(p *api.MapPeer) []netip.Prefix {
	var out []netip.Prefix
	if ip, err := netip.ParseAddr(p.OverlayIP); err == nil {
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		if ip6, err := netip.ParseAddr(p.OverlayIP6); err == nil && ip6.Is6() {
			out = append(out, netip.PrefixFrom(ip6, ip6.BitLen()))
		}
	}
	return out
}

// inOverlay reports whether pfx overlaps one of the vnet's overlays.
func (m *netMap) inOverlay(pfx netip.Prefix) bool {
	return m.overlay.IsValid() && m.overlay.Overlaps(pfx) || m.overlay6.IsValid() && m.overlay6.Overlaps(pfx)
}

// announcesIPv6 reports whether p announces an IPv6 route.
func announcesIPv6(p *api.MapPeer) bool {
	for _, r := range p.Routes {
		if q, err := netip.ParsePrefix(r.Prefix); err == nil && q.Addr().Is6() {
			return true
		}
	}
	return false
}

func announces(p *api.MapPeer, pfx netip.Prefix) bool {
	for _, r := range p.Routes {
		if q, err := netip.ParsePrefix(r.Prefix); err == nil && q.Masked() == pfx {
			return true
		}
	}
	return false
}

// pickEndpoint chooses which of a peer's reported endpoints to send to: one
// on a network this host is attached to first (same LAN), then public
// addresses, then the rest; offset rotates through that order.
func pickEndpoint(eps []string, localNets []netip.Prefix, offset int) netip.AddrPort {
	var parsed []netip.AddrPort
	for _, e := range eps {
		a, err := netip.ParseAddrPort(e)
		if err != nil || !a.Addr().Is4() && !a.Addr().Is6() {
			continue
		}
		parsed = append(parsed, a)
	}
	if len(parsed) == 0 {
		return netip.AddrPort{}
	}
	ranked := bind.RankDirect(parsed, localNets)
	return ranked[offset%len(ranked)]
}

// agents counts the other peers that run the agent (and so gossip and
// answer probes): every peer but the devices.
func (m *netMap) agents() int {
	n := 0
	for _, p := range m.peers {
		if p.Role != api.RoleDevice {
			n++
		}
	}
	return n
}

// sortedCandidates returns the indexes of cs, best first (gateway.Compare).
func sortedCandidates(cs []gateway.Candidate) []int {
	order := make([]int, len(cs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return gateway.Compare(cs[i], cs[j]) })
	return order
}

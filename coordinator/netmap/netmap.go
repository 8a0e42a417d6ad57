// Package netmap computes what each peer is told — its network map, whole or
// as a delta — and the route table views (list, lookup, overlaps) from the
// state tables. It is pure: no locks, no I/O.
package netmap

import (
	"cmp"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/gateway"
)

// Peer converts a peer to its map form.
func Peer(p *state.Peer) api.MapPeer {
	m := api.MapPeer{
		ID: p.ID, Name: p.Name, Role: p.Role, PublicKey: p.PublicKey,
		OverlayIP: p.OverlayIP.String(), Endpoints: slices.Clone(p.Endpoints),
		Tags: slices.Clone(p.Tags), Drained: p.Drained, Relay: p.Relay,
	}
	if p.OverlayIP6.IsValid() {
		m.OverlayIP6 = p.OverlayIP6.String()
	}
	for _, r := range p.Routes {
		m.Routes = append(m.Routes, api.Route{Prefix: r.Prefix.String(), Priority: r.Priority})
	}
	return m
}

// Coordinators lists the coordinators' API URLs, sorted by name.
func Coordinators(t *state.Tables) []string {
	names := make([]string, 0, len(t.Coordinators))
	for n := range t.Coordinators {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, t.Coordinators[n].APIURL)
	}
	return out
}

// STUNServers lists the coordinators' STUN addresses, sorted.
func STUNServers(t *state.Tables) []string {
	var out []string
	for _, c := range t.Coordinators {
		if c.STUNAddr != "" {
			out = append(out, c.STUNAddr)
		}
	}
	sort.Strings(out)
	return out
}

// RelayURLs lists the TURN URLs of the coordinators' built-in relays for
// a peer of vnet: turn:HOST:PORT?transport=udp on the STUN address of every
// coordinator that allocates relayed addresses, then
// turns:HOST:PORT?transport=tcp for every one that serves TURN over TLS,
// each group in the vnet's order of coordinators (RelayOrder). Peers take
// the first relay that answers in time, so the peers of a vnet meet on one
// relay, whose fast path carries their traffic without a second hop, and
// different vnets spread over the coordinators. Coordinators that report
// no relay (older versions, relaying off) are left out.
func RelayURLs(t *state.Tables, vnet string) (udp, tls []string) {
	names := make([]string, 0, len(t.Coordinators))
	for n := range t.Coordinators {
		names = append(names, n)
	}
	for _, n := range RelayOrder(names, vnet) {
		c := t.Coordinators[n]
		if c.RelayIP == "" {
			continue
		}
		if c.STUNAddr != "" {
			udp = append(udp, "turn:"+c.STUNAddr+"?transport=udp")
		}
		if c.RelayTLSAddr != "" {
			tls = append(tls, "turns:"+c.RelayTLSAddr+"?transport=tcp")
		}
	}
	return udp, tls
}

// RelayOrder sorts coordinator names for vnet by rendezvous hashing: the
// same order on every coordinator, a different first choice for different
// vnets, and only the vnets whose first choice it was move when a
// coordinator comes or goes.
func RelayOrder(names []string, vnet string) []string {
	score := func(n string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(vnet))
		h.Write([]byte{0})
		h.Write([]byte(n))
		return h.Sum64()
	}
	out := slices.Clone(names)
	slices.SortFunc(out, func(a, b string) int {
		if c := cmp.Compare(score(b), score(a)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return out
}

// RelayIPs lists the addresses the coordinators' relays allocate relayed
// addresses on: the only addresses a relay forwards to.
func RelayIPs(t *state.Tables) []netip.Addr {
	var out []netip.Addr
	for _, c := range t.Coordinators {
		if a, err := netip.ParseAddr(c.RelayIP); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func cloneKeys(k [][]byte) [][]byte {
	out := make([][]byte, len(k))
	for i := range k {
		out[i] = slices.Clone(k[i])
	}
	return out
}

// Full is the whole map for peer selfID at index: the peers of its vnet it
// may see under the vnet's policy (all of them when there is none). It is
// nil if the peer no longer exists.
func Full(t *state.Tables, index uint64, selfID string) *api.MapUpdate {
	self, ok := t.Peers[selfID]
	if !ok {
		return nil
	}
	return FullIn(t, index, selfID, NewView(t, index, self.VNet))
}

// Delta is the update for peer selfID given the peers that changed since its
// last index and whether the cluster-wide part changed: the vnet's shared
// delta with the peer's own entry moved into Self. It ignores the vnet's
// policy: DeltaIn applies it. It is nil when nothing
// concerns the peer, and has SelfRemoved when the peer is gone.
func Delta(t *state.Tables, index uint64, selfID string, changed []string, global bool) *api.MapUpdate {
	self, ok := t.Peers[selfID]
	if !ok {
		return &api.MapUpdate{Index: index, SelfRemoved: true}
	}
	u, _ := VNetDelta(t, index, self.VNet, changed, global)
	if u == nil {
		return nil
	}
	for i, p := range u.Peers {
		if p.ID == selfID {
			sp := p
			u.Self = &sp
			u.Peers = append(u.Peers[:i], u.Peers[i+1:]...)
			break
		}
	}
	return u
}

// VNetDelta is the update every watcher of vnet gets for the peers that
// changed since its last index: computed and encoded once, shared by all.
// Changed peers of the vnet (a receiver's own entry among them) are
// upserts; the others are removals, also returned as a set so the removed
// peer's own stream can be ended. It is nil when nothing concerns the vnet.
func VNetDelta(t *state.Tables, index uint64, vnet string, changed []string, global bool) (*api.MapUpdate, map[string]bool) {
	u := &api.MapUpdate{Index: index}
	var removed map[string]bool
	any := false
	if global {
		u.GossipKeys = t.VNetGossipKeys(vnet)
		u.Coordinators = Coordinators(t)
		u.STUNServers = STUNServers(t)
		any = true
	}
	for _, id := range changed {
		if p, ok := t.Peers[id]; ok {
			if p.VNet == vnet {
				u.Peers = append(u.Peers, Peer(p))
				any = true
			}
			continue
		}
		u.Removed = append(u.Removed, id)
		if removed == nil {
			removed = map[string]bool{}
		}
		removed[id] = true
		any = true
	}
	if !any {
		return nil, nil
	}
	return u, removed
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Healthy reports whether a gateway counts as healthy from the coordinators'
// view.
type Healthy func(p *state.Peer) bool

type routeKey struct {
	vnet   string
	prefix netip.Prefix
}

// gateways returns, per (vnet, prefix), its gateways sorted best first by
// gateway.Compare (healthy and undrained, then healthy and drained, then
// unhealthy; then higher priority, then name), so the active one, if any,
// is first.
func gateways(t *state.Tables, healthy Healthy) map[routeKey][]api.Gateway {
	out := map[routeKey][]api.Gateway{}
	for _, p := range t.Peers {
		for _, r := range p.Routes {
			k := routeKey{p.VNet, r.Prefix}
			out[k] = append(out[k], api.Gateway{Name: p.Name, Priority: r.Priority, Healthy: healthy(p), Drained: p.Drained})
		}
	}
	for _, gs := range out {
		slices.SortFunc(gs, func(a, b api.Gateway) int { return gateway.Compare(candidate(a), candidate(b)) })
		cs := make([]gateway.Candidate, len(gs))
		for i, g := range gs {
			cs[i] = candidate(g)
		}
		_, sts := gateway.Assess(cs)
		for i := range gs {
			gs[i].State, gs[i].Reason = string(sts[i].State), sts[i].Reason
		}
	}
	return out
}

// candidate is a gateway as the coordinators see it: healthy while it is
// connected (it holds its watch), offline otherwise; they cannot tell a
// connected gateway that fails its health checks from a sound one.
func candidate(g api.Gateway) gateway.Candidate {
	return gateway.Candidate{Name: g.Name, Priority: g.Priority, Healthy: g.Healthy, Offline: !g.Healthy, Drained: g.Drained}
}

// GatewayStates is, by peer ID, the state of every gateway across the
// routes it announces (gateway.Summary).
func GatewayStates(t *state.Tables, healthy Healthy) map[string]gateway.State {
	byName := map[[2]string][]gateway.State{}
	for k, gs := range gateways(t, healthy) {
		for _, g := range gs {
			key := [2]string{k.vnet, g.Name}
			byName[key] = append(byName[key], gateway.State(g.State))
		}
	}
	out := map[string]gateway.State{}
	for id, p := range t.Peers {
		if s := gateway.Summary(byName[[2]string{p.VNet, p.Name}]); s != "" {
			out[id] = s
		}
	}
	return out
}

// active names the gateway that carries a route by the rule the peers
// apply too (gateway.Choose), or "" when none can.
func active(gs []api.Gateway) string {
	cs := make([]gateway.Candidate, len(gs))
	for i, g := range gs {
		cs[i] = candidate(g)
	}
	if i, _ := gateway.Choose(cs); i >= 0 {
		return gs[i].Name
	}
	return ""
}

// Routes lists every announced (vnet, prefix) with its gateways, sorted by
// vnet then prefix. A vnet filter of "" lists all.
func Routes(t *state.Tables, vnet string, healthy Healthy) []api.RouteInfo {
	gw := gateways(t, healthy)
	out := make([]api.RouteInfo, 0, len(gw))
	for k, gs := range gw {
		if vnet != "" && k.vnet != vnet {
			continue
		}
		out = append(out, api.RouteInfo{VNet: k.vnet, Prefix: k.prefix.String(), ActiveGateway: active(gs), Gateways: gs})
	}
	slices.SortFunc(out, func(a, b api.RouteInfo) int {
		if a.VNet != b.VNet {
			return compare(a.VNet, b.VNet)
		}
		return comparePrefix(netip.MustParsePrefix(a.Prefix), netip.MustParsePrefix(b.Prefix))
	})
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Lookup finds the longest announced prefix of vnet containing ip.
func Lookup(t *state.Tables, vnet string, ip netip.Addr, healthy Healthy) api.LookupResult {
	return LookupPrefix(t, vnet, netip.PrefixFrom(ip, ip.BitLen()), ip.String(), healthy)
}

// LookupPrefix is the one rule route lookup answers by, for an address
// (q a single-address prefix) or a CIDR. In vnet, the routes covering q
// (announced prefixes that contain all of q) are listed longest first,
// and the longest of them is the answer: its prefix, its active gateway
// and why, its gateways with their states. For a CIDR, the announced
// prefixes inside it (more specific than q) are listed too, since part of
// q goes to each. query is what the user asked, as they wrote it.
func LookupPrefix(t *state.Tables, vnet string, q netip.Prefix, query string, healthy Healthy) api.LookupResult {
	q = q.Masked()
	res := api.LookupResult{IP: query, VNet: vnet, Gateways: []api.Gateway{}}
	if !q.IsSingleIP() {
		res.Network = q.String()
	}
	for k, gs := range gateways(t, healthy) {
		if k.vnet != vnet || k.prefix.Addr().Is4() != q.Addr().Is4() {
			continue
		}
		ri := api.RouteInfo{VNet: k.vnet, Prefix: k.prefix.String(), ActiveGateway: active(gs), Gateways: gs}
		switch {
		case k.prefix.Bits() <= q.Bits() && k.prefix.Contains(q.Addr()):
			res.Covering = append(res.Covering, ri)
		case k.prefix.Bits() > q.Bits() && q.Contains(k.prefix.Addr()):
			res.Inside = append(res.Inside, ri)
		}
	}
	slices.SortFunc(res.Covering, func(a, b api.RouteInfo) int {
		return netip.MustParsePrefix(b.Prefix).Bits() - netip.MustParsePrefix(a.Prefix).Bits()
	})
	slices.SortFunc(res.Inside, func(a, b api.RouteInfo) int {
		return comparePrefix(netip.MustParsePrefix(a.Prefix), netip.MustParsePrefix(b.Prefix))
	})
	switch {
	case len(res.Covering) > 0:
		best := res.Covering[0]
		res.Prefix = &best.Prefix
		res.Gateways = best.Gateways
		res.ActiveGateway = best.ActiveGateway
		res.Why = "no healthy gateway"
		for _, g := range best.Gateways {
			if g.Name == best.ActiveGateway {
				res.Why = g.State + ": " + g.Reason
			}
		}
	case len(res.Inside) > 0:
		res.Why = "no route covers all of it; routes inside it are listed"
	default:
		res.Why = "no route"
	}
	return res
}

// LookupAll is LookupPrefix in every vnet, by name, keeping the vnets
// where a route covers q or lies inside it.
func LookupAll(t *state.Tables, q netip.Prefix, query string, healthy Healthy) []api.LookupResult {
	names := make([]string, 0, len(t.VNets))
	for n := range t.VNets {
		names = append(names, n)
	}
	slices.Sort(names)
	out := []api.LookupResult{}
	for _, n := range names {
		if r := LookupPrefix(t, n, q, query, healthy); len(r.Covering) > 0 || len(r.Inside) > 0 {
			out = append(out, r)
		}
	}
	return out
}

// Overlaps lists every pair of distinct announced prefixes that overlap,
// within a vnet or across vnets. Inside one vnet it says which prefix is
// the more specific (longest prefix match gives it the addresses it
// covers) and, for each gateway announcing it, whether its join token
// lists that exact prefix: a gateway that announces a prefix inside
// another gateway's route on the strength of a wider allowed route is
// flagged Unauthorized.
func Overlaps(t *state.Tables) []api.Overlap {
	by := map[routeKey][]*state.Peer{}
	var all []routeKey
	for _, p := range t.Peers {
		for _, r := range p.Routes {
			k := routeKey{p.VNet, r.Prefix}
			if by[k] == nil {
				all = append(all, k)
			}
			by[k] = append(by[k], p)
		}
	}
	slices.SortFunc(all, func(a, b routeKey) int {
		if a.vnet != b.vnet {
			return compare(a.vnet, b.vnet)
		}
		return comparePrefix(a.prefix, b.prefix)
	})
	out := []api.Overlap{}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			a, b := all[i], all[j]
			if !a.prefix.Overlaps(b.prefix) {
				continue
			}
			o := api.Overlap{
				A:        api.RoutePlace{VNet: a.vnet, Prefix: a.prefix.String()},
				B:        api.RoutePlace{VNet: b.vnet, Prefix: b.prefix.String()},
				SameVNet: a.vnet == b.vnet,
			}
			if o.SameVNet && a.prefix.Bits() != b.prefix.Bits() {
				wide, narrow := a, b
				o.MoreSpecific = "b"
				if a.prefix.Bits() > b.prefix.Bits() {
					wide, narrow = b, a
					o.MoreSpecific = "a"
				}
				o.SpecificGateways, o.Unauthorized = specificGateways(by[narrow], by[wide], narrow.prefix)
			}
			out = append(out, o)
		}
	}
	return out
}

// specificGateways describes the gateways that announce narrow, a prefix
// strictly inside one that the gateways in wide announce, sorted by name;
// unauthorized says one of them has no exact allowance for narrow while
// another gateway announces the wider prefix (the rule joins are held to:
// a gateway may nest routes inside its own).
func specificGateways(narrow, wide []*state.Peer, prefix netip.Prefix) (gws []api.OverlapGateway, unauthorized bool) {
	for _, p := range narrow {
		g := api.OverlapGateway{Name: p.Name, AllowedExactly: slices.Contains(p.AllowRoutes, prefix)}
		if !g.AllowedExactly && slices.ContainsFunc(wide, func(q *state.Peer) bool { return q != p }) {
			unauthorized = true
		}
		gws = append(gws, g)
	}
	slices.SortFunc(gws, func(a, b api.OverlapGateway) int { return compare(a.Name, b.Name) })
	return gws, unauthorized
}

package netmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Device is the configuration of device id (a peer of role device, see
// state.AddDevice) at index: one WireGuard peer for every agent of its
// vnet that its vnet's policy lets it see (other devices are left out:
// neither side would know where to find the other), each with its overlay
// address and its best public endpoint, and each route given to the
// gateway that is active for it now (healthy says which gateways count as
// healthy). want narrows the routes to those subnets, each given to the
// gateway of the longest announced route that covers it; empty means
// every route of the vnet. A route whose gateway the device may not see,
// or that has no active gateway, is left out and listed in Skipped.
func Device(t *state.Tables, index uint64, id string, want []netip.Prefix, healthy Healthy) (*api.DeviceConfig, error) {
	self, ok := t.Peers[id]
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "peer %q does not exist", id)
	}
	m := Full(t, index, id)
	out := &api.DeviceConfig{Peers: []api.DevicePeer{}, Routes: []api.DeviceRoute{}}
	if v, ok := t.VNets[self.VNet]; ok {
		out.Overlay = v.Overlay.String()
	}
	visible := map[string]int{} // name -> index in out.Peers
	peers := slices.Clone(m.Peers)
	slices.SortFunc(peers, func(a, b api.MapPeer) int { return strings.Compare(a.Name, b.Name) })
	for _, p := range peers {
		if p.Role == api.RoleDevice {
			continue
		}
		ip, err := netip.ParseAddr(p.OverlayIP)
		if err != nil {
			continue
		}
		allowed := []string{netip.PrefixFrom(ip, ip.BitLen()).String()}
		if ip6, err := netip.ParseAddr(p.OverlayIP6); err == nil {
			allowed = append(allowed, netip.PrefixFrom(ip6, ip6.BitLen()).String())
		}
		visible[p.Name] = len(out.Peers)
		out.Peers = append(out.Peers, api.DevicePeer{Name: p.Name, Role: p.Role, PublicKey: p.PublicKey,
			Endpoint: BestEndpoint(p.Endpoints), AllowedIPs: allowed})
	}
	routes := Routes(t, self.VNet, healthy)
	type assignment struct {
		prefix netip.Prefix
		route  api.RouteInfo
	}
	var todo []assignment
	if len(want) == 0 {
		for _, r := range routes {
			todo = append(todo, assignment{netip.MustParsePrefix(r.Prefix), r})
		}
	} else {
		for _, w := range want {
			r, ok := CoveringRoute(routes, w)
			if !ok {
				return nil, api.Errorf(api.CodeNotFound, "no gateway of vnet %q announces a route that covers %s", self.VNet, w)
			}
			todo = append(todo, assignment{w, r})
		}
	}
	for _, a := range todo {
		i, seen := visible[a.route.ActiveGateway]
		switch {
		case a.route.ActiveGateway == "":
			out.Skipped = append(out.Skipped, fmt.Sprintf("%s: no gateway of %s is healthy now", a.prefix, a.route.Prefix))
		case !seen:
			out.Skipped = append(out.Skipped, fmt.Sprintf("%s: its active gateway %s is hidden from this device by the vnet's policy", a.prefix, a.route.ActiveGateway))
		default:
			out.Peers[i].AllowedIPs = append(out.Peers[i].AllowedIPs, a.prefix.String())
			out.Routes = append(out.Routes, api.DeviceRoute{Prefix: a.prefix.String(), Gateway: a.route.ActiveGateway})
		}
	}
	return out, nil
}

// CoveringRoute is the longest route of routes (of one vnet) that covers
// p, as longest prefix match would pick it.
func CoveringRoute(routes []api.RouteInfo, p netip.Prefix) (api.RouteInfo, bool) {
	var best api.RouteInfo
	bestBits := -1
	for _, r := range routes {
		q, err := netip.ParsePrefix(r.Prefix)
		if err != nil || q.Bits() > p.Bits() || !q.Contains(p.Addr()) {
			continue
		}
		if q.Bits() > bestBits {
			best, bestBits = r, q.Bits()
		}
	}
	return best, bestBits >= 0
}

// BestEndpoint picks the endpoint a device should send to among a peer's
// reported ones ("ip:port"): a public IPv4 address first (a device is
// rarely on the peer's LAN, and IPv4 works on more networks), then a public
// IPv6 one, then a private or shared address (a lab, or a device on the
// same site); the first in the peer's order within each rank. Loopback,
// link-local, multicast and unspecified addresses are never picked; "" when
// none is left.
func BestEndpoint(eps []string) string {
	best, bestRank := "", 0
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		if err != nil || ap.Port() == 0 {
			continue
		}
		a := ap.Addr().Unmap()
		rank := 0
		switch {
		case !a.IsGlobalUnicast() || a.IsLinkLocalUnicast():
			continue
		case a.Is4() && !a.IsPrivate() && !cgnat.Contains(a):
			rank = 4
		case a.Is6() && !a.IsPrivate():
			rank = 3
		case a.Is4():
			rank = 2
		default:
			rank = 1
		}
		if rank > bestRank {
			best, bestRank = netip.AddrPortFrom(a, ap.Port()).String(), rank
		}
	}
	return best
}

// cgnat is the shared address space of carrier-grade NAT (RFC 6598): not
// reachable from the internet.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

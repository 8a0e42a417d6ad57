package peer

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

// receiverRules are the rules of the vnet's policy that decide what may
// reach this peer (or, on a gateway, its LAN) through the mesh; nil when
// the vnet has no policy. The directory they resolve against is this
// peer's map: it holds every peer that may reach this one (the
// coordinators leave out only peers this one may neither reach nor be
// reached by). A policy this version cannot read lets nothing new in.
// Whatever the policy, the mesh's own traffic to this peer passes: health
// gossip and probes from the vnet's overlay to control (ports on this
// peer's overlay address), without which failover would stop.
func receiverRules(m *netMap, control []uint16) []policy.AddrRule {
	if m.policy == nil || m.self == nil {
		return nil
	}
	rules := []policy.AddrRule{}
	if self := hostPrefixes(m.self); len(self) > 0 && m.overlay.IsValid() && len(control) > 0 {
		src := []netip.Prefix{m.overlay}
		if m.overlay6.IsValid() {
			src = append(src, m.overlay6)
		}
		r := policy.AddrRule{Rule: -1, Src: src, Dst: self, Proto: policy.ProtoTCP | policy.ProtoUDP}
		for _, port := range slices.Sorted(slices.Values(control)) {
			r.Ports = append(r.Ports, policy.PortRange{First: port, Last: port})
		}
		rules = append(rules, r)
	}
	p, err := policy.Decode(m.policy)
	if err != nil {
		return rules
	}
	peers := make([]policy.Peer, 0, len(m.peers)+1)
	peers = append(peers, directoryPeer(*m.self))
	for _, mp := range m.peers {
		peers = append(peers, directoryPeer(mp))
	}
	return append(rules, p.ReceiverRules(policy.NewDirectory(peers), m.self.Name)...)
}

// directoryPeer is a map peer as the policy sees it.
func directoryPeer(mp api.MapPeer) policy.Peer {
	p := policy.Peer{Name: mp.Name, Tags: mp.Tags}
	p.Addrs = overlayAddrs(&mp)
	for _, r := range mp.Routes {
		if pf, err := netip.ParsePrefix(r.Prefix); err == nil {
			p.Subnets = append(p.Subnets, pf)
		}
	}
	return p
}

// policyInputs fingerprints what receiverRules reads, so the engine gets
// new rules only when they may differ (a new rule set makes every flow be
// judged again).
func policyInputs(m *netMap) string {
	if m.policy == nil || m.self == nil {
		return ""
	}
	var b strings.Builder
	b.Write(m.policy)
	ps := []api.MapPeer{*m.self}
	for _, p := range m.peers {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(x, y api.MapPeer) int { return strings.Compare(x.ID, y.ID) })
	for _, p := range ps {
		b.WriteString("\x00" + p.Name + "\x01" + p.OverlayIP + "\x01" + p.OverlayIP6 + "\x01" + strings.Join(p.Tags, ",") + "\x01")
		for _, r := range p.Routes {
			b.WriteString(r.Prefix + ",")
		}
	}
	return b.String()
}

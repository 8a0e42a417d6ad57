package coordinator

import (
	"net/netip"
	"strings"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// createVNetCommand turns a vnet request into the command that creates
// it: CreateVNet for one IPv4 overlay (what every version applies), or
// CreateVNetIPv6 when an overlay is IPv6, which needs feature level 4 on
// every coordinator (a coordinator from before it would drop the IPv6
// overlay). It also returns the vnet as the API shows it once created.
func createVNetCommand(req api.CreateVNetRequest, now time.Time, seed []byte) (fsm.MessageType, any, api.VNet) {
	var overlays []string
	for _, o := range strings.Split(req.Overlay, ",") {
		if o = strings.TrimSpace(o); o != "" {
			overlays = append(overlays, o)
		}
	}
	out := api.VNet{Name: req.Name, Overlay: req.Overlay, CreatedAt: now}
	v6 := len(overlays) != 1
	for _, o := range overlays {
		if p, err := netip.ParsePrefix(o); err == nil && p.Addr().Is6() {
			v6 = true
		}
	}
	if !v6 {
		return fsm.CreateVNetType, &fsm.CreateVNet{Name: req.Name, Overlay: req.Overlay, Now: now, GossipSeed: seed}, out
	}
	var v4, v6p string
	for _, o := range overlays {
		if p, err := netip.ParsePrefix(o); err == nil && p.Addr().Is4() {
			v4 = o
		} else {
			v6p = o
		}
	}
	out.Overlay, out.Overlay6 = v4, v6p
	if v4 == "" {
		out.Overlay, out.Overlay6 = v6p, ""
	}
	return fsm.CreateVNetIPv6Type, &fsm.CreateVNetIPv6{Name: req.Name, Overlays: overlays, Now: now, GossipSeed: seed}, out
}

// apiVNet is a vnet as the API lists it.
func apiVNet(v *state.VNet, peers int) api.VNet {
	out := api.VNet{Name: v.Name, Overlay: v.Overlay.String(), CreatedAt: v.CreatedAt, Peers: peers}
	if v.Overlay6.IsValid() {
		out.Overlay6 = v.Overlay6.String()
	}
	return out
}

// gateIPv6 refuses a new peer in a vnet with an IPv6 overlay (vnetOf names
// it, read from the local replica; "" none) while a member of the cluster
// is below the level that knows IPv6 overlays: such a coordinator, added
// after the vnet was created, would give the peer no IPv6 address, and
// its state would differ from the others'.
func (s *Server) gateIPv6(vnetOf func(t *state.Tables) string) error {
	v6 := false
	s.store.Read(func(t *state.Tables, _ uint64) {
		if v, ok := t.VNets[vnetOf(t)]; ok {
			v6 = v.Overlay6.IsValid() || v.Overlay.Addr().Is6()
		}
	})
	if !v6 {
		return nil
	}
	return s.gate(fsm.CreateVNetIPv6Type, "")
}

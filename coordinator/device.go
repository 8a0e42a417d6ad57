package coordinator

import (
	"net/http"
	"net/netip"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/token"
)

// handleExportDevice registers a device (a peer of role device, run by a
// stock WireGuard client) and answers with what its configuration lists
// (netmap.Device): every agent of its vnet it may reach, and each route at
// its active gateway now. The device's private key is never sent here.
func (s *Server) handleExportDevice(w http.ResponseWriter, r *http.Request) {
	var req api.ExportDeviceRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.VNet == "" {
		req.VNet = api.DefaultVNet
	}
	if err := state.ValidName("peer", req.Name); err != nil {
		writeError(w, err)
		return
	}
	if err := state.ValidKey(req.PublicKey); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Routes) > state.MaxRoutes {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "at most %d routes", state.MaxRoutes))
		return
	}
	want := make([]netip.Prefix, 0, len(req.Routes))
	for _, s := range req.Routes {
		p, err := state.ParsePrefix("route", s)
		if err != nil {
			writeError(w, err)
			return
		}
		want = append(want, p)
	}
	// Refuse what cannot work before anything is written: an unknown
	// vnet, a route no gateway covers.
	var precheck error
	h := s.healthy()
	s.store.Read(func(t *state.Tables, _ uint64) {
		if _, ok := t.VNets[req.VNet]; !ok {
			precheck = api.Errorf(api.CodeNotFound, "vnet %q does not exist", req.VNet)
			return
		}
		routes := netmap.Routes(t, req.VNet, h)
		for _, p := range want {
			if _, ok := netmap.CoveringRoute(routes, p); !ok {
				precheck = api.Errorf(api.CodeNotFound, "no gateway of vnet %q announces a route that covers %s (meshd route list --vnet %s)", req.VNet, p, req.VNet)
				return
			}
		}
	})
	if precheck == nil {
		precheck = s.gateIPv6(func(t *state.Tables) string { return req.VNet })
	}
	if precheck != nil {
		writeError(w, precheck)
		return
	}
	spec := state.DeviceSpec{PeerID: token.NewID() + token.NewID(), Name: req.Name, VNet: req.VNet, PublicKey: req.PublicKey, Tags: req.Tags}
	res, err := s.raftApply(r.Context(), fsm.AddDeviceType, &fsm.AddDevice{Spec: spec, Now: s.now()})
	if err != nil {
		writeError(w, err)
		return
	}
	p := res.Peer
	s.log.Info("device added", "vnet", p.VNet, "peer", p.Name, "id", p.ID, "overlay_ip", p.OverlayIP, "by", adminName(r))
	var out *api.DeviceConfig
	now := s.now()
	h = s.healthy()
	s.store.Read(func(t *state.Tables, index uint64) {
		if out, err = netmap.Device(t, index, p.ID, want, h); err == nil {
			out.Peer = peerView(t.Peers[p.ID], false, now)
		}
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, out)
}

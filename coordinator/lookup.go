package coordinator

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// parseLookup reads what route lookup asks for: ?ip=ADDR or ?prefix=CIDR
// (either parameter takes either form). A CIDR need not be masked: the
// routes that matter are those of the network it lies in.
func parseLookup(ip, prefix string) (netip.Prefix, string, error) {
	q := prefix
	if q == "" {
		q = ip
	}
	q = strings.TrimSpace(q)
	if a, err := netip.ParseAddr(q); err == nil {
		if a.Zone() != "" {
			return netip.Prefix{}, "", api.Errorf(api.CodeInvalidArgument, "%q: an address with a zone is not routed through the mesh", q)
		}
		return netip.PrefixFrom(a, a.BitLen()), q, nil
	}
	if p, err := netip.ParsePrefix(q); err == nil {
		return p, q, nil
	}
	return netip.Prefix{}, "", api.Errorf(api.CodeInvalidArgument, "%q is not an IP address or a CIDR (such as 192.168.1.2 or 192.168.2.0/28)", q)
}

// handleLookup answers GET /v1/routes/lookup?ip=ADDR|prefix=CIDR: in one
// vnet (&vnet=NAME, default "default") a LookupResult; with &all_vnets=1 an
// array of them, one for each vnet that has a match.
func (s *Server) handleLookup(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	q, query, err := parseLookup(qv.Get("ip"), qv.Get("prefix"))
	if err != nil {
		writeError(w, err)
		return
	}
	all := qv.Get("all_vnets")
	vnet := qv.Get("vnet")
	if all != "" && all != "0" && all != "false" {
		if vnet != "" {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "give a vnet or all_vnets, not both"))
			return
		}
		var out []api.LookupResult
		h := s.healthy()
		s.store.Read(func(t *state.Tables, _ uint64) { out = netmap.LookupAll(t, q, query, h) })
		writeJSON(w, http.StatusOK, out)
		return
	}
	if vnet == "" {
		vnet = api.DefaultVNet
	}
	var res api.LookupResult
	var known bool
	h := s.healthy()
	s.store.Read(func(t *state.Tables, _ uint64) {
		_, known = t.VNets[vnet]
		res = netmap.LookupPrefix(t, vnet, q, query, h)
	})
	if !known {
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

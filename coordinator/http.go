package coordinator

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/coordinator/ui"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/token"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	read, write := s.adminRead, s.adminWrite
	mux.HandleFunc("GET /v1/health", s.handleHealth)
	mux.HandleFunc("GET /v1/cluster/status", read(s.handleClusterStatus))
	mux.HandleFunc("POST /v1/cluster/transfer-leadership", write(s.handleTransferLeadership))
	mux.HandleFunc("DELETE /v1/cluster/members/{name}", write(s.handleRemoveMember))
	mux.HandleFunc("GET /v1/cluster/versions", read(s.handleClusterVersions))
	mux.HandleFunc("POST /v1/cluster/members", write(s.handleAddMember))
	mux.HandleFunc("POST /v1/cluster/members/{name}/promote", write(s.handlePromoteMember))
	mux.HandleFunc("POST /v1/cluster/transfer-leader", write(s.handleTransferLeader))
	mux.HandleFunc("GET /v1/cluster/snapshot", write(s.handleSnapshot))
	mux.HandleFunc("GET /v1/vnets", read(s.handleListVNets))
	mux.HandleFunc("POST /v1/vnets", write(s.handleCreateVNet))
	mux.HandleFunc("DELETE /v1/vnets/{name}", write(s.handleDeleteVNet))
	mux.HandleFunc("GET /v1/vnets/{name}/policy", read(s.handleGetPolicy))
	mux.HandleFunc("PUT /v1/vnets/{name}/policy", write(s.handleSetPolicy))
	mux.HandleFunc("DELETE /v1/vnets/{name}/policy", write(s.handleDeletePolicy))
	mux.HandleFunc("GET /v1/vnets/{name}/policy/test", read(s.handleTestPolicy))
	mux.HandleFunc("GET /v1/tokens", read(s.handleListTokens))
	mux.HandleFunc("POST /v1/tokens", write(s.handleCreateToken))
	mux.HandleFunc("POST /v1/tokens/{id}/revoke", write(s.handleRevokeToken))
	mux.HandleFunc("POST /v1/tokens/prune", write(s.handlePruneTokens))
	mux.HandleFunc("GET /v1/admin/tokens", read(s.handleListAdminTokens))
	mux.HandleFunc("POST /v1/admin/tokens", write(s.handleCreateAdminToken))
	mux.HandleFunc("POST /v1/admin/tokens/{ref}/revoke", write(s.handleRevokeAdminToken))
	mux.HandleFunc("GET /v1/peers", read(s.handleListPeers))
	mux.HandleFunc("DELETE /v1/peers/{vnet}/{name}", write(s.handleRemovePeer))
	mux.HandleFunc("POST /v1/peers/{vnet}/{name}/drain", write(s.handleDrain(true)))
	mux.HandleFunc("POST /v1/peers/{vnet}/{name}/undrain", write(s.handleDrain(false)))
	mux.HandleFunc("GET /v1/routes", read(s.handleListRoutes))
	mux.HandleFunc("GET /v1/routes/lookup", read(s.handleLookup))
	mux.HandleFunc("GET /v1/routes/overlaps", read(s.handleOverlaps))
	mux.HandleFunc("POST /v1/gossip/rotate-key", write(s.handleRotateGossipKey))
	mux.HandleFunc("POST /v1/join", agentCall(s.handleJoin))
	mux.HandleFunc("GET /v1/netmap", agentCall(s.requirePeer(s.handleNetmap)))
	mux.HandleFunc("POST /v1/heartbeat", agentCall(s.requirePeer(s.handleHeartbeat)))
	mux.HandleFunc("GET /v1/relay", agentCall(s.requirePeer(s.handleRelay)))
	mux.HandleFunc("DELETE /v1/self", agentCall(s.requirePeer(s.handleLeave)))
	mux.HandleFunc("POST /v1/devices", write(s.handleExportDevice))
	mux.HandleFunc("GET /metrics", read(s.handleMetrics))
	mux.HandleFunc("GET /v1/changes", read(s.handleChanges))
	mux.Handle("GET /ui/", ui.Handler())
	mux.HandleFunc("POST /v1/internal/apply", s.handleInternalApply)
	mux.HandleFunc("GET /v1/internal/applied", s.handleInternalApplied)
	mux.HandleFunc("GET /v1/internal/replica", s.handleInternalReplica)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.instrument(mux, withWriteDeadline(s.untilCaughtUp(mux)))
}

// withWriteDeadline gives every request apiWriteTimeout to have its answer
// written: a client that stops reading cannot hold a handler for ever. A
// watch replaces it with a deadline per write.
func withWriteDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(apiWriteTimeout))
		next.ServeHTTP(w, r)
	})
}

// untilCaughtUp answers 503 (so clients move on to another coordinator)
// while this replica is still replaying the log it had on disk: a restarted
// coordinator must not serve an empty or stale state, nor refuse a peer
// credential it has not replayed yet. Cluster status, metrics and internal
// calls are always served.
func (s *Server) untilCaughtUp(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/cluster/status", "/v1/internal/apply", "/v1/internal/applied", "/v1/internal/replica", "/metrics":
		default:
			if !s.caughtUp() {
				writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s is catching up with the cluster log (applied %d of %d)", s.cfg.Name, s.raft.AppliedIndex(), s.bootIndex))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// requirePeer authenticates a peer credential and passes the peer id on.
func (s *Server) requirePeer(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t, err := token.ParseKind(bearer(r), token.KindPeer)
		if err != nil {
			writeError(w, api.Errorf(api.CodeUnauthorized, "peer credential missing or malformed"))
			return
		}
		var ok bool
		s.store.Read(func(tb *state.Tables, _ uint64) {
			p, found := tb.Peers[t.ID]
			ok = found && t.MatchesHash(p.CredHash)
		})
		if !ok {
			writeError(w, api.Errorf(api.CodeUnauthorized, "peer credential rejected: this peer was removed or never joined"))
			return
		}
		h(w, r, t.ID)
	}
}

// decode reads a JSON body of at most api.MaxBodyBytes into v, strictly
// unless the endpoint takes bodies from agents (agentCall).
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
	dec := json.NewDecoder(body)
	if !tolerantBody(r) {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeBodyTooLarge, "request body is larger than %d bytes", api.MaxBodyBytes)
		}
		if errors.Is(err, io.EOF) {
			return api.Errorf(api.CodeInvalidJSON, "request body is empty; a JSON object is required")
		}
		return api.Errorf(api.CodeInvalidJSON, "request body is not valid JSON for this call: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeBodyTooLarge, "request body is larger than %d bytes", api.MaxBodyBytes)
		}
		return api.Errorf(api.CodeInvalidJSON, "request body has data after the JSON object")
	}
	return nil
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"name": s.cfg.Name, "state": s.raft.State().String(), "applied_index": s.store.Index()})
}

func (s *Server) handleClusterStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.clusterStatus(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleListVNets(w http.ResponseWriter, r *http.Request) {
	out := []api.VNet{}
	s.store.Read(func(t *state.Tables, _ uint64) {
		count := map[string]int{}
		for _, p := range t.Peers {
			count[p.VNet]++
		}
		for _, v := range t.VNets {
			out = append(out, apiVNet(v, count[v.Name]))
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCreateVNet(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVNetRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	seed, err := newGossipSeed()
	if err != nil {
		writeError(w, err)
		return
	}
	t, cmd, created := createVNetCommand(req, s.now(), seed)
	if _, err := s.raftApply(r.Context(), t, cmd); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("vnet created", "vnet", req.Name, "overlay", req.Overlay)
	writeJSON(w, http.StatusCreated, created)
}

func (s *Server) handleDeleteVNet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.raftApply(r.Context(), fsm.DeleteVNetType, &fsm.DeleteVNet{Name: name}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("vnet deleted", "vnet", name)
	w.WriteHeader(http.StatusNoContent)
}

func tokenView(t *state.Token, now time.Time) api.Token {
	v := api.Token{
		ID: t.ID, VNet: t.VNet, Uses: t.Uses, UsesLeft: t.UsesLeft, Expires: t.Expires,
		Tags: append([]string{}, t.Tags...), AllowRoutes: []string{}, Ephemeral: t.Ephemeral,
		Revoked: t.Revoked, Expired: !now.Before(t.Expires), CreatedAt: t.CreatedAt,
		MaxPriority: t.MaxPriority, CreatedBy: t.CreatedBy,
	}
	for _, p := range t.AllowRoutes {
		v.AllowRoutes = append(v.AllowRoutes, p.String())
	}
	return v
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	out := []api.Token{}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for _, tok := range t.Tokens {
			out = append(out, tokenView(tok, now))
		}
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	writeJSON(w, http.StatusOK, out)
}

// ParseTTL reads a duration; it also takes whole days ("7d").
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 24 * time.Hour, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, api.Errorf(api.CodeInvalidArgument, "ttl %q is not a duration such as 30m, 12h or 7d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, api.Errorf(api.CodeInvalidArgument, "ttl %q is not a positive duration such as 30m, 12h or 7d", s)
	}
	return d, nil
}

func (s *Server) clusterURLs() []string {
	var urls []string
	s.store.Read(func(t *state.Tables, _ uint64) { urls = netmap.Coordinators(t) })
	if len(urls) == 0 {
		urls = []string{s.apiURL}
	}
	return urls
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateTokenRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.VNet == "" {
		req.VNet = api.DefaultVNet
	}
	if req.Uses == 0 {
		req.Uses = 1
	}
	ttl, err := ParseTTL(req.TTL)
	if err != nil {
		writeError(w, err)
		return
	}
	now := s.now()
	tok, err := token.New(token.KindJoin, token.NewID(), s.pin, s.clusterURLs())
	if err != nil {
		writeError(w, err)
		return
	}
	spec := state.TokenSpec{
		ID: tok.ID, SecretHash: tok.SecretHash(), VNet: req.VNet, Uses: req.Uses,
		Expires: now.Add(ttl), Tags: req.Tags, AllowRoutes: req.AllowRoutes, Ephemeral: req.Ephemeral,
		MaxPriority: req.MaxPriority, CreatedBy: adminName(r),
	}
	if _, err := s.raftApply(r.Context(), fsm.CreateTokenType, &fsm.CreateToken{Spec: spec, Now: now}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("join token created", "id", tok.ID, "vnet", req.VNet, "uses", req.Uses, "expires", spec.Expires, "by", spec.CreatedBy)
	writeJSON(w, http.StatusCreated, api.CreateTokenResponse{Token: tok.String(), ID: tok.ID, Expires: spec.Expires})
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.raftApply(r.Context(), fsm.RevokeTokenType, &fsm.RevokeToken{ID: id, Now: s.now()}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("join token revoked", "id", id, "by", adminName(r))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) online(p *state.Peer, now time.Time) bool {
	if p.Role == api.RoleDevice {
		return false // a device never calls the coordinators: they cannot tell
	}
	s.touchMu.Lock()
	watching := s.watchN[p.ID] > 0
	s.touchMu.Unlock()
	if p.Watcher { // an agent: online while some coordinator holds its watch
		return watching || p.WatchedBy != ""
	}
	return watching || now.Sub(p.LastSeen) < s.cfg.OnlineWindow
}

func peerView(p *state.Peer, online bool, now time.Time) api.Peer {
	v := api.Peer{
		ID: p.ID, Name: p.Name, VNet: p.VNet, Role: p.Role, PublicKey: p.PublicKey,
		OverlayIP: p.OverlayIP.String(), Online: online, Routes: []api.Route{},
		Endpoints: append([]string{}, p.Endpoints...), Tags: append([]string{}, p.Tags...),
		Ephemeral: p.Ephemeral, CreatedAt: p.CreatedAt, LastSeen: p.LastSeen, Drained: p.Drained,
		Relay: p.Relay,
	}
	if p.OverlayIP6.IsValid() {
		v.OverlayIP6 = p.OverlayIP6.String()
	}
	for _, r := range p.Routes {
		v.Routes = append(v.Routes, api.Route{Prefix: r.Prefix.String(), Priority: r.Priority})
	}
	if online && p.Watcher {
		v.LastSeen = now // its watch is open: seen now
	}
	return v
}

func (s *Server) handleListPeers(w http.ResponseWriter, r *http.Request) {
	vnet := r.URL.Query().Get("vnet")
	now := s.now()
	out := []api.Peer{}
	var known bool
	h := s.healthy()
	s.store.Read(func(t *state.Tables, _ uint64) {
		_, known = t.VNets[vnet]
		states := netmap.GatewayStates(t, h)
		for _, p := range t.Peers {
			if vnet == "" || p.VNet == vnet {
				v := peerView(p, s.online(p, now), now)
				v.GatewayState = string(states[p.ID])
				out = append(out, v)
			}
		}
	})
	if vnet != "" && !known {
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet))
		return
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VNet != out[j].VNet {
			return out[i].VNet < out[j].VNet
		}
		return out[i].Name < out[j].Name
	})
	writeJSON(w, http.StatusOK, out)
}

// handleDrain moves a gateway's routes to its standbys (or gives them
// back): peers treat a drained gateway as the last choice.
func (s *Server) handleDrain(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		vnet, name := r.PathValue("vnet"), r.PathValue("name")
		var id string
		var routes int
		if !s.store.ReadPeer(vnet, name, func(p *state.Peer) { id, routes = p.ID, len(p.Routes) }) {
			writeError(w, api.Errorf(api.CodeNotFound, "no peer %q in vnet %q", name, vnet))
			return
		}
		if routes == 0 {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "peer %q announces no routes; only gateways can be drained", name))
			return
		}
		d := drain
		if _, err := s.raftApply(r.Context(), fsm.UpdatePeerType, &fsm.UpdatePeer{Update: state.PeerUpdate{PeerID: id, Drained: &d}}); err != nil {
			writeError(w, err)
			return
		}
		s.log.Info("gateway drain changed", "vnet", vnet, "peer", name, "drained", drain)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	vnet, name := r.PathValue("vnet"), r.PathValue("name")
	id, ok := s.store.PeerIDByName(vnet, name)
	if !ok {
		writeError(w, api.Errorf(api.CodeNotFound, "no peer %q in vnet %q", name, vnet))
		return
	}
	// The vnet's gossip key rotates in the same command: the removed peer's
	// key stops working once the grace is over.
	seed, err := newGossipSeed()
	if err != nil {
		writeError(w, err)
		return
	}
	if _, err := s.raftApply(r.Context(), fsm.RemovePeerType, &fsm.RemovePeer{ID: id, Now: s.now(), GossipSeed: seed}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("peer removed", "vnet", vnet, "peer", name, "id", id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) healthy() netmap.Healthy {
	now := s.now()
	return func(p *state.Peer) bool { return s.online(p, now) }
}

func (s *Server) handleListRoutes(w http.ResponseWriter, r *http.Request) {
	var out []api.RouteInfo
	h := s.healthy()
	s.store.Read(func(t *state.Tables, _ uint64) { out = netmap.Routes(t, r.URL.Query().Get("vnet"), h) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleOverlaps(w http.ResponseWriter, r *http.Request) {
	var out []api.Overlap
	s.store.Read(func(t *state.Tables, _ uint64) { out = netmap.Overlaps(t) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := api.CheckProtocol(req.ProtocolVersion); err != nil {
		writeError(w, err)
		return
	}
	tok, err := token.ParseKind(req.Token, token.KindJoin)
	if err != nil {
		writeError(w, api.Errorf(api.CodeTokenUnknown, "join token is malformed: %v", err))
		return
	}
	if tok.Pin != s.pin {
		writeError(w, api.Errorf(api.CodeTokenUnknown, "join token belongs to another cluster"))
		return
	}
	if err := state.ValidPeerEndpoints(req.Endpoints); err != nil {
		writeError(w, err)
		return
	}
	cred, err := token.New(token.KindPeer, token.NewID()+token.NewID(), s.pin, nil)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.CredentialSecret != "" {
		// The peer chose its credential: a repeat of this join proves
		// it is the same peer by sending the same secret.
		b, err := hex.DecodeString(req.CredentialSecret)
		if err != nil || len(b) != len(cred.Secret) || [32]byte(b) == [32]byte{} {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "credential_secret must be %d random bytes in hex", len(cred.Secret)))
			return
		}
		cred.Secret = [32]byte(b)
	}
	spec := state.JoinSpec{
		TokenID: tok.ID, SecretHash: tok.SecretHash(), PeerID: cred.ID, Name: req.Name,
		PublicKey: req.PublicKey, Routes: req.Routes, Endpoints: req.Endpoints, CredHash: cred.SecretHash(),
		StrictRetry: true, RouteAuthority: true,
	}
	// Pre-check against the local replica so plainly bad joins cost no Raft
	// write; the FSM checks again, authoritatively.
	if err := s.precheckJoin(r.Context(), spec); err != nil {
		writeError(w, err)
		return
	}
	if err := s.gateIPv6(func(t *state.Tables) string {
		if tk, ok := t.Tokens[spec.TokenID]; ok {
			return tk.VNet
		}
		return ""
	}); err != nil {
		writeError(w, err)
		return
	}
	res, err := s.raftApply(r.Context(), fsm.JoinPeerType, &fsm.JoinPeer{Spec: spec, Now: s.now()})
	if err != nil {
		writeError(w, err)
		return
	}
	p := res.Peer
	cred.ID = p.ID
	s.log.Info("peer joined", "vnet", p.VNet, "peer", p.Name, "id", p.ID, "overlay_ip", p.OverlayIP, "role", p.Role)
	resp := api.JoinResponse{PeerID: p.ID, Name: p.Name, VNet: p.VNet, OverlayIP: p.OverlayIP.String(), Credential: cred.String()}
	s.store.Read(func(t *state.Tables, index uint64) {
		if v, ok := t.VNets[p.VNet]; ok {
			resp.Overlay = v.Overlay.String()
			if v.Overlay6.IsValid() && p.OverlayIP6.IsValid() {
				resp.Overlay6, resp.OverlayIP6 = v.Overlay6.String(), p.OverlayIP6.String()
			}
		}
		resp.GossipKeys = t.VNetGossipKeys(p.VNet)
		if !req.OmitMap {
			resp.Map = netmap.Full(t, index, p.ID)
		}
	})
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) precheckJoin(ctx context.Context, j state.JoinSpec) error {
	if err := state.ValidName("peer", j.Name); err != nil {
		return err
	}
	if err := state.ValidKey(j.PublicKey); err != nil {
		return err
	}
	// A token created a moment ago through another coordinator may not
	// have reached this replica yet: give replication a short while before
	// calling it unknown.
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	for {
		ch := s.store.WatchCh()
		var err error
		s.store.Read(func(t *state.Tables, _ uint64) {
			tok, ok := t.Tokens[j.TokenID]
			if !ok || tok.SecretHash != j.SecretHash {
				err = api.Errorf(api.CodeTokenUnknown, "join token is not known to this cluster")
			}
		})
		if err == nil {
			return nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return err
		case <-ctx.Done():
			return err
		}
	}
}

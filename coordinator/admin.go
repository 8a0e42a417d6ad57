package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/token"
)

// Admin credentials. Every admin call presents one: the bootstrap
// credential (id "admin", its secret derived from the cluster key; what
// DATA_DIR/admin.token holds) or a named one created through the API,
// whose secret's hash is in the replicated state. A credential is judged
// by the replica's applied state alone, after the replica has caught up
// with the leader (adminBarrier), so a revocation holds on every
// coordinator as soon as the write that made it returns. Read-only
// credentials may make GET calls only.

// adminCredKey is the context key of the adminCred that made a call.
type adminCredKey struct{}

// adminCred is the admin credential a call was made with.
type adminCred struct {
	name     string
	readOnly bool
}

// adminName is who makes an admin call: the name of its admin credential
// ("admin" for the bootstrap one).
func adminName(r *http.Request) string {
	if c, ok := r.Context().Value(adminCredKey{}).(adminCred); ok {
		return c.name
	}
	return state.BootstrapAdminID
}

// adminRead guards an admin endpoint that changes nothing: any valid admin
// credential, read-only ones included.
func (s *Server) adminRead(h http.HandlerFunc) http.HandlerFunc { return s.requireAdmin(false, h) }

// adminWrite guards an admin endpoint that changes something: full admin
// credentials only.
func (s *Server) adminWrite(h http.HandlerFunc) http.HandlerFunc { return s.requireAdmin(true, h) }

func (s *Server) requireAdmin(write bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		raw := bearer(r)
		if raw == "" {
			writeError(w, api.Errorf(api.CodeUnauthorized, "admin credential missing: set MESHD_ADMIN_TOKEN to the contents of DATA_DIR/admin.token or to a token from meshd admin token create"))
			return
		}
		t, err := token.ParseKind(raw, token.KindAdmin)
		if err != nil {
			writeError(w, api.Errorf(api.CodeUnauthorized, "admin credential rejected: it is not an admin token"))
			return
		}
		if err := s.adminBarrier(r.Context()); err != nil {
			// Cluster status and metrics stay readable (from this
			// replica) while there is no leader: they are how one finds
			// out why.
			if write || r.URL.Path != "/v1/cluster/status" && r.URL.Path != "/metrics" {
				writeError(w, err)
				return
			}
		}
		cred, ok := s.authAdmin(t)
		if !ok {
			writeError(w, api.Errorf(api.CodeUnauthorized, "admin credential rejected: it was revoked or is not one of this cluster's"))
			return
		}
		if write && cred.readOnly {
			writeError(w, api.Errorf(api.CodeForbidden, "admin credential %q is read-only: it may read (GET) but not change anything; use a full admin credential", cred.name))
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), adminCredKey{}, cred)))
	}
}

// authAdmin judges an admin credential by the replica's state.
func (s *Server) authAdmin(t *token.Token) (cred adminCred, ok bool) {
	s.store.Read(func(tb *state.Tables, _ uint64) {
		if t.ID == state.BootstrapAdminID {
			ok = t.MatchesHash(s.adminHash) && !tb.BootstrapAdminRevoked()
			cred = adminCred{name: state.BootstrapAdminID}
			return
		}
		a, found := tb.AdminTokens[t.ID]
		if !found || a.Bootstrap || a.Revoked || !t.MatchesHash(a.SecretHash) {
			return
		}
		ok, cred = true, adminCred{name: a.Name, readOnly: a.ReadOnly}
	})
	return cred, ok
}

// adminBarrierTimeout bounds how long an admin call waits for this
// replica to catch up with the leader: well within a client's patience, so
// that a coordinator cut off from the leader refuses the call (nothing
// done, safe to retry) before the client gives up not knowing.
const adminBarrierTimeout = time.Second

// adminBarrier makes every admin call linearizable: the replica serving it
// applies, before the call goes on, everything acknowledged anywhere in the
// cluster before the call came in (readindex.go). So a read never returns
// state older than a write that already returned, and an admin credential
// revoked through any coordinator is refused here too. The leader confirms
// with a quorum that it still leads and applies what its log holds; a
// follower asks the leader for that index and waits for it. It runs before
// the call does anything: when it fails, nothing was changed.
func (s *Server) adminBarrier(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, adminBarrierTimeout)
	defer cancel()
	const safe = "the call was not carried out (nothing was changed), it is safe to retry"
	if s.raft.State() == raft.Leader {
		idx, err := s.readIndex(ctx)
		if err != nil {
			return api.Errorf(api.CodeUnavailable, "coordinator %s cannot confirm with a majority that it still leads (%v): %s, or use another coordinator", s.cfg.Name, err, safe)
		}
		if err := s.waitApplied(ctx, idx); err != nil {
			return api.Errorf(api.CodeUnavailable, "coordinator %s leads but has not applied its log yet: %s", s.cfg.Name, safe)
		}
		return nil
	}
	leader, ok := s.leaderAPIURL()
	if !ok {
		return api.Errorf(api.CodeUnavailable, "coordinator %s knows no coordinator leader now to read the cluster state from: %s; is a majority of coordinators up?", s.cfg.Name, safe)
	}
	if ok, since := s.leaderInReach(); !ok {
		return api.Errorf(api.CodeUnavailable, "coordinator %s has not heard from the leader for %s: %s, or use another coordinator", s.cfg.Name, since.Round(time.Millisecond), safe)
	}
	idx, err := s.leaderApplied(ctx, leader)
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "coordinator %s could not read the cluster's current index from the leader (%v): %s", s.cfg.Name, err, safe)
	}
	if err := s.waitApplied(ctx, idx); err != nil {
		return api.Errorf(api.CodeUnavailable, "coordinator %s is behind the leader (applied %d of %d): %s", s.cfg.Name, s.store.Index(), idx, safe)
	}
	return nil
}

// appliedBody answers GET /v1/internal/applied.
type appliedBody struct {
	Index uint64 `json:"index"`
}

// leaderApplied asks the leader for the index of the last command it applied.
func (s *Server) leaderApplied(ctx context.Context, leader string) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, leader+"/v1/internal/applied", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+s.internal)
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("the leader answered %s", resp.Status)
	}
	var b appliedBody
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&b); err != nil {
		return 0, fmt.Errorf("read the leader's answer: %w", err)
	}
	return b.Index, nil
}

// handleInternalApplied is the leader's end of adminBarrier.
func (s *Server) handleInternalApplied(w http.ResponseWriter, r *http.Request) {
	if !s.internalAuth(r) {
		writeError(w, api.Errorf(api.CodeUnauthorized, "internal API needs the cluster key"))
		return
	}
	if s.raft.State() != raft.Leader {
		w.WriteHeader(http.StatusMisdirectedRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminBarrierTimeout)
	defer cancel()
	idx, err := s.readIndex(ctx)
	if errors.Is(err, errNotLeader) {
		w.WriteHeader(http.StatusMisdirectedRequest)
		return
	}
	if err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s cannot confirm with a majority that it still leads: %v", s.cfg.Name, err))
		return
	}
	writeJSON(w, http.StatusOK, appliedBody{Index: idx})
}

func adminTokenView(a *state.AdminToken) api.AdminToken {
	v := api.AdminToken{
		ID: a.ID, Name: a.Name, ReadOnly: a.ReadOnly, Bootstrap: a.Bootstrap,
		CreatedBy: a.CreatedBy, Revoked: a.Revoked, RevokedBy: a.RevokedBy,
	}
	if !a.CreatedAt.IsZero() {
		at := a.CreatedAt
		v.CreatedAt = &at
	}
	if !a.RevokedAt.IsZero() {
		at := a.RevokedAt
		v.RevokedAt = &at
	}
	return v
}

func (s *Server) handleListAdminTokens(w http.ResponseWriter, r *http.Request) {
	out := []api.AdminToken{}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for _, a := range t.SortedAdminTokens() {
			out = append(out, adminTokenView(a))
		}
	})
	writeJSON(w, http.StatusOK, out)
}

// handleCreateAdminToken makes a named admin credential and answers with
// it, once: only its hash is stored.
func (s *Server) handleCreateAdminToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateAdminTokenRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := state.ValidName("admin token", req.Name); err != nil {
		writeError(w, err)
		return
	}
	tok, err := token.New(token.KindAdmin, token.NewID(), s.pin, s.clusterURLs())
	if err != nil {
		writeError(w, err)
		return
	}
	by := adminName(r)
	spec := state.AdminTokenSpec{ID: tok.ID, Name: req.Name, SecretHash: tok.SecretHash(), ReadOnly: req.ReadOnly, CreatedBy: by}
	if _, err := s.raftApply(r.Context(), fsm.CreateAdminTokenType, &fsm.CreateAdminToken{Spec: spec, Now: s.now()}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("admin token created", "id", tok.ID, "name", req.Name, "read_only", req.ReadOnly, "by", by)
	writeJSON(w, http.StatusCreated, api.CreateAdminTokenResponse{ID: tok.ID, Name: req.Name, ReadOnly: req.ReadOnly, Token: tok.String()})
}

// handleRevokeAdminToken revokes an admin credential by id or name. It
// returns once the revocation is applied on the leader; every coordinator
// refuses the credential from then on (adminBarrier).
func (s *Server) handleRevokeAdminToken(w http.ResponseWriter, r *http.Request) {
	ref, by := r.PathValue("ref"), adminName(r)
	res, err := s.raftApply(r.Context(), fsm.RevokeAdminTokenType, &fsm.RevokeAdminToken{Ref: ref, By: by, Now: s.now()})
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("admin token revoked", "ref", ref, "ids", res.IDs, "by", by)
	w.WriteHeader(http.StatusNoContent)
}

package coordinator

import (
	"context"
	"net/http"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// handlePruneTokens answers POST /v1/tokens/prune: it deletes every join
// token that is revoked, expired or used up (one used up in the last
// state.JoinRetryWindow stays, for a join that may be repeated) and lists
// them.
func (s *Server) handlePruneTokens(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	views := map[string]api.Token{}
	var ids []string
	s.store.Read(func(t *state.Tables, _ uint64) {
		ids = t.DeadTokens(now, 0)
		for _, id := range ids {
			views[id] = tokenView(t.Tokens[id], now)
		}
	})
	out := api.PruneTokensResponse{Pruned: []api.Token{}}
	if len(ids) > 0 {
		res, err := s.raftApply(r.Context(), fsm.PruneTokensType, &fsm.PruneTokens{IDs: ids, Now: now})
		if err != nil {
			writeError(w, err)
			return
		}
		for _, id := range res.IDs {
			out.Pruned = append(out.Pruned, views[id])
		}
		s.log.Info("join tokens pruned", "ids", res.IDs, "by", adminName(r))
	}
	writeJSON(w, http.StatusOK, out)
}

// pruneDeadTokens is the leader's chore: it deletes the join tokens dead
// for state.TokenRetention or longer, once every coordinator can apply
// the command (fsm.PruneTokensType is gated; until then ExpireTokens
// still removes the long-expired ones).
func (s *Server) pruneDeadTokens(ctx context.Context) {
	now := s.now()
	var ids []string
	s.store.Read(func(t *state.Tables, _ uint64) { ids = t.DeadTokens(now, state.TokenRetention) })
	if len(ids) == 0 || s.gate(fsm.PruneTokensType, "") != nil {
		return
	}
	r, err := s.raftApply(ctx, fsm.PruneTokensType, &fsm.PruneTokens{IDs: ids, Now: now})
	if err != nil {
		s.log.Warn("prune dead tokens", "err", err)
		return
	}
	if len(r.IDs) > 0 {
		s.log.Info("pruned join tokens dead for a day", "ids", r.IDs)
	}
}

package coordinator

import (
	"net/http"

	"github.com/meshd/meshd/coordinator/fsm"
)

// handleLeave removes the peer whose credential asks (DELETE /v1/self): a
// peer credential removes only its own peer. A peer that never came up
// gives its join token the use back (state.LeavePeer): the agent undoes a
// join whose first start failed.
func (s *Server) handleLeave(w http.ResponseWriter, r *http.Request, id string) {
	seed, err := newGossipSeed()
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := s.raftApply(r.Context(), fsm.LeavePeerType, &fsm.LeavePeer{ID: id, Now: s.now(), GossipSeed: seed})
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("peer left", "id", id, "token_use_returned", res.Count == 1)
	w.WriteHeader(http.StatusNoContent)
}

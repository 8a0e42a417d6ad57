package coordinator

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/pkg/api"
)

// reach is what this coordinator knows of whether the others answer: as
// leader, from Raft's heartbeats to each follower (a failed heartbeat marks
// the follower unreachable until one succeeds again); as follower, from
// its last contact with the leader.
type reach struct {
	mu     sync.Mutex
	failed map[raft.ServerID]time.Time // guarded by mu: since when heartbeats fail
}

// leaderContactWithin is how long a follower may go without hearing from
// the leader before it reports the leader unreachable (several heartbeat
// intervals).
const leaderContactWithin = time.Second

// reachLoop follows Raft's heartbeat observations until ctx is done.
func (s *Server) reachLoop(ctx context.Context) {
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation, raft.PeerObservation:
			return true
		}
		return false
	})
	s.raft.RegisterObserver(obs)
	defer s.raft.DeregisterObserver(obs)
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-ch:
			s.reach.mu.Lock()
			if s.reach.failed == nil {
				s.reach.failed = map[raft.ServerID]time.Time{}
			}
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if _, ok := s.reach.failed[d.PeerID]; !ok {
					s.reach.failed[d.PeerID] = d.LastContact
				}
			case raft.ResumedHeartbeatObservation:
				delete(s.reach.failed, d.PeerID)
			case raft.LeaderObservation:
				clear(s.reach.failed) // a new term: heartbeats start over
			case raft.PeerObservation:
				// Replication to a member added or removed starts over (a
				// coordinator removed and added again is not still failing).
				delete(s.reach.failed, d.Peer.ID)
			}
			s.reach.mu.Unlock()
		}
	}
}

// heartbeatFailures returns, on the leader, the members whose heartbeats
// fail, each with the time the leader last heard from it.
func (s *Server) heartbeatFailures() map[raft.ServerID]time.Time {
	s.reach.mu.Lock()
	defer s.reach.mu.Unlock()
	out := make(map[raft.ServerID]time.Time, len(s.reach.failed))
	for id, since := range s.reach.failed {
		out[id] = since
	}
	return out
}

// handleTransferLeadership answers POST /v1/cluster/transfer-leadership:
// the leader hands leadership to the most up-to-date follower (before
// maintenance on its host) and answers with the new leader. POST
// /v1/cluster/transfer-leader (membership.go) also takes a target.
func (s *Server) handleTransferLeadership(w http.ResponseWriter, r *http.Request) {
	if !s.onLeader(w, r, nil) {
		return
	}
	s.transferLeader(w, r, "")
}

// handleRemoveMember answers DELETE /v1/cluster/members/{name}: the leader
// removes a coordinator from the Raft configuration (one whose host died,
// before a replacement joins) and from the coordinators the maps list. The
// leader itself cannot be removed: transfer the leadership first.
func (s *Server) handleRemoveMember(w http.ResponseWriter, r *http.Request) {
	if s.raft.State() != raft.Leader {
		if r.Header.Get(forwardedHeader) != "" {
			writeError(w, api.Errorf(api.CodeUnavailable, "leadership moved while the call was passed on; retry"))
			return
		}
		s.forwardToLeader(w, r, nil)
		return
	}
	name := r.PathValue("name")
	if name == s.cfg.Name {
		writeError(w, api.Errorf(api.CodeConflict, "%s leads the cluster; run `meshd cluster transfer-leader` first", name))
		return
	}
	// Checked before the member leaves: its deregistration must be
	// writable once it is gone.
	if err := s.gate(fsm.DeregisterCoordinatorType, name); err != nil {
		writeError(w, err)
		return
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "read raft configuration: %v", err))
		return
	}
	found := false
	for _, srv := range cf.Configuration().Servers {
		found = found || srv.ID == raft.ServerID(name)
	}
	if !found {
		writeError(w, api.Errorf(api.CodeNotFound, "no coordinator %q in the cluster", name))
		return
	}
	if err := s.raft.RemoveServer(raft.ServerID(name), 0, 0).Error(); err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "remove %s: %v", name, err))
		return
	}
	if _, err := s.raftApply(r.Context(), fsm.DeregisterCoordinatorType, &fsm.DeregisterCoordinator{Name: name}); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("coordinator removed from the cluster", "coordinator", name, "by", adminName(r))
	w.WriteHeader(http.StatusNoContent)
}

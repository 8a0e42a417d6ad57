package coordinator

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
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
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
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
			}
			s.reach.mu.Unlock()
		}
	}
}

// reachable reports whether coordinator id answers as far as this one can
// tell (known false: it does not know).
func (s *Server) reachable(id raft.ServerID, leader raft.ServerID) (answers, known bool) {
	if id == raft.ServerID(s.cfg.Name) {
		return true, true
	}
	if s.raft.State() == raft.Leader {
		s.reach.mu.Lock()
		_, failing := s.reach.failed[id]
		s.reach.mu.Unlock()
		return !failing, true
	}
	if id == leader {
		last := s.raft.LastContact()
		return !last.IsZero() && time.Since(last) < leaderContactWithin, true
	}
	return false, false
}

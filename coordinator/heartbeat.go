package coordinator

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// endpointWriteEvery bounds how often one peer's reported endpoints and
// relayed address go into Raft. A change after a quiet spell (a laptop that
// roamed) is written at once; changes that follow it within
// endpointWriteEvery are coalesced, and the latest is written when the
// interval ends. A peer that reports a new endpoint with every heartbeat
// costs at most one Raft write (and one network-map delta to every peer of
// its vnet) a second.
const endpointWriteEvery = time.Second

// reportRetries bounds how often a coalesced report whose write failed (no
// leader for a moment) is tried again, endpointWriteEvery apart.
const reportRetries = 10

// reported is one peer's rate-limited reports; guarded by Server.reportMu.
type reported struct {
	last    time.Time // when its last write started
	pending bool      // a coalesced report waits for the interval to end
	eps     *[]string // the latest endpoints it reported, if pending
	relay   *string   // the latest relayed address it reported, if pending
	tries   int       // failed writes of the pending report
}

// handleHeartbeat notes a peer is alive and takes what it reports.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request, peerID string) {
	var req api.HeartbeatRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Endpoints != nil {
		if err := state.ValidPeerEndpoints(req.Endpoints); err != nil {
			writeError(w, err)
			return
		}
	}
	if req.Relay != nil {
		if err := state.ValidRelay(*req.Relay); err != nil {
			writeError(w, err)
			return
		}
	}
	s.touch(peerID)
	// Only what changed goes into Raft; an unchanged heartbeat writes
	// nothing, and changes are written at most once per
	// endpointWriteEvery.
	now := time.Now()
	s.reportMu.Lock()
	rp := s.reports[peerID]
	if rp != nil && (rp.pending || now.Sub(rp.last) < endpointWriteEvery) {
		if req.Endpoints != nil {
			eps := req.Endpoints
			rp.eps = &eps
		}
		if req.Relay != nil {
			rp.relay = req.Relay
		}
		if !rp.pending && s.changes(peerID, rp.eps, rp.relay) {
			rp.pending = true
			select {
			case s.reportKick <- struct{}{}:
			default:
			}
		}
		s.reportMu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	u, changed := s.peerUpdate(peerID, req.Endpoints, req.Relay)
	if changed {
		if rp == nil {
			rp = &reported{}
			s.reports[peerID] = rp
		}
		rp.last = now
	}
	s.reportMu.Unlock()
	if changed {
		if _, err := s.raftApply(r.Context(), fsm.UpdatePeerType, &fsm.UpdatePeer{Update: u}); err != nil {
			writeError(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// changes reports whether eps or relay (nil: not reported) differ from
// what the replica holds for the peer.
func (s *Server) changes(peerID string, eps *[]string, relay *string) bool {
	var d []string
	if eps != nil {
		d = *eps
	}
	_, changed := s.peerUpdate(peerID, d, relay)
	return changed
}

// peerUpdate is the update that brings the peer's record to eps and relay
// (nil: not reported), and whether there is anything to write.
func (s *Server) peerUpdate(peerID string, eps []string, relay *string) (state.PeerUpdate, bool) {
	u := state.PeerUpdate{PeerID: peerID}
	s.store.Read(func(t *state.Tables, _ uint64) {
		p, ok := t.Peers[peerID]
		if eps != nil && (!ok || !slices.Equal(p.Endpoints, eps)) {
			u.Endpoints = &eps
		}
		if relay != nil && (!ok || p.Relay != *relay) {
			u.Relay = relay
		}
	})
	return u, u.Endpoints != nil || u.Relay != nil
}

// reportLoop writes coalesced reports when their interval ends, and forgets
// peers that have been quiet for an interval.
func (s *Server) reportLoop(ctx context.Context) {
	timer := time.NewTimer(endpointWriteEvery)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reportKick:
		case <-timer.C:
		}
		now := time.Now()
		next := 5 * time.Second
		type due struct {
			id         string
			eps        []string
			relay      *string
			hasEps     bool
			triesSoFar int
		}
		var work []due
		s.reportMu.Lock()
		for id, rp := range s.reports {
			switch wait := rp.last.Add(endpointWriteEvery).Sub(now); {
			case !rp.pending && wait <= 0:
				delete(s.reports, id)
			case !rp.pending:
			case wait > 0:
				next = min(next, wait)
			default:
				d := due{id: id, relay: rp.relay, triesSoFar: rp.tries}
				if rp.eps != nil {
					d.eps, d.hasEps = *rp.eps, true
				}
				work = append(work, d)
				rp.pending, rp.eps, rp.relay, rp.tries, rp.last = false, nil, nil, 0, now
				next = min(next, endpointWriteEvery)
			}
		}
		s.reportMu.Unlock()
		for _, d := range work {
			var eps []string
			if d.hasEps {
				eps = d.eps
			}
			u, changed := s.peerUpdate(d.id, eps, d.relay)
			if !changed || !s.peerExists(d.id) {
				continue
			}
			if _, err := s.raftApply(ctx, fsm.UpdatePeerType, &fsm.UpdatePeer{Update: u}); err != nil {
				s.log.Debug("write reported endpoints", "peer", d.id, "err", err)
				if d.triesSoFar+1 >= reportRetries || ctx.Err() != nil {
					continue
				}
				// Try again after an interval, unless a newer report
				// has replaced this one meanwhile.
				s.reportMu.Lock()
				if rp := s.reports[d.id]; rp != nil && !rp.pending {
					rp.pending, rp.tries = true, d.triesSoFar+1
					if d.hasEps {
						rp.eps = &d.eps
					}
					rp.relay = d.relay
				}
				s.reportMu.Unlock()
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

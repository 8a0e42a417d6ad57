package coordinator

import (
	"context"
	"crypto/rand"
	"net/http"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// DefaultGossipKeyGrace is how long a vnet's previous gossip key stays in its
// ring after a rotation. Agents start encrypting with a new key 10 s after
// they receive it, so every member of the vnet holds it first; the grace
// must outlast that switch and the map's delivery.
const DefaultGossipKeyGrace = 60 * time.Second

// newGossipSeed is the randomness a rotating command carries: replicas derive
// the new keys from it (state.DeriveGossipKey), never from their own.
func newGossipSeed() ([]byte, error) {
	seed := make([]byte, state.GossipSeedBytes)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	return seed, nil
}

// pruneGossipKeysLoop runs on the leader: once a superseded gossip key's
// grace is over it writes a PruneGossipKeys command, which drops every key
// then due from its vnet's ring and sends that vnet's peers the shorter
// ring. It wakes at the earliest due time or when the state changes.
func (s *Server) pruneGossipKeysLoop(ctx context.Context) {
	grace := s.cfg.GossipKeyGrace
	for {
		ch := s.store.WatchCh()
		var next time.Time
		s.store.Read(func(t *state.Tables, _ uint64) { next = t.NextGossipKeyExpiry(grace) })
		now := s.now()
		if !next.IsZero() && !now.Before(next) {
			r, err := s.raftApply(ctx, fsm.PruneGossipKeysType, &fsm.PruneGossipKeys{Now: now, Grace: grace})
			if err == nil {
				s.log.Info("dropped superseded gossip keys", "vnets", r.IDs)
				continue
			}
			s.log.Warn("drop superseded gossip keys", "err", err)
			next = now.Add(time.Second) // try again shortly
		}
		if !s.waitGossipKeyDue(ctx, ch, next, now) {
			return
		}
	}
}

// waitGossipKeyDue waits until the state changes (ch) or next comes; with no
// next, only for a change. It is false once ctx is done.
func (s *Server) waitGossipKeyDue(ctx context.Context, ch <-chan struct{}, next, now time.Time) bool {
	var due <-chan time.Time
	if !next.IsZero() {
		// Look again at least every second: cfg.Now may be a clock that
		// does not follow the timer's.
		t := time.NewTimer(min(max(next.Sub(now), 0), time.Second))
		defer t.Stop()
		due = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-ch:
	case <-due:
	}
	return true
}

// handleRotateGossipKey gives every vnet (or the one ?vnet= names) a new
// primary gossip key; the previous ones stay accepted for the grace period.
func (s *Server) handleRotateGossipKey(w http.ResponseWriter, r *http.Request) {
	vnet := r.URL.Query().Get("vnet")
	seed, err := newGossipSeed()
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := s.raftApply(r.Context(), fsm.RotateVNetKeysType, &fsm.RotateVNetKeys{VNet: vnet, GossipSeed: seed, Now: s.now()})
	if err != nil {
		writeError(w, err)
		return
	}
	out := api.RotateGossipKeyResponse{Index: res.Index, VNets: []api.GossipRing{}, Grace: s.cfg.GossipKeyGrace.String()}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for _, v := range res.IDs {
			out.VNets = append(out.VNets, api.GossipRing{VNet: v, Keys: len(t.VNetGossipKeys(v))})
		}
	})
	s.log.Info("gossip keys rotated", "vnets", res.IDs)
	writeJSON(w, http.StatusOK, out)
}

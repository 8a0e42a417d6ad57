package coordinator

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
)

// Watch marks. Which coordinator holds each agent's network-map watch is
// part of the replicated state, so every coordinator sees an agent go
// offline the moment its watch drops (route lookup follows a killed
// gateway). A coordinator writes its marks in batches: the watches that
// started or ended since its last write go into one MarkWatches command, at
// most markChunk peers each, so 10,000 watches opening or dropping at once
// (a coordinator restarting, a network cut, a fleet reconnecting) cost a
// few Raft writes instead of 10,000, which would starve the leader's
// heartbeats and cost it its lease.
//
// A batch is level-triggered: for each peer it writes what is true when the
// batch is taken (this coordinator holds a watch of the peer, or it does
// not), so a start and an end within one batch cost one release. Every
// markResync the coordinator also compares the replicated marks with the
// watches it holds and repairs the difference: marks it left behind when it
// was last stopped, a batch that could not be written, a mark another
// coordinator wrote while this one still holds the watch.
const (
	markEvery  = 20 * time.Millisecond
	markResync = 5 * time.Second
	markRetry  = 200 * time.Millisecond
)

// markChunk bounds the peers in one MarkWatches command (4,096 ids and end
// times are about 300 KB, well under fsm.MaxCommandBytes). A variable so
// that tests can make chunks small.
var markChunk = 4096

// watchStarted and watchEnded note a watch of peerID opening or ending here.
func (s *Server) watchStarted(peerID string) {
	s.touchMu.Lock()
	s.watchN[peerID]++
	if _, ok := s.markDirty[peerID]; !ok {
		s.markDirty[peerID] = time.Time{}
	}
	s.touchMu.Unlock()
	s.kickMarks()
}

func (s *Server) watchEnded(peerID string) {
	now := s.now()
	s.touchMu.Lock()
	if s.watchN[peerID]--; s.watchN[peerID] <= 0 {
		delete(s.watchN, peerID)
	}
	s.markDirty[peerID] = now // its release carries the end as last seen
	s.touchMu.Unlock()
	s.kickMarks()
}

func (s *Server) kickMarks() {
	select {
	case s.markKick <- struct{}{}:
	default:
	}
}

// markLoop writes this coordinator's watch marks until ctx is done.
func (s *Server) markLoop(ctx context.Context) {
	resync := time.NewTicker(markResync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.markKick:
		case <-resync.C:
			s.resyncMarks()
		}
		if !sleepCtx(ctx, markEvery) { // gather the rest of a wave
			return
		}
		held, released := s.takeMarks()
		if err := s.writeMarks(ctx, held, released); err != nil {
			s.log.Debug("record watch marks", "held", len(held), "released", len(released), "err", err)
			if !sleepCtx(ctx, markRetry) {
				return
			}
			s.kickMarks()
		}
	}
}

// takeMarks empties the dirty set into what to write: the peers whose watch
// this coordinator holds now, and the others with the time their watch
// ended here.
func (s *Server) takeMarks() (held []string, released map[string]time.Time) {
	s.touchMu.Lock()
	defer s.touchMu.Unlock()
	released = map[string]time.Time{}
	for id, ended := range s.markDirty {
		if s.watchN[id] > 0 {
			held = append(held, id)
		} else {
			released[id] = ended
		}
	}
	clear(s.markDirty)
	slices.Sort(held)
	return held, released
}

// writeMarks writes held and released in commands of at most markChunk
// peers. What it could not write goes back into the dirty set.
func (s *Server) writeMarks(ctx context.Context, held []string, released map[string]time.Time) error {
	ids := slices.Sorted(maps.Keys(released))
	for len(held) > 0 || len(ids) > 0 {
		c := &fsm.MarkWatches{Coordinator: s.cfg.Name}
		n := min(len(held), markChunk)
		c.Held, held = held[:n], held[n:]
		if k := min(len(ids), markChunk-n); k > 0 {
			c.Released = make(map[string]time.Time, k)
			for _, id := range ids[:k] {
				c.Released[id] = released[id]
			}
			ids = ids[k:]
		}
		if _, err := s.raftApply(ctx, fsm.MarkWatchesType, c); err != nil {
			s.requeueMarks(slices.Concat(c.Held, held), slices.Concat(slices.Collect(maps.Keys(c.Released)), ids), released)
			return err
		}
	}
	return nil
}

// requeueMarks puts unwritten marks back into the dirty set, unless the
// peer's watch started or ended again meanwhile (the newer entry wins).
func (s *Server) requeueMarks(held, releasedIDs []string, released map[string]time.Time) {
	s.touchMu.Lock()
	defer s.touchMu.Unlock()
	for _, id := range held {
		if _, ok := s.markDirty[id]; !ok {
			s.markDirty[id] = time.Time{}
		}
	}
	for _, id := range releasedIDs {
		if _, ok := s.markDirty[id]; !ok {
			s.markDirty[id] = released[id]
		}
	}
}

// resyncMarks queues every peer whose replicated mark disagrees with the
// watches this coordinator holds. It waits until the replica has caught up,
// so a coordinator that just started does not judge marks it cannot see
// yet. (touchMu is never held across a store read: readers of the store
// take it inside theirs.)
func (s *Server) resyncMarks() {
	if !s.caughtUp() {
		return
	}
	s.touchMu.Lock()
	holds := maps.Clone(s.watchN)
	s.touchMu.Unlock()
	me := s.cfg.Name
	var wrong []string
	s.store.Read(func(t *state.Tables, _ uint64) {
		for id, p := range t.Peers {
			if (holds[id] > 0) != (p.WatchedBy == me) {
				wrong = append(wrong, id)
			}
		}
	})
	if len(wrong) == 0 {
		return
	}
	// A mark left from before this coordinator's restart: the watch ended
	// at the latest now.
	now := s.now()
	s.touchMu.Lock()
	for _, id := range wrong {
		if _, ok := s.markDirty[id]; !ok {
			s.markDirty[id] = now
		}
	}
	s.touchMu.Unlock()
	s.kickMarks()
}

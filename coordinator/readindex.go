package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// Linearizable reads (the read index of the Raft paper, section 6.4).
//
// A leader that has been cut off from the others, or was stopped (SIGSTOP)
// while the others elected a new one, still believes it leads until it
// notices: for up to its lease, or for as long as its goroutines take to run
// again after SIGCONT. Serving a read from its replica then returns state
// from before writes the new leader has acknowledged. So a read on the
// leader first notes the last index of its log, then confirms with a
// quorum that it still leads (raft's VerifyLeader), then waits until its
// state machine has applied that index. A follower asks the leader for the
// same index (/v1/internal/applied) and waits until it has applied it.
//
// One VerifyLeader round serves every read that arrived before it started:
// reads under load cost one heartbeat round trip between them, not one each.

// errNotLeader: this node does not lead (any more).
var errNotLeader = errors.New("not the leader")

// leaderCheck coalesces concurrent leadership checks: a caller joins the
// next round to start (never one already under way, which may have begun
// before the caller's read and so proves nothing about it).
type leaderCheck struct {
	verify func() error // one quorum round trip

	mu      sync.Mutex
	next    *checkRound // guarded by mu: the round callers join; nil: none yet
	running bool        // guarded by mu: a goroutine runs rounds
}

type checkRound struct {
	done    chan struct{}
	err     error // set before done is closed
	callers int   // guarded by leaderCheck.mu while the round is next: how many joined it
}

// wait returns the outcome of a round that started after the call.
func (c *leaderCheck) wait(ctx context.Context) error {
	c.mu.Lock()
	if c.next == nil {
		c.next = &checkRound{done: make(chan struct{})}
	}
	r := c.next
	r.callers++
	if !c.running {
		c.running = true
		go c.run()
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run runs rounds while callers wait for one, then ends.
func (c *leaderCheck) run() {
	for {
		c.mu.Lock()
		r := c.next
		c.next = nil
		if r == nil {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		r.err = c.verify()
		close(r.done)
	}
}

// verifyLeader is one round of leaderCheck: VerifyLeader on raft.
func (s *Server) verifyLeader() error {
	err := s.raft.VerifyLeader().Error()
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return errNotLeader
	}
	return err
}

// readIndex returns an index a linearizable read must have applied before
// it is served, confirming that this node leads. It fails when this node
// does not lead, or cannot confirm it with a quorum.
func (s *Server) readIndex(ctx context.Context) (uint64, error) {
	if s.raft.State() != raft.Leader {
		return 0, errNotLeader
	}
	// Everything committed is in a leader's log: the last index covers
	// every write acknowledged before this call, by this leader or an
	// earlier one. Entries still being committed only make the read wait
	// for them.
	last := s.raft.LastIndex()
	if err := s.leaderCheck.wait(ctx); err != nil {
		return 0, fmt.Errorf("confirm leadership: %w", err)
	}
	return s.lastCommandIndex(last), nil
}

// lastCommandIndex is the index of the last command (the entries the state
// store counts) at or before index: a new leader's no-op and configuration
// changes never show in the store's index. Entries that are not commands
// are rare (one per election or membership change), so the walk back is
// short. An entry gone from the log was compacted into a snapshot the
// store has restored: nothing before it needs waiting for.
func (s *Server) lastCommandIndex(index uint64) uint64 {
	var l raft.Log
	for i := index; i > 0; i-- {
		if err := s.logs.GetLog(i, &l); err != nil {
			return 0
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return 0
}

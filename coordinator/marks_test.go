package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// TestWatchMarksBatched: watches starting and ending together cost a few
// Raft entries (not one per watch), every replica sees the marks, a watch
// that moved keeps its new holder's mark, and a mark nobody holds is
// repaired by the holder's resync.
func TestWatchMarksBatched(t *testing.T) {
	defer func(c int) { markChunk = c }(markChunk)
	markChunk = 128
	c := startCluster(t, 3)
	ctx := context.Background()
	l := c.leader()
	const n = 300
	hash := fmt.Sprintf("%064x", 1)
	if _, err := l.srv.raftApply(ctx, fsm.CreateTokenType, &fsm.CreateToken{Spec: state.TokenSpec{ID: "tok", SecretHash: hash, VNet: api.DefaultVNet, Uses: n, Expires: time.Now().Add(time.Hour)}, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		ids[i] = fmt.Sprintf("peer%03d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := state.JoinSpec{TokenID: "tok", SecretHash: hash, PeerID: ids[i], Name: ids[i], PublicKey: wgKey(), CredHash: hash}
			if _, err := l.srv.raftApply(ctx, fsm.JoinPeerType, &fsm.JoinPeer{Spec: spec, Now: time.Now()}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	holder := c.followers()[0]
	// marks reports, on every replica, how many of ids are marked by.
	everywhere := func(by string, want int) func() bool {
		return func() bool {
			for _, nd := range c.nodes {
				k := 0
				nd.srv.Store().Read(func(tb *state.Tables, _ uint64) {
					for _, id := range ids {
						if p := tb.Peers[id]; p != nil && p.WatchedBy == by {
							k++
						}
					}
				})
				if k != want {
					return false
				}
			}
			return true
		}
	}
	// countMarks counts the MarkWatches entries in the leader's log after
	// index from.
	countMarks := func(from uint64) int {
		k := 0
		for i := from + 1; i <= l.srv.Raft().LastIndex(); i++ {
			var lg raft.Log
			if err := l.logs.GetLog(i, &lg); err == nil && lg.Type == raft.LogCommand && fsm.MessageType(lg.Data[0]) == fsm.MarkWatchesType {
				k++
			}
		}
		return k
	}

	// All n watches open at once on one follower.
	before := l.srv.Raft().LastIndex()
	for _, id := range ids {
		holder.srv.watchStarted(id)
	}
	waitFor(t, 10*time.Second, "every replica to see the watches held by "+holder.name, everywhere(holder.name, n))
	if k, most := countMarks(before), 2*(n/markChunk+1); k == 0 || k > most {
		t.Errorf("%d watches opening at once took %d MarkWatches entries; want 1 to %d", n, k, most)
	}

	// peer000 moves to another coordinator before its old watch ends: the
	// old holder's release leaves the new mark alone.
	other := c.leader()
	other.srv.watchStarted(ids[0])
	waitFor(t, 10*time.Second, "peer000 marked by "+other.name, func() bool {
		var by string
		holder.srv.Store().Read(func(tb *state.Tables, _ uint64) { by = tb.Peers[ids[0]].WatchedBy })
		return by == other.name
	})

	// Every watch on the follower ends at once.
	before = l.srv.Raft().LastIndex()
	ended := time.Now().UTC()
	for _, id := range ids {
		holder.srv.watchEnded(id)
	}
	waitFor(t, 10*time.Second, "every replica to see the watches released", everywhere("", n-1))
	if k, most := countMarks(before), 2*(n/markChunk+1); k == 0 || k > most {
		t.Errorf("%d watches ending at once took %d MarkWatches entries; want 1 to %d", n, k, most)
	}
	for _, nd := range c.nodes {
		nd.srv.Store().Read(func(tb *state.Tables, _ uint64) {
			if by := tb.Peers[ids[0]].WatchedBy; by != other.name {
				t.Errorf("%s: peer000 watched by %q after its old watch ended; want %s (it moved there)", nd.name, by, other.name)
			}
			if p := tb.Peers[ids[1]]; p.LastSeen.Before(ended.Add(-time.Second)) {
				t.Errorf("%s: peer001 last seen %v; want the time its watch ended (%v)", nd.name, p.LastSeen, ended)
			}
		})
	}

	// A mark left behind (as by a coordinator that was stopped with
	// watches open): the holder's resync releases it.
	if _, err := l.srv.raftApply(ctx, fsm.MarkWatchesType, &fsm.MarkWatches{Coordinator: holder.name, Held: ids[1:3]}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the stale marks to reach "+holder.name, func() bool {
		var by string
		holder.srv.Store().Read(func(tb *state.Tables, _ uint64) { by = tb.Peers[ids[2]].WatchedBy })
		return by == holder.name
	})
	holder.srv.resyncMarks()
	waitFor(t, 2*time.Second, "stale marks released by the resync", everywhere("", n-1))
}

package state

import (
	"fmt"
	"sync"
	"testing"

	"github.com/meshd/meshd/pkg/api"
)

// TestReadersNeverSkipAChange: a writer applies commands the way the FSM
// does (SetIndex, the mutation, Applied) while a reader follows the changes
// the way the fan-out does (ReadChanges since the index it last saw). After
// every read, the reader's view of each peer must equal the tables: if it
// saw an index whose change was recorded a moment later, it would never
// ask for that change again and would stay behind (it did, before the
// index became visible only at Applied). Each command here makes two
// changes, under two acquisitions of the store's lock, as a command that
// removes a peer and rotates its vnet's key could: seeing the index with
// the first change would lose the second.
func TestReadersNeverSkipAChange(t *testing.T) {
	s := setup(t)
	for i, id := range []string{"p1", "p2"} {
		s.SetIndex(uint64(2 + i))
		if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: id, Name: id, PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
			t.Fatal(err)
		}
		s.Applied(uint64(2 + i))
	}
	n := 20000
	if testing.Short() {
		n = 2000
	}
	endpoint := func(i int) []string { return []string{fmt.Sprintf("198.51.100.%d:%d", 1+i%200, 1024+i)} }
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() { // the writer
		defer wg.Done()
		defer close(done)
		for i := range n {
			idx := uint64(10 + i)
			eps := endpoint(i)
			s.SetIndex(idx)
			for _, id := range []string{"p1", "p2"} {
				if err := s.UpdatePeer(PeerUpdate{PeerID: id, Endpoints: &eps}); err != nil {
					t.Error(err)
					return
				}
			}
			s.Applied(idx)
		}
	}()
	seen := map[string]string{}
	var last uint64
	stale := 0
	read := func() {
		s.ReadChanges(api.DefaultVNet, last, func(tb *Tables, index uint64, changed []string, _, ok bool) {
			if !ok {
				changed = []string{"p1", "p2"} // a full map
			}
			for _, id := range changed {
				if p := tb.Peers[id]; p != nil {
					seen[id] = fmt.Sprint(p.Endpoints)
				}
			}
			for _, id := range []string{"p1", "p2"} {
				if seen[id] != fmt.Sprint(tb.Peers[id].Endpoints) {
					stale++
				}
			}
			last = index
		})
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		read()
	}
	wg.Wait()
	read()
	if stale > 0 {
		t.Fatalf("%d reads left the reader behind the tables: a change fell between an index and its record", stale)
	}
}

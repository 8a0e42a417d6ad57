package state

import (
	"encoding/json"
	"fmt"
)

// Backup encodes the whole state as Snapshot does and returns, under the
// same lock, the index it reflects and how many rows each table holds.
func (s *Store) Backup() (data []byte, index uint64, tables map[string]int, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	data, err = json.Marshal(snapshot{Index: s.index, Tables: s.t})
	if err != nil {
		return nil, 0, nil, err
	}
	return data, s.index, s.t.counts(), nil
}

// Counts is how many rows each table holds.
func (s *Store) Counts() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.t.counts()
}

func (t *Tables) counts() map[string]int {
	routes := 0
	for _, p := range t.Peers {
		routes += len(p.Routes)
	}
	return map[string]int{
		"vnets": len(t.VNets), "peers": len(t.Peers), "routes": routes, "tokens": len(t.Tokens),
		"admin_tokens": len(t.AdminTokens), "policies": len(t.Policies), "gossip_rings": len(t.GossipRings),
		"coordinators": len(t.Coordinators),
	}
}

// Reseed readies a state restored from a backup to seed a new cluster
// whose log goes on after index:
//
//   - the state's index becomes index, and watchers that saw less get full
//     maps (the horizon): a peer resuming its watch with an index from the
//     old cluster gets the whole map of the new one, even where the old
//     cluster went on past the backup;
//   - the old cluster's coordinators are forgotten: the new ones register
//     themselves as they start, and the maps then list only them;
//   - no peer's watch is held: no coordinator of the new cluster holds one
//     yet (a peer is online again once it watches).
//
// index may not be below the current index.
func (s *Store) Reseed(index uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index < s.index {
		return fmt.Errorf("reseed state at index %d: it already reflects index %d", index, s.index)
	}
	s.index, s.applying = index, index
	clear(s.t.Coordinators)
	for _, p := range s.t.Peers {
		p.WatchedBy = ""
	}
	s.changes = nil
	s.horizon = index
	close(s.notify)
	s.notify = make(chan struct{})
	return nil
}

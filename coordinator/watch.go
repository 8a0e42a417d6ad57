package coordinator

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// keepaliveEvery is how often an idle watch stream gets a blank line, so
// both ends notice a dead connection.
const keepaliveEvery = 15 * time.Second

// handleNetmap streams a peer's network map as newline-delimited JSON: the
// whole map first (or, resuming with ?since=N, only what changed after N),
// then one delta per change that concerns the peer. A peer that falls too
// far behind the change log gets a full map again.
func (s *Server) handleNetmap(w http.ResponseWriter, r *http.Request, peerID string) {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "since %q is not an index", v))
			return
		}
		since = n
	}
	var vnet string
	s.store.Read(func(t *state.Tables, _ uint64) {
		if p, ok := t.Peers[peerID]; ok {
			vnet = p.VNet
		}
	})
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}

	s.touchMu.Lock()
	s.watchN[peerID]++
	s.touchMu.Unlock()
	defer func() {
		s.touchMu.Lock()
		if s.watchN[peerID]--; s.watchN[peerID] <= 0 {
			delete(s.watchN, peerID)
		}
		s.touched[peerID] = s.now()
		s.touchMu.Unlock()
	}()

	enc := json.NewEncoder(w)
	ka := time.NewTicker(keepaliveEvery)
	defer ka.Stop()
	for {
		ch := s.store.WatchCh()
		var upd *api.MapUpdate
		var index uint64
		s.store.ReadChanges(vnet, since, func(t *state.Tables, idx uint64, changed []string, global, ok bool) {
			index = idx
			switch {
			case since == 0 || !ok:
				upd = netmap.Full(t, idx, peerID)
				if upd == nil {
					upd = &api.MapUpdate{Index: idx, SelfRemoved: true}
				}
			case idx > since:
				upd = netmap.Delta(t, idx, peerID, changed, global)
			}
		})
		if upd != nil {
			if err := enc.Encode(upd); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			if upd.SelfRemoved {
				return
			}
		}
		if index > since {
			since = index
		}
		select {
		case <-r.Context().Done():
			return
		case <-ch:
		case <-ka.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

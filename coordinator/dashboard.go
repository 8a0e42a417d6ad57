package coordinator

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// The dashboard (package ui, served under /ui/) follows changes with a long
// poll: GET /v1/changes?after=N answers as soon as this replica's applied
// index passes N, or after the wait (?wait=SECONDS, default and at most
// changesMaxWait) with the index unchanged. Which coordinator holds each
// agent's watch is replicated (marks.go), so a killed gateway moves the
// index within a few tens of milliseconds and the page sees its route move.
const (
	changesMaxWait = 20 * time.Second // well under apiWriteTimeout
	// changesQuiet gathers a burst of changes into one answer.
	changesQuiet = 20 * time.Millisecond
)

// changeWaits ends the open long polls when the API server shuts down, so
// an open dashboard does not hold up a coordinator's exit.
type changeWaits struct {
	mu   sync.Mutex
	done chan struct{} // guarded by mu; made on first use, closed by stop
	n    atomic.Int64  // long polls open now
}

// open is how many long polls are open now.
func (c *changeWaits) open() int64 { return c.n.Load() }

func (c *changeWaits) ch() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	return c.done
}

func (c *changeWaits) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}

// handleChanges answers GET /v1/changes: {"index": N}, this replica's
// applied index once it is past ?after (at once when it already is).
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := strconv.ParseUint(q.Get("after"), 10, 64)
	if err != nil && q.Get("after") != "" {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "after=%q is not an index (a whole number from a previous answer)", q.Get("after")))
		return
	}
	wait := changesMaxWait
	if v := q.Get("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || time.Duration(n)*time.Second > changesMaxWait {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "wait=%q must be whole seconds from 0 to %d", v, int(changesMaxWait/time.Second)))
			return
		}
		wait = time.Duration(n) * time.Second
	}
	s.changeWaits.n.Add(1)
	defer s.changeWaits.n.Add(-1)
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	stop := s.changeWaits.ch()
	for {
		ch := s.store.WatchCh()
		if idx := s.store.Index(); idx > after {
			if after != 0 { // a burst of changes: answer once, after it
				quiet := time.NewTimer(changesQuiet)
				select {
				case <-quiet.C:
				case <-r.Context().Done():
				}
				quiet.Stop()
				idx = s.store.Index()
			}
			writeJSON(w, http.StatusOK, api.Changes{Index: idx})
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			writeJSON(w, http.StatusOK, api.Changes{Index: s.store.Index()})
			return
		case <-stop:
			writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s is shutting down; retry on another", s.cfg.Name))
			return
		case <-r.Context().Done():
			return
		}
	}
}

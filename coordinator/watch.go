package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// keepaliveEvery is how often an idle watch stream gets a blank line, so
// both ends notice a dead connection.
const keepaliveEvery = 15 * time.Second

// A round of fan-out costs one write per watcher, so changes are gathered
// for a window that grows with the number of watchers: at least
// coalesceMin, coalescePerWatcher per watcher, at most coalesceMax. With
// 10,000 watchers a burst of joins goes out every 0.3 s, which keeps the
// fan-out to a fraction of a core while each change still reaches every
// watcher well within a second.
const (
	coalesceMin        = 20 * time.Millisecond
	coalescePerWatcher = 100 * time.Microsecond
	coalesceMax        = 400 * time.Millisecond
)

// With burstWatchers or more watchers, a window with burstChanges or more
// network-map changes is a burst of writes (a fleet joining at once): the
// round then waits until no change has come for quietGap, up to burstMax
// after its first change. The fan-out of a burst then costs one write per
// watcher, after the burst, instead of taking the CPU the write path needs
// while it lasts. quietGap rides out a slow disk sync or a GC pause in the
// middle of a burst.
const (
	burstWatchers = 100 // below this, fan-out is cheap: no need to wait
	burstChanges  = 20
	quietGap      = 200 * time.Millisecond
	burstTick     = 25 * time.Millisecond
	burstMax      = 2 * time.Second
)

// writeSlots bounds how many watch streams a coordinator writes to at
// once. Thousands of watchers taking a large delta at the same moment
// would otherwise all be runnable together, and Raft's heartbeats would
// wait behind them long enough for followers to call elections (seen with
// 10,000 watchers on 2 cores). A write still blocked after slotHold (the
// peer is not reading) gives its slot up. watchWriteTimeout is how long
// one write may take before the stream is dropped (the peer resumes from
// its index).
const (
	writeSlots        = 8
	slotHold          = 100 * time.Millisecond
	watchWriteTimeout = 30 * time.Second
)

// subQueue is how many deltas may wait for a slow watcher before it is
// dropped to a fresh full map.
const subQueue = 64

// fanout computes each network-map delta once per vnet, encodes it once and
// hands the same bytes to every watcher of that vnet. A watcher that does
// not keep up is never waited for: its queue is dropped and it catches up
// with a fresh full map.
type fanout struct {
	s *Server

	mu   sync.Mutex
	last map[string]uint64               // guarded by mu: vnet -> index fanned out so far
	subs map[string]map[*subscriber]bool // guarded by mu: vnet -> watchers
	n    atomic.Int64                    // number of watchers
	// In a vnet with a policy each watcher sees its own part of the vnet
	// (netmap.View). prev is the View at last (nil: no policy, or not
	// known); views is the latest View computed, which the full maps of
	// a round of resyncs share. Both guarded by mu.
	prev  map[string]*netmap.View
	views map[string]*netmap.View

	slots chan struct{} // write slots (writeSlots)
}

// subscriber is one open watch.
type subscriber struct {
	peerID, vnet string
	compress     bool        // it asked for large updates deflated (api.CompressLine)
	ch           chan []byte // encoded updates
	since        uint64      // guarded by fanout.mu: index the watcher holds
	lagging      atomic.Bool // its queue overflowed: send it a full map
}

func newFanout(s *Server) *fanout {
	return &fanout{s: s, last: map[string]uint64{}, subs: map[string]map[*subscriber]bool{}, slots: make(chan struct{}, writeSlots),
		prev: map[string]*netmap.View{}, views: map[string]*netmap.View{}}
}

// run fans out changes until ctx is done.
func (f *fanout) run(ctx context.Context) {
	for {
		ch := f.s.store.WatchCh()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		first, start := time.Now(), f.s.store.MapChanges()
		wait := min(max(coalesceMin, time.Duration(f.n.Load())*coalescePerWatcher), coalesceMax)
		if !sleepCtx(ctx, wait) { // gather the rest of a burst
			return
		}
		if n := f.s.store.MapChanges(); n-start >= burstChanges && f.n.Load() >= burstWatchers {
			for still := time.Now(); time.Since(still) < quietGap && time.Since(first) < burstMax; {
				if !sleepCtx(ctx, burstTick) {
					return
				}
				if now := f.s.store.MapChanges(); now != n {
					n, still = now, time.Now()
				}
			}
		}
		f.publish()
		f.s.metrics.fanoutRounds.Inc()
		f.s.metrics.fanoutLag.Observe(time.Since(first).Seconds())
	}
}

// sleepCtx waits d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// publish sends every vnet's changes since the last round.
func (f *fanout) publish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for vnet, subs := range f.subs {
		if len(subs) == 0 {
			delete(f.subs, vnet)
			delete(f.last, vnet)
			delete(f.prev, vnet)
			delete(f.views, vnet)
			continue
		}
		last, prev := f.last[vnet], f.prev[vnet]
		var upd *api.MapUpdate
		var removed map[string]bool
		var horizon, global bool
		var view *netmap.View
		var fulls map[*subscriber]*api.MapUpdate
		f.s.store.ReadChanges(vnet, last, func(t *state.Tables, idx uint64, changed []string, glob, ok bool) {
			f.last[vnet] = idx
			if !ok {
				view = f.viewLocked(t, idx, vnet)
				horizon = true
				return
			}
			// No policy change since last (ok): prev still holds unless
			// a changed peer changed to the policy.
			if view = prev.Reuse(t, idx, changed); view != nil && t.Policy(vnet) != nil {
				f.views[vnet] = view
			} else {
				view = f.viewLocked(t, idx, vnet)
			}
			global = glob
			upd, removed = netmap.VNetDelta(t, idx, vnet, changed, global)
			if upd != nil && view != nil {
				fulls = ownChanges(t, idx, subs, changed, view, prev, last)
			}
		})
		f.prev[vnet] = view
		if horizon {
			for sub := range subs {
				sub.lagging.Store(true)
				signal(sub)
			}
			continue
		}
		if upd == nil {
			continue
		}
		if view != nil {
			sendFiltered(subs, upd, global, removed, view, prev, last, fulls)
			continue
		}
		data, err := json.Marshal(upd)
		if err != nil {
			continue
		}
		data = append(data, '\n')
		var gone, zdata []byte
		for sub := range subs {
			if sub.since >= upd.Index || sub.lagging.Load() {
				continue
			}
			msg := data
			if sub.compress && len(data) >= api.CompressMin {
				if zdata == nil { // once per round, for every watcher that asked
					if zdata, err = api.CompressLine(data[:len(data)-1]); err != nil {
						zdata = data
					}
				}
				msg = zdata
			}
			if removed[sub.peerID] {
				if gone == nil {
					gone = goneLine(upd.Index)
				}
				msg = gone
			}
			offer(sub, msg, upd.Index)
		}
	}
}

// offer queues msg for sub, which then holds index; a watcher whose queue
// is full is marked lagging and will get a full map.
func offer(sub *subscriber, msg []byte, index uint64) {
	select {
	case sub.ch <- msg:
		sub.since = index
	default:
		sub.lagging.Store(true)
		signal(sub)
	}
}

func goneLine(index uint64) []byte {
	b, _ := json.Marshal(&api.MapUpdate{Index: index, SelfRemoved: true})
	return append(b, '\n')
}

// viewLocked returns vnet's View at idx (nil when it has no policy),
// computing it once per index; f.mu is held, and t is the state at idx.
func (f *fanout) viewLocked(t *state.Tables, idx uint64, vnet string) *netmap.View {
	if t.Policy(vnet) == nil {
		delete(f.views, vnet)
		return nil
	}
	if v := f.views[vnet]; v != nil && v.Index == idx {
		return v
	}
	v := netmap.NewView(t, idx, vnet)
	f.views[vnet] = v
	return v
}

// ownChanges returns full maps for the watchers of a vnet with a policy
// whose own entry changed so that what they see may have changed: its
// subnets moved (prev says what they were at last), or the watcher came
// in during the round and holds the map of an index after last. Any
// other watcher sees the same peers as before except those that changed.
func ownChanges(t *state.Tables, idx uint64, subs map[*subscriber]bool, changed []string, view, prev *netmap.View, last uint64) map[*subscriber]*api.MapUpdate {
	set := make(map[string]bool, len(changed))
	for _, id := range changed {
		set[id] = true
	}
	var out map[*subscriber]*api.MapUpdate
	for sub := range subs {
		if !set[sub.peerID] || sub.since >= idx || sub.lagging.Load() {
			continue
		}
		if sub.since <= last && view.SameEntry(prev, sub.peerID) {
			continue
		}
		if u := netmap.FullIn(t, idx, sub.peerID, view); u != nil {
			if out == nil {
				out = map[*subscriber]*api.MapUpdate{}
			}
			out[sub] = u
		}
	}
	return out
}

// sendFiltered fans out upd, the delta of a vnet with a policy, giving
// each watcher only the changed peers it may see. A changed peer it may
// not see is sent as removed when it may hold it from before: the peer's
// entry changed since prev (its subnets decide who sees it), or the
// watcher's map is of an index after last. Watchers that get the same
// part of the delta share one encoding, and each changed peer is encoded
// once however many watchers get it.
func sendFiltered(subs map[*subscriber]bool, upd *api.MapUpdate, global bool, removed map[string]bool, view, prev *netmap.View, last uint64, fulls map[*subscriber]*api.MapUpdate) {
	peerJSON := make([][]byte, len(upd.Peers)) // on first use
	sameEntry := make([]int8, len(upd.Peers))  // 0: not known yet, 1: not held unless seen, -1: may be held
	type encoded struct{ plain, zipped []byte }
	lines := map[string]*encoded{} // by key: what a watcher gets of each changed peer
	key := make([]byte, len(upd.Peers))
	var gone []byte
	for sub := range subs {
		if sub.since >= upd.Index || sub.lagging.Load() {
			continue
		}
		if removed[sub.peerID] {
			if gone == nil {
				gone = goneLine(upd.Index)
			}
			offer(sub, gone, upd.Index)
			continue
		}
		if full := fulls[sub]; full != nil {
			b, err := json.Marshal(full)
			if err != nil {
				continue
			}
			b = append(b, '\n')
			if sub.compress && len(b) >= api.CompressMin {
				if z, err := api.CompressLine(b[:len(b)-1]); err == nil {
					b = z
				}
			}
			offer(sub, b, upd.Index)
			continue
		}
		fresh := sub.since > last
		for k := range upd.Peers {
			id := upd.Peers[k].ID
			switch {
			case view.Sees(sub.peerID, id):
				key[k] = 'u'
			case fresh:
				key[k] = 'r'
			default:
				if sameEntry[k] == 0 {
					// A peer new since prev was in no map yet.
					sameEntry[k] = -1
					if prev != nil && (!prev.Has(id) || view.SameEntry(prev, id)) {
						sameEntry[k] = 1
					}
				}
				key[k] = '-'
				if sameEntry[k] < 0 {
					key[k] = 'r'
				}
			}
		}
		e := lines[string(key)]
		if e == nil {
			e = &encoded{}
			lines[string(key)] = e
			h := api.MapUpdate{Index: upd.Index, GossipKeys: upd.GossipKeys, Coordinators: upd.Coordinators,
				STUNServers: upd.STUNServers, Removed: slices.Clone(upd.Removed)}
			var peers [][]byte
			for k, c := range key {
				switch c {
				case 'u':
					if peerJSON[k] == nil {
						peerJSON[k], _ = json.Marshal(&upd.Peers[k])
					}
					peers = append(peers, peerJSON[k])
				case 'r':
					h.Removed = append(h.Removed, upd.Peers[k].ID)
				}
			}
			if len(peers) > 0 || len(h.Removed) > 0 || global {
				e.plain = encodeWithPeers(&h, peers)
			}
		}
		if e.plain == nil {
			continue // nothing it sees changed
		}
		msg := e.plain
		if sub.compress && len(msg) >= api.CompressMin {
			if e.zipped == nil {
				var err error
				if e.zipped, err = api.CompressLine(msg[:len(msg)-1]); err != nil {
					e.zipped = msg
				}
			}
			msg = e.zipped
		}
		offer(sub, msg, upd.Index)
	}
}

// encodeWithPeers encodes u, whose Peers must be empty, as one line with
// peers (each an encoded api.MapPeer) as its "peers".
func encodeWithPeers(u *api.MapUpdate, peers [][]byte) []byte {
	b, err := json.Marshal(u)
	if err != nil {
		return nil
	}
	if len(peers) > 0 {
		b = append(b[:len(b)-1], `,"peers":[`...) // u always has "index": never {}
		for i, p := range peers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, p...)
		}
		b = append(b, "]}"...)
	}
	return append(b, '\n')
}

// signal wakes a lagging watcher whose queue is full: an empty message
// means "resynchronise"; if even that does not fit, the watcher will find
// the lagging flag after its queue drains.
func signal(sub *subscriber) {
	select {
	case sub.ch <- nil:
	default:
	}
}

// subscribe registers a watch and returns its first update: the full map,
// or (resuming with since) the changes after since. nil means nothing new.
func (f *fanout) subscribe(peerID, vnet string, since uint64, compress bool) (*subscriber, *api.MapUpdate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sub := &subscriber{peerID: peerID, vnet: vnet, compress: compress, ch: make(chan []byte, subQueue)}
	upd := f.catchUpLocked(sub, since)
	if len(f.subs[vnet]) == 0 {
		// The first watcher of the vnet: fan out from what it holds.
		f.subs[vnet] = map[*subscriber]bool{}
		f.last[vnet] = sub.since
	}
	f.subs[vnet][sub] = true
	f.n.Add(1)
	return sub, upd
}

// resync gives a lagging watcher a fresh full map.
func (f *fanout) resync(sub *subscriber) *api.MapUpdate {
	f.s.metrics.fanoutResyncs.Inc()
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(sub.ch) > 0 {
		<-sub.ch
	}
	sub.lagging.Store(false)
	return f.catchUpLocked(sub, 0)
}

// catchUpLocked computes what sub needs to be current, and records the
// index it will hold; f.mu is held.
func (f *fanout) catchUpLocked(sub *subscriber, since uint64) *api.MapUpdate {
	var upd *api.MapUpdate
	f.s.store.ReadChanges(sub.vnet, since, func(t *state.Tables, idx uint64, changed []string, global, ok bool) {
		switch {
		case since == 0 || !ok:
			upd = netmap.FullIn(t, idx, sub.peerID, f.viewLocked(t, idx, sub.vnet))
			if upd == nil {
				upd = &api.MapUpdate{Index: idx, SelfRemoved: true}
			}
		case idx > since:
			upd = netmap.DeltaIn(t, idx, sub.peerID, changed, global, f.viewLocked(t, idx, sub.vnet))
		}
		sub.since = max(idx, since)
	})
	return upd
}

func (f *fanout) unsubscribe(sub *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subs[sub.vnet][sub] {
		delete(f.subs[sub.vnet], sub)
		f.n.Add(-1)
	}
}

// handleNetmap streams a peer's network map as newline-delimited JSON: the
// whole map first (or, resuming with ?since=N, only what changed after N),
// then the deltas of its vnet as the fan-out publishes them. A peer that
// falls behind gets a full map again. With ?compress=1, deltas of
// api.CompressMin bytes or more come deflated (api.CompressLine).
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
	// At most maxWatchesPerPeer streams per credential; past that the
	// oldest makes way (an agent that reconnected left it half dead),
	// unless it is too young to be abandoned.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	release, err := s.openWatch(peerID, cancel)
	if err != nil {
		writeError(w, err)
		return
	}
	defer release()
	// The server's read timeout bounds a request's headers and body; a
	// watch has neither after its request and lives for hours. (net/http
	// lifts the deadline itself once a request without a body is in; the
	// watch does not rely on that.)
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)

	// Which coordinator holds the watch goes into the replicated state in
	// batches (marks.go), so every coordinator sees a peer go offline the
	// moment its stream drops (a SIGKILLed gateway, say).
	s.watchStarted(peerID)
	defer s.watchEnded(peerID)
	sub, first := s.fanout.subscribe(peerID, vnet, since, r.URL.Query().Get(api.WatchCompressParam) == "1")
	defer s.fanout.unsubscribe(sub)
	// write holds one of the fan-out's write slots while it writes and
	// flushes; a peer that takes nothing for watchWriteTimeout loses its
	// stream (it resumes from its index).
	write := func(f func() error) bool {
		select {
		case s.fanout.slots <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		// A write that blocks (the peer is not reading) gives its slot
		// back after slotHold and goes on without one: it takes no CPU
		// while blocked, and a dead peer must not hold up the others.
		var once sync.Once
		release := func() { once.Do(func() { <-s.fanout.slots }) }
		t := time.AfterFunc(slotHold, release)
		defer func() { t.Stop(); release() }()
		rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		err := f()
		if err == nil && flusher != nil {
			flusher.Flush()
		}
		rc.SetWriteDeadline(time.Time{})
		return err == nil
	}
	enc := json.NewEncoder(w)
	send := func(upd *api.MapUpdate) bool {
		if upd == nil {
			return true
		}
		return write(func() error { return enc.Encode(upd) }) && !upd.SelfRemoved
	}
	if !send(first) {
		return
	}
	if first == nil && !write(func() error { return nil }) {
		return
	}
	limitSendBuffer(r.Context())
	ka := time.NewTicker(keepaliveEvery)
	defer ka.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-sub.ch:
			if sub.lagging.Load() {
				if !send(s.fanout.resync(sub)) {
					return
				}
				continue
			}
			if msg == nil {
				continue
			}
			if !write(func() error { _, err := w.Write(msg); return err }) {
				return
			}
			if len(msg) < 80 && isSelfRemoved(msg) {
				return
			}
		case <-ka.C:
			if !write(func() error { _, err := w.Write([]byte("\n")); return err }) {
				return
			}
		}
	}
}

// Watch limits per credential: maxWatchesPerPeer streams at once; when a
// peer opens one more, the oldest is ended if it has been open for
// watchEvictAfter, else the new one is refused with CodeTooMany.
const (
	maxWatchesPerPeer = 4
	watchEvictAfter   = 2 * time.Second
)

// openWatch registers a watch of peerID that cancel ends; release
// unregisters it.
func (s *Server) openWatch(peerID string, cancel context.CancelFunc) (release func(), err error) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	open := s.watches[peerID]
	if len(open) >= maxWatchesPerPeer {
		oldest := open[0]
		if time.Since(oldest.since) < s.watchEvictAfter {
			return nil, api.Errorf(api.CodeTooMany, "this peer already holds %d network-map watches; close one or retry in a few seconds", len(open))
		}
		oldest.cancel()
		open = open[1:]
	}
	ow := &openWatch{since: time.Now(), cancel: cancel}
	s.watches[peerID] = append(open, ow)
	return func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		rest := slices.DeleteFunc(s.watches[peerID], func(x *openWatch) bool { return x == ow })
		if len(rest) == 0 {
			delete(s.watches, peerID)
		} else {
			s.watches[peerID] = rest
		}
	}, nil
}

// openWatch is one open network-map watch.
type openWatch struct {
	since  time.Time
	cancel context.CancelFunc
}

// connKey is the request-context key of the client's connection.
type connKey struct{}

// watchSendBuffer bounds the kernel's send buffer of a watch once its first
// map is out. Deltas are encoded once and shared by every watcher, so what
// a slow reader has not taken yet stays in that one copy instead of in
// thousands of autotuned socket buffers: a burst of joins fanned out to
// 10,000 watchers otherwise drives the host into TCP memory pressure,
// which stalls every socket. (Linux doubles the value for its bookkeeping.)
const watchSendBuffer = 64 << 10

func limitSendBuffer(ctx context.Context) {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		tcp.SetWriteBuffer(watchSendBuffer)
	}
}

func isSelfRemoved(msg []byte) bool {
	var u struct {
		SelfRemoved bool `json:"self_removed"`
	}
	return json.Unmarshal(msg, &u) == nil && u.SelfRemoved
}

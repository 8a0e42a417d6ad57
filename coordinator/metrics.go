package coordinator

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/metrics"
)

// Prometheus metrics of a coordinator. Two kinds: events counted where
// they happen (HTTP requests, joins, Raft writes, fan-out rounds), and
// gauges read from Raft, the replica and the fan-out when scraped
// (stateCollector), so a scrape costs nothing between scrapes. They are
// served at /metrics on the API (an admin credential, read-only ones
// included) and, with Config.MetricsListen, without one on a plain-HTTP
// listener for scrapers.

const subsystem = "coordinator"

// Label values of meshd_coordinator_tokens.
const (
	tokenActive  = "active"
	tokenUsed    = "used"
	tokenExpired = "expired"
	tokenRevoked = "revoked"
)

// joinOK is the result label of a join that succeeded; a refused one is
// labelled with its API error code.
const joinOK = "ok"

// watchPattern is the route of the network-map stream: its requests last
// hours, so they are counted but kept out of the latency histogram.
const watchPattern = "GET /v1/netmap"

// coordMetrics are the counters and histograms a coordinator updates as
// things happen; every field is safe for concurrent use.
type coordMetrics struct {
	reg *prometheus.Registry

	requests       *prometheus.CounterVec   // route, code
	requestSeconds *prometheus.HistogramVec // route
	joins          *prometheus.CounterVec   // result
	commitSeconds  prometheus.Histogram
	applySeconds   prometheus.Histogram
	fanoutRounds   prometheus.Counter
	fanoutLag      prometheus.Histogram
	fanoutResyncs  prometheus.Counter
}

// latencyBuckets suit calls that take a millisecond on a quiet LAN and
// seconds when something is wrong.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newCoordMetrics() *coordMetrics {
	ns := metrics.Namespace
	return &coordMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: subsystem, Name: "http_requests_total",
			Help: "API requests answered, by route (the API's route pattern, such as \"GET /v1/peers\"; \"/\" for unknown paths) and HTTP status code."},
			[]string{"route", "code"}),
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: subsystem, Name: "http_request_duration_seconds",
			Help: "Time to answer an API request, by route (network-map streams are left out: they last hours).", Buckets: latencyBuckets},
			[]string{"route"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: subsystem, Name: "joins_total",
			Help: "Peer joins answered by this coordinator, by result: ok, or the API error code of a refusal (token_used_up, token_expired, ...)."},
			[]string{"result"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: subsystem, Name: "raft_commit_seconds",
			Help: "On the leader: time from handing a command to Raft until a quorum has committed it and the leader has applied it.", Buckets: latencyBuckets}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: subsystem, Name: "raft_apply_seconds",
			Help: "Time of a write through this coordinator: from raftApply (forwarded to the leader when following) until this replica has applied it.", Buckets: latencyBuckets}),
		fanoutRounds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: subsystem, Name: "fanout_rounds_total",
			Help: "Rounds of network-map fan-out: each sends every watcher the changes since the last."}),
		fanoutLag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: subsystem, Name: "fanout_lag_seconds",
			Help: "Time from the first change of a round being applied to the round's deltas being queued for every watcher.", Buckets: latencyBuckets}),
		fanoutResyncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: subsystem, Name: "fanout_resyncs_total",
			Help: "Full network maps sent to watchers that fell behind (their queue overflowed)."}),
	}
}

func (m *coordMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.requestSeconds, m.joins, m.commitSeconds, m.applySeconds, m.fanoutRounds, m.fanoutLag, m.fanoutResyncs}
}

// MetricNames lists every metric name a coordinator serves (the Grafana
// dashboard may use only these).
func MetricNames() []string {
	cs := append(newCoordMetrics().collectors(), &stateCollector{})
	return metrics.Names(append(cs, metrics.Runtime()...)...)
}

// registerMetrics builds the registry /metrics serves.
func (s *Server) registerMetrics() {
	m := s.metrics
	m.reg = metrics.NewRegistry()
	m.reg.MustRegister(m.collectors()...)
	m.reg.MustRegister(&stateCollector{s: s})
}

// MetricsHandler serves this coordinator's metrics without a credential
// (what Config.MetricsListen serves); the API's /metrics asks for one.
func (s *Server) MetricsHandler() http.Handler { return metrics.Handler(s.metrics.reg) }

// handleMetrics is the API's /metrics.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	s.MetricsHandler().ServeHTTP(w, r)
}

// serveMetrics serves the plain-HTTP metrics listener until ctx is done.
func (s *Server) serveMetrics(ctx context.Context) {
	if s.metricsLn == nil {
		return
	}
	if err := metrics.Serve(ctx, s.metricsLn, s.metrics.reg); err != nil {
		s.log.Warn("metrics listener stopped", "err", err)
	}
}

// instrument counts every API request by its route pattern and status
// code, and times it. The pattern, never the raw path, is the label: a
// scanner trying paths adds no series.
func (s *Server) instrument(mux *http.ServeMux, next http.Handler) http.Handler {
	m := s.metrics
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		// ServeMux sets the request's Pattern when it matches; a request
		// answered before it (a replica catching up) is matched here.
		pattern := r.Pattern
		if pattern == "" {
			_, pattern = mux.Handler(r)
		}
		code := rec.status
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
		if pattern != watchPattern {
			m.requestSeconds.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
		}
		if pattern == joinPattern {
			result := joinOK
			if code != http.StatusOK {
				result = rec.apiCode
				if result == "" {
					result = api.CodeInternal
				}
			}
			m.joins.WithLabelValues(result).Inc()
		}
	})
}

// joinPattern is the route of a join.
const joinPattern = "POST /v1/join"

// statusRecorder notes the status code of an answer and, when writeError
// wrote it, the API error code. It keeps Flush (the network-map stream
// flushes every update) and Unwrap (for http.ResponseController).
type statusRecorder struct {
	http.ResponseWriter
	status  int
	apiCode string
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// noteAPIError records an API error code on the recorder under w, if any.
func noteAPIError(w http.ResponseWriter, code string) {
	for {
		switch x := w.(type) {
		case *statusRecorder:
			x.apiCode = code
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return
		}
	}
}

// stateCollector reads Raft, the replica and the fan-out when scraped.
type stateCollector struct {
	s *Server // nil: describe only (MetricNames)
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, subsystem, name), help, labels, nil)
}

var (
	descRaftState = desc("raft_state", "1 for the Raft state this coordinator is in (leader, follower, candidate, shutdown), 0 for the others.", "state")
	descTerm      = desc("raft_term", "Current Raft term.")
	descCommit    = desc("raft_commit_index", "Index of the last Raft log entry known to be committed.")
	descApplied   = desc("raft_applied_index", "Index of the last Raft log entry this replica has applied.")
	descLastLog   = desc("raft_last_log_index", "Index of the last entry in this node's Raft log.")
	descContact   = desc("raft_last_contact_seconds", "Seconds since a follower last heard from the leader; 0 on the leader. Absent before any contact.")
	descLogSize   = desc("raft_log_entries", "Entries in the Raft log store (those not yet compacted into a snapshot).")
	descSnaps     = desc("raft_snapshots", "Raft snapshots kept on disk.")
	descSnapIndex = desc("raft_last_snapshot_index", "Last log index the newest snapshot covers; 0 without one.")
	descCaughtUp  = desc("caught_up", "1 once this replica has replayed its log and serves, 0 while it catches up.")
	descWatchers  = desc("watchers", "Open network-map streams (agents watching) on this coordinator.")
	descTokens    = desc("tokens", "Join tokens in the replicated state, by state: active, used (no uses left), expired, revoked.", "state")
	descPeers     = desc("peers", "Peers in the replicated state, by vnet and whether they are online.", "vnet", "online")
	descInfo      = desc("info", "Always 1; labels name this coordinator and its build.", "name", "version")
)

var raftStates = []raft.RaftState{raft.Leader, raft.Follower, raft.Candidate, raft.Shutdown}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descTerm, descCommit, descApplied, descLastLog, descContact,
		descLogSize, descSnaps, descSnapIndex, descCaughtUp, descWatchers, descTokens, descPeers, descInfo} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descInfo, 1, s.cfg.Name, s.cfg.Version)
	st := s.raft.State()
	for _, x := range raftStates {
		v := 0.0
		if x == st {
			v = 1
		}
		gauge(descRaftState, v, strings.ToLower(x.String()))
	}
	gauge(descTerm, float64(s.raft.CurrentTerm()))
	gauge(descCommit, float64(s.raft.CommitIndex()))
	gauge(descApplied, float64(s.raft.AppliedIndex()))
	gauge(descLastLog, float64(s.raft.LastIndex()))
	if st == raft.Leader {
		gauge(descContact, 0)
	} else if last := s.raft.LastContact(); !last.IsZero() {
		gauge(descContact, time.Since(last).Seconds())
	}
	if s.logs != nil {
		first, ferr := s.logs.FirstIndex()
		last, lerr := s.logs.LastIndex()
		if ferr == nil && lerr == nil {
			n := 0.0
			if last >= first && last > 0 {
				n = float64(last - first + 1)
			}
			gauge(descLogSize, n)
		}
	}
	if s.snapStore != nil {
		if snaps, err := s.snapStore.List(); err == nil {
			gauge(descSnaps, float64(len(snaps)))
			idx := 0.0
			if len(snaps) > 0 {
				idx = float64(snaps[0].Index) // newest first
			}
			gauge(descSnapIndex, idx)
		}
	}
	caught := 0.0
	if s.caughtUp() {
		caught = 1
	}
	gauge(descCaughtUp, caught)
	gauge(descWatchers, float64(s.fanout.n.Load()))

	now := s.now()
	tokens := map[string]int{tokenActive: 0, tokenUsed: 0, tokenExpired: 0, tokenRevoked: 0}
	type vnetCount struct{ on, off int }
	peers := map[string]*vnetCount{}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for _, tok := range t.Tokens {
			tokens[tokenState(tok, now)]++
		}
		for name := range t.VNets {
			peers[name] = &vnetCount{}
		}
		for _, p := range t.Peers {
			vc := peers[p.VNet]
			if vc == nil {
				vc = &vnetCount{}
				peers[p.VNet] = vc
			}
			if s.online(p, now) {
				vc.on++
			} else {
				vc.off++
			}
		}
	})
	for st, n := range tokens {
		gauge(descTokens, float64(n), st)
	}
	for vnet, vc := range peers {
		gauge(descPeers, float64(vc.on), vnet, "true")
		gauge(descPeers, float64(vc.off), vnet, "false")
	}
}

// tokenState is a join token's state label: revoked, expired, used (no
// uses left) or active.
func tokenState(t *state.Token, now time.Time) string {
	switch {
	case t.Revoked:
		return tokenRevoked
	case !now.Before(t.Expires):
		return tokenExpired
	case t.UsesLeft <= 0:
		return tokenUsed
	default:
		return tokenActive
	}
}

// listenMetrics binds Config.MetricsListen.
func listenMetrics(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	return metrics.Listen(addr)
}

// Package coordinator is meshd's control plane: a Raft-replicated store of
// vnets, peers, join tokens and keys, served over an HTTPS API to peers and
// admins. Every coordinator serves reads and network-map watches from its own
// replica; writes go through Raft on the leader (followers forward them).
package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/relay"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// Member names a coordinator of the initial cluster.
type Member struct {
	Name     string // required
	RaftAddr string // required
}

// Config is the internal configuration of a coordinator.
type Config struct {
	Name       string         // required: unique in the cluster
	DataDir    string         // required unless RaftStores is set
	ClusterKey clusterkey.Key // required
	APIListen  string         // required: host:port of the HTTPS API
	// APIAdvertise is the URL peers and admins use; optional, derived from
	// APIListen when that names a specific address.
	APIAdvertise string
	RaftListen   string // required unless RaftTransport is set
	// RaftAdvertise is the address other coordinators dial; optional,
	// defaults to RaftListen.
	RaftAdvertise string
	// InitialCluster lists every member of a new cluster; optional, empty
	// means a single-node cluster of this node.
	InitialCluster []Member
	// Join lists API URLs of members of an existing cluster; optional,
	// not with InitialCluster. A node started with it and no state does
	// not bootstrap: it waits to be added (meshd cluster add) and catches
	// up from the leader, and serves once it has.
	Join []string
	// SnapshotThreshold, SnapshotInterval and TrailingLogs tune Raft's
	// snapshots (how many entries between two, how often to check, how
	// many entries to keep after one); optional.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64

	HeartbeatTimeout   time.Duration // optional
	ElectionTimeout    time.Duration // optional
	LeaderLeaseTimeout time.Duration // optional
	// EphemeralGrace is how long an ephemeral peer may stay offline before
	// it is removed; optional.
	EphemeralGrace time.Duration
	// GossipKeyGrace is how long a vnet's previous gossip key stays
	// accepted after a rotation (a peer removed, or an admin's); optional,
	// DefaultGossipKeyGrace.
	GossipKeyGrace time.Duration
	// STUNListen is the UDP address of STUN and of TURN over UDP;
	// optional, empty disables both.
	STUNListen string
	// RelayTLSListen is the TCP address of TURN over TLS; optional, empty
	// disables it.
	RelayTLSListen string
	// RelayTLSFallback lets the TLS relay take an ephemeral port of the
	// same host when RelayTLSListen's port is in use (a default address
	// that several coordinators on one host share); optional.
	RelayTLSFallback bool
	// RelayPortMin and RelayPortMax bound the UDP ports of relayed
	// addresses; optional, zero: any port the system picks.
	RelayPortMin, RelayPortMax uint16
	// RelayBandwidth caps each relay allocation in bytes per second in
	// each direction; optional, zero: unlimited.
	RelayBandwidth int64
	// STUNRequestRate caps the STUN and TURN requests over UDP one source
	// address may send per second (twice that at once); the rest are
	// dropped unanswered. Optional: zero means relay.DefaultRequestRate,
	// negative means no cap.
	STUNRequestRate int
	// RelayCredentialTTL is how long a credential from GET /v1/relay is
	// good for; optional.
	RelayCredentialTTL time.Duration
	// RelayURLs are external TURN servers handed to peers instead of the
	// coordinators' own relays (turn:HOST:PORT[?transport=udp|tcp] or
	// turns:HOST:PORT); optional. With them, the built-in relay answers
	// STUN only. RelaySecret is their TURN REST shared secret (coturn's
	// static-auth-secret); required with RelayURLs.
	RelayURLs   []string
	RelaySecret []byte
	// APIReadTimeout bounds how long a request's headers and body may take
	// to arrive (a network-map watch lifts it once its request is in);
	// optional, DefaultAPIReadTimeout.
	APIReadTimeout time.Duration
	// APIIdleTimeout closes a kept-alive connection that has carried no
	// request for this long; optional, DefaultAPIIdleTimeout.
	APIIdleTimeout time.Duration
	// OnlineWindow is how recently a peer must have been heard from to
	// count as online; optional.
	OnlineWindow time.Duration
	// Version is the build version this coordinator records beside its
	// feature level (cluster versions, feature-gate errors); optional.
	Version string
	// MetricsListen is a host:port where /metrics is served in plain HTTP
	// without a credential, for scrapers; optional, empty: only the API's
	// /metrics (admin credential) serves them.
	MetricsListen string

	Logger *slog.Logger     // optional
	Now    func() time.Time // optional

	// RaftTransport and RaftStores replace the TLS transport and disk
	// stores (in-process tests); optional.
	RaftTransport raft.Transport
	RaftStores    *RaftStores
}

// RaftStores are the stores Raft keeps its log, term and snapshots in.
type RaftStores struct {
	Log      raft.LogStore
	Stable   raft.StableStore
	Snapshot raft.SnapshotStore
}

func (c *Config) setDefaults() {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = DefaultLeaderLeaseTimeout
	}
	if c.EphemeralGrace == 0 {
		c.EphemeralGrace = 10 * time.Minute
	}
	if c.RelayCredentialTTL == 0 {
		c.RelayCredentialTTL = DefaultRelayCredentialTTL
	}
	if c.APIReadTimeout == 0 {
		c.APIReadTimeout = DefaultAPIReadTimeout
	}
	if c.APIIdleTimeout == 0 {
		c.APIIdleTimeout = DefaultAPIIdleTimeout
	}
	if c.GossipKeyGrace == 0 {
		c.GossipKeyGrace = DefaultGossipKeyGrace
	}
	if c.OnlineWindow == 0 {
		c.OnlineWindow = 45 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	if err := state.ValidName("coordinator", c.Name); err != nil {
		return err
	}
	if c.DataDir == "" && c.RaftStores == nil {
		return errors.New("a data dir is required")
	}
	if c.APIListen == "" {
		return errors.New("an API listen address is required")
	}
	if c.RaftListen == "" && c.RaftTransport == nil {
		return errors.New("a raft listen address is required")
	}
	for _, u := range c.RelayURLs {
		if _, err := parseRelayURL(u); err != nil {
			return err
		}
	}
	if len(c.RelayURLs) > 0 && len(c.RelaySecret) == 0 {
		return errors.New("external relays need their shared secret")
	}
	if (c.RelayPortMin == 0) != (c.RelayPortMax == 0) || c.RelayPortMin > c.RelayPortMax {
		return fmt.Errorf("relay port range %d-%d: give both ends, lowest first", c.RelayPortMin, c.RelayPortMax)
	}
	if c.RelayCredentialTTL < time.Minute || c.RelayCredentialTTL > 24*time.Hour {
		return fmt.Errorf("relay credential lifetime %s: use 1m to 24h", c.RelayCredentialTTL)
	}
	if c.APIReadTimeout < 0 || c.APIIdleTimeout < 0 {
		return fmt.Errorf("API timeouts must be positive (read %s, idle %s)", c.APIReadTimeout, c.APIIdleTimeout)
	}
	if c.GossipKeyGrace < 0 {
		return fmt.Errorf("gossip key grace %s: use a positive duration", c.GossipKeyGrace)
	}
	if c.RelayBandwidth < 0 {
		return fmt.Errorf("relay bandwidth %d: use 0 (unlimited) or more", c.RelayBandwidth)
	}
	if len(c.Join) > 0 && len(c.InitialCluster) > 0 {
		return errors.New("--join and --initial-cluster exclude each other: a new cluster starts from --initial-cluster, a node added to a running one with --join")
	}
	for _, u := range c.Join {
		if p, err := url.Parse(u); err != nil || p.Scheme != "https" || p.Host == "" || p.Path != "" && p.Path != "/" {
			return fmt.Errorf("join URL %q must look like https://host:port", u)
		}
	}
	if len(c.InitialCluster) > 0 {
		found := false
		seen := map[string]bool{}
		for _, m := range c.InitialCluster {
			if seen[m.Name] {
				return fmt.Errorf("initial cluster names %q twice", m.Name)
			}
			seen[m.Name] = true
			if m.Name == c.Name {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("initial cluster does not include this node %q", c.Name)
		}
	}
	return nil
}

// API timeouts (Config.APIReadTimeout, Config.APIIdleTimeout); an agent
// sends a heartbeat every 10 s, so its connection is never idle that long.
const (
	DefaultAPIReadTimeout = 20 * time.Second
	DefaultAPIIdleTimeout = 90 * time.Second
	// apiWriteTimeout bounds writing one answer (a watch sets its own
	// deadline for each write).
	apiWriteTimeout = 30 * time.Second
)

// Server is one coordinator.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *state.Store
	fsm   *fsm.FSM
	raft  *raft.Raft
	trans raft.Transport
	logs  raft.LogStore // raft's log, read by lastCommandIndex
	reach reach         // which other coordinators answer (reach.go)

	leaderCheck leaderCheck // coalesced VerifyLeader rounds (readindex.go)

	apiLn     net.Listener
	apiURL    string
	http      *http.Server
	pin       [32]byte
	adminHash string
	internal  string       // bearer secret for coordinator-to-coordinator calls
	peerHTTP  *http.Client // to other coordinators, pinned to the API CA

	closers []io.Closer
	fanout  *fanout

	// Metrics (metrics.go); set up in New, read-only after. snapStore is
	// Raft's snapshot store (the log store is logs above), read when
	// scraped; metricsLn is the plain-HTTP metrics listener (nil: none).
	metrics   *coordMetrics
	snapStore raft.SnapshotStore
	metricsLn net.Listener

	// The relay (relay.go); set up in New, read-only after.
	relayUDP     *net.UDPConn  // STUN and TURN over UDP; nil when off
	relay        *relay.Server // nil when neither UDP nor TLS is on
	relayIP      netip.Addr    // relayed addresses; invalid: none
	relayTLSAddr string        // advertised TURN-over-TLS host:port
	relaySecret  [32]byte      // the built-in relays' shared secret
	relayURLs    []string      // external relays, canonical

	touchMu sync.Mutex
	touched map[string]time.Time // guarded by touchMu: peer id -> last heard
	watchN  map[string]int       // guarded by touchMu: open watches per peer
	// markDirty: peers whose watch started or ended here since the last
	// batch of watch marks (marks.go), with the time it ended (zero:
	// started); guarded by touchMu. markKick wakes the batcher.
	markDirty map[string]time.Time
	markKick  chan struct{}

	watchMu sync.Mutex
	watches map[string][]*openWatch // guarded by watchMu: peer id -> its open watches, oldest first
	// watchEvictAfter is watchEvictAfter, shorter in tests.
	watchEvictAfter time.Duration

	// Reported endpoints, rate-limited per peer (heartbeat.go); reportKick
	// wakes reportLoop when a report is held back.
	reportMu   sync.Mutex
	reports    map[string]*reported // guarded by reportMu
	reportKick chan struct{}

	closeOnce sync.Once
	// changeWaits ends the dashboard's long polls at shutdown (dashboard.go).
	changeWaits changeWaits

	// bootIndex is the last log index on disk at start; the replica serves
	// once it has applied that far (ready latches).
	bootIndex uint64
	started   time.Time
	ready     atomic.Bool
	// joining: started with Join and no state; set in New, read-only after.
	joining bool
}

// New builds a coordinator: it opens the stores, starts Raft and binds the
// API listener. Run serves.
func New(cfg Config) (_ *Server, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("coordinator config: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "coordinator", "node", cfg.Name),
		store:   state.New(),
		touched: map[string]time.Time{},
		watchN:  map[string]int{},

		markDirty: map[string]time.Time{},
		markKick:  make(chan struct{}, 1),

		watches:         map[string][]*openWatch{},
		watchEvictAfter: watchEvictAfter,

		reports:    map[string]*reported{},
		reportKick: make(chan struct{}, 1),

		metrics: newCoordMetrics(),
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.fsm = fsm.New(s.store, cfg.Logger)
	s.leaderCheck.verify = s.verifyLeader
	s.fanout = newFanout(s)
	apiCA := cfg.ClusterKey.APICA()
	s.pin = apiCA.Pin()
	admin := cfg.ClusterKey.AdminSecret()
	s.adminHash = token.HashSecret(admin)
	s.relaySecret = cfg.ClusterKey.RelaySecret()
	for _, u := range cfg.RelayURLs {
		c, _ := parseRelayURL(u) // checked by validate
		s.relayURLs = append(s.relayURLs, c)
	}
	in := cfg.ClusterKey.InternalSecret()
	s.internal = fmt.Sprintf("%x", in[:])
	peerTLS := tlspin.ClientConfig(s.pin)
	s.peerHTTP = &http.Client{
		Transport: &http.Transport{TLSClientConfig: peerTLS, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute},
		Timeout:   10 * time.Second,
	}

	// Raft.
	trans := cfg.RaftTransport
	if trans == nil {
		srvTLS, cliTLS, err := cfg.ClusterKey.RaftTLS(cfg.Name)
		if err != nil {
			return nil, err
		}
		adv := cfg.RaftAdvertise
		if adv == "" {
			adv = cfg.RaftListen
		}
		nt, err := newTLSTransport(cfg.RaftListen, adv, srvTLS, cliTLS, s.log)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, nt)
		trans = nt
	}
	s.trans = trans
	stores := cfg.RaftStores
	if stores == nil {
		logs, stable, snaps, closer, err := diskStores(cfg.DataDir, s.log)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, closer)
		stores = &RaftStores{Log: logs, Stable: stable, Snapshot: snaps}
	}
	s.logs = stores.Log
	s.snapStore = stores.Snapshot
	if err := s.bootstrap(stores.Log, stores.Stable, stores.Snapshot, trans); err != nil {
		return nil, err
	}
	r, err := raft.NewRaft(s.raftConfig(), s.fsm, stores.Log, stores.Stable, stores.Snapshot, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	s.bootIndex = r.LastIndex()
	s.started = time.Now()

	// The STUN/TURN socket; the relay serves it once the API's address
	// and certificate are known (below). Close closes it.
	if cfg.STUNListen != "" {
		if s.relayUDP, err = bindRelayUDP(cfg.STUNListen); err != nil {
			return nil, err
		}
		s.closers = append(s.closers, s.relayUDP)
	}

	s.registerMetrics()
	if s.metricsLn, err = listenMetrics(cfg.MetricsListen); err != nil {
		return nil, err
	}
	if s.metricsLn != nil {
		s.closers = append(s.closers, s.metricsLn)
	}

	// API listener with a certificate from the API CA.
	ln, err := net.Listen("tcp", cfg.APIListen)
	if err != nil {
		return nil, fmt.Errorf("api listen %s: %w", cfg.APIListen, err)
	}
	s.apiLn = ln
	s.apiURL, err = advertiseURL(cfg.APIAdvertise, ln.Addr().String())
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(s.apiURL)
	cert, err := apiCA.Issue(cfg.Name, []string{u.Hostname(), "localhost", "127.0.0.1", "::1"})
	if err != nil {
		return nil, err
	}
	// Browsers (the dashboard) take no Ed25519 leaf: they get an ECDSA one
	// from the same CA, listed second so meshd's clients keep the first.
	browserCert, err := apiCA.IssueECDSA(cfg.Name, []string{u.Hostname(), "localhost", "127.0.0.1", "::1"})
	if err != nil {
		return nil, err
	}
	// STUN answers and TURN relays from here on; Close stops both.
	if err := s.startRelay(cert); err != nil {
		return nil, err
	}
	s.http = &http.Server{
		Handler: s.routes(),
		// Full-size records from the first byte: a network map or a burst's
		// delta is sent in 16 KiB records instead of starting at one
		// segment's worth, which costs a write per record per watcher.
		// Handshakes are completed a few at a time (handshake.go) before
		// the server sees a connection; "h2" for browsers on the dashboard.
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert, browserCert}, DynamicRecordSizingDisabled: true,
			NextProtos: []string{"h2", "http/1.1"}},
		// A client gets ReadHeaderTimeout for its headers and
		// ReadTimeout for the whole request, body included (a body
		// trickled a byte at a time is cut off); a watch lifts the read
		// deadline once its request is in. There is no blanket
		// WriteTimeout, which would end every watch: each request gets a
		// write deadline of its own (apiWriteTimeout, and per write in a
		// watch).
		ReadHeaderTimeout: min(10*time.Second, cfg.APIReadTimeout),
		ReadTimeout:       cfg.APIReadTimeout,
		IdleTimeout:       cfg.APIIdleTimeout,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          nil,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	s.http.RegisterOnShutdown(s.changeWaits.stop)
	return s, nil
}

func advertiseURL(adv, bound string) (string, error) {
	if adv == "" {
		host, port, _ := net.SplitHostPort(bound)
		ip := net.ParseIP(host)
		if ip == nil || ip.IsUnspecified() {
			return "", fmt.Errorf("API listens on %s: give --advertise-api https://HOST:%s so peers know where to reach it", bound, port)
		}
		return "https://" + net.JoinHostPort(host, port), nil
	}
	u, err := url.Parse(adv)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return "", fmt.Errorf("advertised API URL %q must look like https://host:port", adv)
	}
	return "https://" + u.Host, nil
}

// APIURL is the URL this coordinator advertises.
func (s *Server) APIURL() string { return s.apiURL }

// Pin is the cluster's TLS identity pin.
func (s *Server) Pin() [32]byte { return s.pin }

// Store exposes the local replica (read-only use).
func (s *Server) Store() *state.Store { return s.store }

// Raft exposes the Raft node (tests and status).
func (s *Server) Raft() *raft.Raft { return s.raft }

// AdminToken is the admin credential for this cluster with the given URLs.
func (s *Server) AdminToken(urls []string) string { return adminToken(s.cfg.ClusterKey, s.pin, urls) }

// AdminToken is the cluster's admin credential naming the coordinators at
// urls: it follows from the cluster key alone, so a holder of the key can
// make it without reading a coordinator's data dir.
func AdminToken(key clusterkey.Key, urls []string) string {
	return adminToken(key, key.APICA().Pin(), urls)
}

// adminToken takes the pin, which is costly to derive, ready-made.
func adminToken(key clusterkey.Key, pin [32]byte, urls []string) string {
	t := &token.Token{Kind: token.KindAdmin, Pin: pin, ID: "admin", Secret: key.AdminSecret(), URLs: urls}
	return t.String()
}

// Run serves the API and runs the background loops until ctx is done, then
// shuts down.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		err := s.http.Serve(newHandshakeListener(s.apiLn, s.http.TLSConfig, apiLimits))
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve api: %w", err)
		}
	}()
	var wg sync.WaitGroup
	s.checkSelfAddress()
	loops := []func(context.Context){s.leaderLoop, s.reachLoop, s.registerLoop, s.touchLoop, s.markLoop, s.adminTokenLoop, s.relayLoop, s.reportLoop, s.fanout.run, s.serveMetrics}
	if s.joining {
		loops = append(loops, s.joinLoop)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	if s.metricsLn != nil {
		s.log.Info("coordinator running", "api", s.apiURL, "raft", s.trans.LocalAddr(), "metrics", "http://"+s.metricsLn.Addr().String()+"/metrics")
	} else {
		s.log.Info("coordinator running", "api", s.apiURL, "raft", s.trans.LocalAddr())
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	shutdownCtx, c2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer c2()
	s.http.Shutdown(shutdownCtx)
	wg.Wait()
	s.Close()
	return err
}

// Close stops Raft and releases the stores. It is safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.http != nil {
			s.http.Close()
		} else if s.apiLn != nil {
			s.apiLn.Close()
		}
		if s.raft != nil {
			if err := s.raft.Shutdown().Error(); err != nil {
				s.log.Warn("raft shutdown", "err", err)
			}
		}
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i].Close()
		}
	})
	return nil
}

// caughtUp reports whether the local replica has applied the log this node
// had on disk when it started. Entries that were on disk but never committed
// may be replaced by a new leader and never reach that index; after
// catchUpGrace, having applied everything the cluster has committed is
// enough.
func (s *Server) caughtUp() bool {
	if s.ready.Load() {
		return true
	}
	applied := s.raft.AppliedIndex()
	if s.joining {
		// A node that joined empty serves once it has applied what the
		// leader had committed when it last heard from it.
		if commit := s.raft.CommitIndex(); commit > 0 && applied >= commit && !s.raft.LastContact().IsZero() {
			s.ready.Store(true)
			return true
		}
		return false
	}
	if applied >= s.bootIndex ||
		time.Since(s.started) > catchUpGrace && s.raft.CommitIndex() > 0 && applied >= s.raft.CommitIndex() {
		s.ready.Store(true)
		return true
	}
	return false
}

const catchUpGrace = 10 * time.Second

func (s *Server) now() time.Time { return s.cfg.Now().UTC() }

// leaderAPIURL finds the API URL of the current leader.
func (s *Server) leaderAPIURL() (string, bool) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return "", false
	}
	var u string
	s.store.Read(func(t *state.Tables, _ uint64) {
		if c, ok := t.Coordinators[string(id)]; ok {
			u = c.APIURL
		}
	})
	return u, u != ""
}

// leaderLoop runs leader-only chores while this node leads.
func (s *Server) leaderLoop(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var stop context.CancelFunc
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		leading := s.raft.State() == raft.Leader
		switch {
		case leading && stop == nil:
			lctx, cancel := context.WithCancel(ctx)
			stop = cancel
			s.log.Info("leadership acquired")
			go s.leaderChores(lctx)
		case !leading && stop != nil:
			stop()
			stop = nil
			s.log.Info("leadership lost")
		}
	}
}

func (s *Server) leaderChores(ctx context.Context) {
	// Wait until every entry of earlier terms is applied before reading state.
	if err := s.raft.Barrier(5 * time.Second).Error(); err != nil {
		s.log.Warn("leader barrier", "err", err)
		return
	}
	var bootstrapped bool
	s.store.Read(func(t *state.Tables, _ uint64) { bootstrapped = t.Bootstrapped })
	if !bootstrapped {
		key := make([]byte, 32)
		rand.Read(key)
		if _, err := s.raftApply(ctx, fsm.BootstrapType, &fsm.Bootstrap{Now: s.now(), GossipKey: key}); err != nil {
			s.log.Warn("bootstrap state", "err", err)
		} else {
			s.log.Info("bootstrapped cluster state", "vnet", api.DefaultVNet, "overlay", api.DefaultOverlay)
		}
	}
	go s.pruneGossipKeysLoop(ctx)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		s.expireAndReap(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// expireAndReap deletes long-expired tokens and offline ephemeral peers,
// writing only when there is something to do.
func (s *Server) expireAndReap(ctx context.Context) {
	now := s.now()
	var expire, reap bool
	s.store.Read(func(t *state.Tables, _ uint64) {
		for _, tok := range t.Tokens {
			if now.Sub(tok.Expires) > state.TokenRetention {
				expire = true
				break
			}
		}
		for _, p := range t.Peers {
			if p.Ephemeral && p.WatchedBy == "" && now.Sub(p.LastSeen) > s.cfg.EphemeralGrace {
				reap = true
				break
			}
		}
	})
	if expire {
		if r, err := s.raftApply(ctx, fsm.ExpireTokensType, &fsm.ExpireTokens{Now: now}); err != nil {
			s.log.Warn("expire tokens", "err", err)
		} else {
			s.log.Info("deleted expired tokens", "count", r.Count)
		}
	}
	s.pruneDeadTokens(ctx)
	if reap {
		// The gossip key of every vnet that loses a peer rotates with it.
		seed, err := newGossipSeed()
		if err != nil {
			s.log.Warn("reap ephemeral peers", "err", err)
			return
		}
		if r, err := s.raftApply(ctx, fsm.ReapEphemeralType, &fsm.ReapEphemeral{Now: now, Grace: s.cfg.EphemeralGrace, GossipSeed: seed}); err != nil {
			s.log.Warn("reap ephemeral peers", "err", err)
		} else {
			s.log.Info("removed offline ephemeral peers", "ids", r.IDs)
		}
	}
}

// registerLoop records this node's addresses in the replicated state so that
// followers can forward writes to it and tokens can carry its URL, with its
// feature level and version for the feature gate (fsm.Gate).
func (s *Server) registerLoop(ctx context.Context) {
	me := state.Coordinator{Name: s.cfg.Name, RaftAddr: string(s.trans.LocalAddr()), APIURL: s.apiURL,
		FeatureLevel: fsm.FeatureLevel, Version: s.cfg.Version}
	if s.relayUDP != nil {
		me.STUNAddr = stunAdvertise(s.apiURL, s.relayUDP.LocalAddr().(*net.UDPAddr).Port)
	}
	if s.relay != nil && s.relayIP.IsValid() {
		me.RelayIP = s.relayIP.String()
		me.RelayTLSAddr = s.relayTLSAddr
	}
	for {
		var current bool
		s.store.Read(func(t *state.Tables, _ uint64) {
			c, ok := t.Coordinators[me.Name]
			current = ok && *c == me
		})
		if current {
			select {
			case <-ctx.Done():
				return
			case <-s.store.WatchCh():
				continue
			}
		}
		if _, err := s.raftApply(ctx, fsm.RegisterCoordinatorType, &fsm.RegisterCoordinator{Coordinator: me}); err != nil {
			s.log.Debug("register coordinator", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// touch notes that a peer was heard from.
func (s *Server) touch(peerID string) {
	s.touchMu.Lock()
	s.touched[peerID] = s.now()
	s.touchMu.Unlock()
}

// touchLoop writes last-seen times in one command every few seconds, so
// heartbeats cost one Raft write per interval, not one per peer.
func (s *Server) touchLoop(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Peers whose watch this node holds are online through their watch
		// mark; their LastSeen is written when the watch ends. Writing it
		// for every watcher every few seconds would put a log entry the
		// size of the fleet into Raft each time.
		s.touchMu.Lock()
		seen := s.touched
		s.touched = map[string]time.Time{}
		for id := range seen {
			if s.watchN[id] > 0 {
				delete(seen, id)
			}
		}
		s.touchMu.Unlock()
		if len(seen) == 0 {
			continue
		}
		if _, err := s.raftApply(ctx, fsm.TouchPeersType, &fsm.TouchPeers{Seen: seen}); err != nil {
			s.log.Debug("record last seen", "err", err)
		}
	}
}

// adminTokenLoop keeps DATA_DIR/admin.token current once the cluster is
// up, and removes it once the bootstrap credential it holds is revoked.
func (s *Server) adminTokenLoop(ctx context.Context) {
	if s.cfg.DataDir == "" {
		return
	}
	path := filepath.Join(s.cfg.DataDir, "admin.token")
	var last string
	for {
		var urls []string
		var ready, revoked bool
		s.store.Read(func(t *state.Tables, _ uint64) {
			_, ok := t.Coordinators[s.cfg.Name]
			ready = ok && t.Bootstrapped
			revoked = t.BootstrapAdminRevoked()
			urls = netmap.Coordinators(t)
		})
		switch {
		case revoked && last != "revoked":
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("remove the revoked admin token", "err", err)
			} else {
				last = "revoked"
				s.log.Info("bootstrap admin credential revoked; admin.token removed", "path", path)
			}
		case revoked:
		case ready:
			tok := s.AdminToken(urls) + "\n"
			if tok != last {
				if err := writeFileAtomic(path, []byte(tok), 0o600); err != nil {
					s.log.Warn("write admin token", "err", err)
				} else {
					last = tok
					s.log.Info("admin token written", "path", path)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.store.WatchCh():
		}
	}
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/meshd/meshd/pkg/logging"
)

// Raft timing. The defaults are tuned for coordinators on one LAN or one
// data centre (round trips well under 10 ms): a follower that hears nothing
// from the leader for HeartbeatTimeout (randomised up to twice that) starts
// an election, so a dead leader is replaced in roughly 0.3-0.7 s. A leader
// that cannot reach a quorum for LeaderLeaseTimeout steps down. These are
// ~30 round trips even on a busy host, so a healthy leader is not deposed by
// scheduling noise; raise them with the --raft-* flags across a WAN.
const (
	DefaultHeartbeatTimeout   = 300 * time.Millisecond
	DefaultElectionTimeout    = 300 * time.Millisecond
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
)

// raftLimits bound the Raft listener. Only coordinators hold a certificate
// of the cluster's Raft CA, and a few of them open a few connections each,
// so the port needs little: a connection must finish its mutual TLS
// handshake within 5 s of being accepted; one source address may have 8
// handshakes under way and 32 waiting, and 64 connections open in all; the
// listener holds at most 512. Anything past these is closed at once: idle
// connections that never say hello cannot pile up.
var raftLimits = listenerLimits{
	Slots: 4, PerSource: 8, PerSourceWaiting: 32, Timeout: 5 * time.Second,
	MaxConns: 512, PerSourceConns: 64,
}

// tlsStreamLayer is a raft.StreamLayer over mutually authenticated TLS.
type tlsStreamLayer struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func (t *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", string(addr), t.client)
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	return conn, nil
}

func (t *tlsStreamLayer) Addr() net.Addr { return t.advertise }

// newTLSTransport listens on listen for Raft traffic, advertising advertise.
func newTLSTransport(listen, advertise string, server, client *tls.Config, log *slog.Logger) (*raft.NetworkTransport, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("raft listen %s: %w", listen, err)
	}
	if advertise == "" {
		advertise = ln.Addr().String()
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil || adv.IP == nil || adv.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft advertise address %q must be a reachable ip:port", advertise)
	}
	stream := &tlsStreamLayer{Listener: newHandshakeListener(ln, server, raftLimits), advertise: adv, client: client}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 8,
		Timeout: 5 * time.Second,
		// No pipelining: with it, a follower that rejects appends (its
		// disk full, or its log behind after a partition) can leave the
		// leader's pipeline stalled, and the follower never catches up
		// (hashicorp/raft#612). Synchronous appends carry a batch of up
		// to MaxAppendEntries each, so throughput barely changes.
		MaxRPCsInFlight: 1,
		Logger:          logging.HCLog(log.With("component", "raft-transport")),
	}), nil
}

// diskStores opens the on-disk log, stable and snapshot stores under dir.
func diskStores(dir string, log *slog.Logger) (raft.LogStore, raft.StableStore, raft.SnapshotStore, io.Closer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("create data dir: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("open raft log: %w", err)
	}
	cache, err := raft.NewLogCache(1024, bolt)
	if err != nil {
		bolt.Close()
		return nil, nil, nil, nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, logging.HCLog(log.With("component", "raft-snapshot")))
	if err != nil {
		bolt.Close()
		return nil, nil, nil, nil, fmt.Errorf("open snapshot store: %w", err)
	}
	return cache, bolt, snaps, bolt, nil
}

func (s *Server) raftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(s.cfg.Name)
	c.HeartbeatTimeout = s.cfg.HeartbeatTimeout
	c.ElectionTimeout = s.cfg.ElectionTimeout
	c.LeaderLeaseTimeout = s.cfg.LeaderLeaseTimeout
	c.CommitTimeout = 10 * time.Millisecond
	c.MaxAppendEntries = 512
	c.BatchApplyCh = true
	c.SnapshotThreshold = 16384
	c.TrailingLogs = 10240
	if s.cfg.SnapshotThreshold > 0 {
		c.SnapshotThreshold = s.cfg.SnapshotThreshold
	}
	if s.cfg.SnapshotInterval > 0 {
		c.SnapshotInterval = s.cfg.SnapshotInterval
	}
	if s.cfg.TrailingLogs > 0 {
		c.TrailingLogs = s.cfg.TrailingLogs
	}
	c.Logger = logging.HCLog(s.log.With("component", "raft"))
	return c
}

// bootstrap writes the initial configuration on first start; a node that
// already has state keeps it.
func (s *Server) bootstrap(logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, trans raft.Transport) error {
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("check raft state: %w", err)
	}
	if has {
		return nil
	}
	if len(s.cfg.Join) > 0 {
		// Added by the cluster's leader (meshd cluster add), not
		// bootstrapped: a configuration of its own would make it a
		// cluster apart.
		s.joining = true
		s.log.Info("no state yet: waiting to be added to the cluster", "join", s.cfg.Join, "raft", trans.LocalAddr())
		return nil
	}
	var conf raft.Configuration
	if len(s.cfg.InitialCluster) == 0 {
		conf.Servers = []raft.Server{{ID: raft.ServerID(s.cfg.Name), Address: trans.LocalAddr()}}
	} else {
		for _, m := range s.cfg.InitialCluster {
			conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.RaftAddr)})
		}
	}
	s.log.Info("bootstrapping raft", "servers", len(conf.Servers))
	err = raft.BootstrapCluster(s.raftConfig(), logs, stable, snaps, trans, conf)
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	return nil
}

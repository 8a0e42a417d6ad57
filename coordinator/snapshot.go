package coordinator

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/backup"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Backup and restore. `meshd cluster snapshot save` reads the replicated
// state from any coordinator, online: the admin barrier every admin call
// passes has made that replica apply everything the leader had applied
// when the call came in (a leader also checks that it still leads), and the
// state is encoded under one read lock, so the file is the state at one
// index of the log. `meshd coordinator restore` seeds the data dir of a
// node of a NEW cluster from such a file; see Restore.

// snapshotWriteTimeout bounds sending a snapshot.
const snapshotWriteTimeout = 10 * time.Minute

// handleSnapshot answers GET /v1/cluster/snapshot with a backup file
// (package backup). Full admin credentials only: the state holds the
// gossip keys.
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	if s.raft.State() == raft.Leader {
		if err := s.raft.VerifyLeader().Error(); err != nil {
			writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s is no longer sure it leads: %v; retry", s.cfg.Name, err))
			return
		}
	}
	body, index, tables, err := s.store.Backup()
	if err != nil {
		writeError(w, api.Errorf(api.CodeInternal, "encode state: %v", err))
		return
	}
	_, leader := s.raft.LeaderWithID()
	h := backup.Header{
		Index: index, Term: s.raft.CurrentTerm(), TakenAt: s.now(), TakenBy: s.cfg.Name, Leader: string(leader),
		Pin: hex.EncodeToString(s.pin[:]), Tables: tables,
	}
	if servers, err := s.configuration(); err == nil {
		var urls map[string]string
		s.store.Read(func(t *state.Tables, _ uint64) {
			urls = make(map[string]string, len(t.Coordinators))
			for n, c := range t.Coordinators {
				urls[n] = c.APIURL
			}
		})
		for _, srv := range servers {
			h.Members = append(h.Members, backup.Member{Name: string(srv.ID), RaftAddr: string(srv.Address), APIURL: urls[string(srv.ID)], Role: memberRole(srv, leader)})
		}
	}
	prefix, err := backup.Prefix(&h, body)
	if err != nil {
		writeError(w, api.Errorf(api.CodeInternal, "%v", err))
		return
	}
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(snapshotWriteTimeout))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(prefix)+len(body)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(prefix); err != nil {
		return
	}
	if _, err := w.Write(body); err != nil {
		s.log.Warn("send snapshot", "err", err)
		return
	}
	s.log.Info("snapshot sent", "index", index, "bytes", len(body), "sha256", h.SHA256, "by", adminName(r))
}

// RestoreConfig says which node of which new cluster Restore seeds.
type RestoreConfig struct {
	DataDir string // required: absent or empty
	Name    string // required: this node's name
	// Members is the new cluster, this node included; optional: empty
	// means a cluster of this node alone at RaftAddr.
	Members  []Member
	RaftAddr string // required without Members
	// Pin, when set, is the pin of the cluster key the new cluster will
	// run with: a snapshot of a cluster with another key is refused.
	Pin *[32]byte
	// Logger is optional.
	Logger *slog.Logger
}

// RestoreResult describes what Restore wrote.
type RestoreResult struct {
	Header *backup.Header // the snapshot's header
	// Index is the Raft index the new cluster's log starts after.
	Index   uint64
	Members []Member
}

// restoreEraBits: a restored cluster's log starts at the next multiple of
// 2^40 past the snapshot's index. Peers resume their network-map watch
// from the last index they saw, which may be past the snapshot (the old
// cluster went on writing after it); every index of the new cluster is past
// every index of the old one (short of 2^40 entries written after the
// snapshot), so a resuming peer gets the whole new map instead of deltas
// from a history it never saw. Raft does not mind the gap: the new log
// starts with a snapshot at that index.
const restoreEraBits = 40

func restoredIndex(old uint64) uint64 { return (old>>restoreEraBits + 1) << restoreEraBits }

// Restore seeds DataDir with the state in a backup file, as the first
// snapshot of a new cluster whose Raft configuration is Members: every
// table survives (vnets, peers and their credentials, join and admin
// tokens, policies, routes, gossip keys), the old cluster's coordinators are
// forgotten (the new ones register as they start) and no peer's watch is
// held. The file is verified before anything is written. Each node of the
// new cluster is restored from the same file with the same Members (or
// starts empty with --join); then they start with `meshd coordinator`.
func Restore(cfg RestoreConfig, file io.Reader) (*RestoreResult, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := state.ValidName("coordinator", cfg.Name); err != nil {
		return nil, err
	}
	members := cfg.Members
	if len(members) == 0 {
		if cfg.RaftAddr == "" {
			return nil, errors.New("restore: give the new cluster's members, or this node's Raft address")
		}
		members = []Member{{Name: cfg.Name, RaftAddr: cfg.RaftAddr}}
	}
	conf, err := restoreConfiguration(cfg.Name, members)
	if err != nil {
		return nil, err
	}
	if err := emptyDir(cfg.DataDir); err != nil {
		return nil, err
	}
	h, body, err := backup.Read(file)
	if err != nil {
		return nil, err
	}
	if cfg.Pin != nil && h.Pin != hex.EncodeToString(cfg.Pin[:]) {
		return nil, fmt.Errorf("restore: the snapshot is of a cluster with another cluster key (pin %.16s..., this key's %x...); restore with the key of the cluster it was taken from, or peers and credentials will not work", h.Pin, cfg.Pin[:8])
	}
	store := state.New()
	if err := store.Restore(body); err != nil {
		return nil, fmt.Errorf("%w: %v", backup.ErrCorrupt, err)
	}
	if store.Index() != h.Index {
		return nil, fmt.Errorf("%w: the header says index %d, the state %d", backup.ErrCorrupt, h.Index, store.Index())
	}
	index := restoredIndex(h.Index)
	if err := store.Reseed(index); err != nil {
		return nil, err
	}
	data, err := store.Snapshot()
	if err != nil {
		return nil, err
	}
	logs, stable, snaps, closer, err := diskStores(cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	if has, err := raft.HasExistingState(logs, stable, snaps); err != nil || has {
		return nil, fmt.Errorf("restore: data dir %s already holds Raft state (%v)", cfg.DataDir, err)
	}
	// The snapshot's peer list is encoded by a transport; the addresses
	// are kept as they are.
	_, trans := raft.NewInmemTransport("")
	defer trans.Close()
	sink, err := snaps.Create(1, index, 1, conf, index, trans)
	if err != nil {
		return nil, fmt.Errorf("restore: create raft snapshot: %w", err)
	}
	if _, err := sink.Write(data); err != nil {
		sink.Cancel()
		return nil, fmt.Errorf("restore: write raft snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return nil, fmt.Errorf("restore: write raft snapshot: %w", err)
	}
	log.Info("restored a snapshot as the first state of a new cluster", "dir", cfg.DataDir, "snapshot_index", h.Index, "index", index, "members", len(members))
	return &RestoreResult{Header: h, Index: index, Members: members}, nil
}

// restoreConfiguration is the Raft configuration of a restored cluster:
// every member a voter; names and addresses unique; self among them.
func restoreConfiguration(self string, members []Member) (raft.Configuration, error) {
	var conf raft.Configuration
	names, addrs := map[string]bool{}, map[string]bool{}
	for _, m := range members {
		if err := state.ValidName("coordinator", m.Name); err != nil {
			return conf, err
		}
		if err := validRaftAddr(m.RaftAddr); err != nil {
			return conf, err
		}
		if names[m.Name] || addrs[m.RaftAddr] {
			return conf, fmt.Errorf("restore: the new cluster names %q or address %s twice", m.Name, m.RaftAddr)
		}
		names[m.Name], addrs[m.RaftAddr] = true, true
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.RaftAddr)})
	}
	if !names[self] {
		return conf, fmt.Errorf("restore: the new cluster does not include this node %q", self)
	}
	return conf, nil
}

// emptyDir checks that dir is absent or empty: restore seeds a new node
// and never overwrites one.
func emptyDir(dir string) error {
	if dir == "" {
		return errors.New("restore: a data dir is required")
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("restore: data dir %s is not empty: restore seeds a new coordinator; give it an empty or new directory (a node with state keeps it)", dir)
	}
	return nil
}

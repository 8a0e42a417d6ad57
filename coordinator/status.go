package coordinator

import (
	"context"
	"sort"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Cluster status. The coordinator that answers `meshd cluster status` asks
// every member about its replica (GET /v1/internal/replica, each within
// statusProbeTimeout, all at once), then judges each member from the
// leader's point of view: the leader's Raft heartbeats say whether it hears
// from the member and since when it has not; the member's own answer says
// how far it has applied, and its lag is measured against the leader's
// commit index. With no leader to ask (no quorum), a member is reachable
// when it answered.

// statusInput is what the answering coordinator gathered.
type statusInput struct {
	self    string
	leader  string // "" when none is known
	servers []raft.Server
	apiURLs map[string]string       // registered API URL by name
	views   map[string]*replicaInfo // each member's answer (self included)
	errs    map[string]string       // why a member did not answer
}

// buildMembers judges every member of in.servers; it also returns the
// leader's commit index (0 when the leader did not answer).
func buildMembers(in statusInput) ([]api.Member, uint64) {
	lv := in.views[in.leader] // nil: no leader, or it did not answer
	self := in.views[in.self]
	var commit uint64
	if lv != nil {
		commit = lv.CommitIndex
	}
	out := []api.Member{}
	for _, srv := range in.servers {
		name := string(srv.ID)
		m := api.Member{Name: name, RaftAddr: string(srv.Address), APIURL: in.apiURLs[name], Role: memberRole(srv, raft.ServerID(in.leader))}
		v := in.views[name]
		if v != nil {
			applied := v.AppliedIndex
			m.AppliedIndex = &applied
			if commit > 0 {
				lag := uint64(0)
				if commit > applied {
					lag = commit - applied
				}
				m.Lag = &lag
			}
		} else {
			m.Error = in.errs[name]
		}
		var reachable bool
		switch {
		case name == in.leader:
			// The leader's own row: from a follower, how long ago that
			// follower last heard from it.
			reachable = lv != nil
			if name != in.self && self != nil && self.LeaderContactMS >= 0 {
				ms := self.LeaderContactMS
				m.LastContactMS = &ms
				reachable = reachable || ms < leaderContactWithin.Milliseconds()
			}
		case lv != nil:
			ms, failing := lv.Unreachable[name]
			if !failing {
				ms = 0 // heard from within the last heartbeat
			}
			reachable = !failing
			m.LastContactMS = &ms
		default:
			reachable = v != nil
		}
		m.Reachable = &reachable
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, commit
}

// clusterStatus gathers the status of every member: the Raft
// configuration, and each member's answer about its replica.
func (s *Server) clusterStatus(ctx context.Context) (api.ClusterStatus, error) {
	st := api.ClusterStatus{LastAppliedIndex: s.store.Index(), Server: s.cfg.Name, Members: []api.Member{}}
	_, leaderID := s.raft.LeaderWithID()
	st.Leader = string(leaderID)
	st.Term = s.raft.CurrentTerm()
	servers, err := s.configuration()
	if err != nil {
		return st, err
	}
	in := statusInput{
		self: s.cfg.Name, leader: st.Leader, servers: servers,
		apiURLs: map[string]string{}, views: map[string]*replicaInfo{}, errs: map[string]string{},
	}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for n, c := range t.Coordinators {
			in.apiURLs[n] = c.APIURL
		}
	})
	in.views[s.cfg.Name] = s.localReplica()
	ctx, cancel := context.WithTimeout(ctx, statusProbeTimeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, srv := range servers {
		name := string(srv.ID)
		if name == s.cfg.Name {
			continue
		}
		u, ok := in.apiURLs[name]
		if !ok {
			in.errs[name] = "it has not registered its API address"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, err := s.probeReplica(ctx, u)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				in.errs[name] = err.Error()
				return
			}
			in.views[name] = info
		}()
	}
	wg.Wait()
	st.Members, st.CommitIndex = buildMembers(in)
	return st, nil
}

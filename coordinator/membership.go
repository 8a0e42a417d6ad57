package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Membership changes. A coordinator is added the way etcd adds a learner:
//
//	meshd cluster add c4 ADDR --> non-voter: gets the log (a snapshot, then
//	                              entries) but does not count for a quorum
//	c4 caught up (lag <= promoteMaxLag) --> promote: AddVoter, it votes
//
// so an empty node that takes a while to catch up never weakens the
// quorum. The new node starts with an empty data dir and --join, which
// keeps it from bootstrapping a cluster of its own: it waits for the
// leader's first contact. Removal (handleRemoveMember) and leadership
// transfer complete the set.

// promoteMaxLag is how far a non-voter's applied index may trail the
// leader's commit index for it to be promoted: close enough that it
// catches up the rest within a few heartbeats.
const promoteMaxLag = 256

// membershipTimeout bounds one Raft configuration change.
const membershipTimeout = 10 * time.Second

// Asking another coordinator how far its replica is: cluster status waits
// statusProbeTimeout for every member at once (a member that does not
// answer in time is reported as such rather than holding up the answer,
// which clients poll with a timeout of their own); a promotion waits
// promoteProbeTimeout for the member to promote.
const (
	statusProbeTimeout  = 500 * time.Millisecond
	promoteProbeTimeout = 2 * time.Second
)

// canPromote reports whether a non-voter that applied applied is close
// enough to the leader's commit index to get a vote.
func canPromote(applied, commit uint64) bool {
	return applied+promoteMaxLag >= commit
}

// memberConflict checks a coordinator to add against the Raft
// configuration: its name and its Raft address must both be new.
func memberConflict(servers []raft.Server, name, addr string) error {
	for _, srv := range servers {
		if string(srv.ID) == name {
			return api.Errorf(api.CodeConflict, "coordinator %q is already a member (raft %s); to replace it, remove it first (meshd cluster remove %s)", name, srv.Address, name)
		}
		if string(srv.Address) == addr {
			return api.Errorf(api.CodeConflict, "raft address %s is already coordinator %q's; give the new coordinator an address of its own, or remove %s first", addr, srv.ID, srv.ID)
		}
	}
	return nil
}

// validRaftAddr checks the Raft address of a coordinator to add: host:port.
func validRaftAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return api.Errorf(api.CodeInvalidArgument, "raft address %q is not HOST:PORT", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return api.Errorf(api.CodeInvalidArgument, "raft address %q: port %q is not 1-65535", addr, port)
	}
	return nil
}

// readBody reads an optional JSON body of at most api.MaxBodyBytes into v
// (an empty body leaves v alone); fields v does not know are ignored.
func readBody(w http.ResponseWriter, r *http.Request, v any) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, api.Errorf(api.CodeBodyTooLarge, "request body is larger than %d bytes", api.MaxBodyBytes)
		}
		return nil, api.Errorf(api.CodeBadRequest, "read request: %v", err)
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, v); err != nil {
			return nil, api.Errorf(api.CodeInvalidJSON, "request body is not valid JSON for this call: %v", err)
		}
	}
	return b, nil
}

// onLeader reports whether this coordinator leads and should handle an
// admin call itself; otherwise the call, with body, has been passed on to
// the leader and answered.
func (s *Server) onLeader(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if s.raft.State() == raft.Leader {
		return true
	}
	if r.Header.Get(forwardedHeader) != "" {
		writeError(w, api.Errorf(api.CodeUnavailable, "leadership moved while the call was passed on; retry"))
		return false
	}
	s.forwardToLeader(w, r, body)
	return false
}

// configuration reads the Raft configuration.
func (s *Server) configuration() ([]raft.Server, error) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "read raft configuration: %v", err)
	}
	return cf.Configuration().Servers, nil
}

func memberRole(srv raft.Server, leader raft.ServerID) string {
	switch {
	case srv.ID == leader:
		return "leader"
	case srv.Suffrage != raft.Voter:
		return "nonvoter"
	default:
		return "follower"
	}
}

// handleAddMember answers POST /v1/cluster/members: the leader adds a
// coordinator to the Raft configuration, as a non-voter when asked (the
// first step of `meshd cluster add`), else as a voter.
func (s *Server) handleAddMember(w http.ResponseWriter, r *http.Request) {
	var req api.AddMemberRequest
	body, err := readBody(w, r, &req)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := state.ValidName("coordinator", req.Name); err != nil {
		writeError(w, err)
		return
	}
	if err := validRaftAddr(req.RaftAddr); err != nil {
		writeError(w, err)
		return
	}
	if !s.onLeader(w, r, body) {
		return
	}
	servers, err := s.configuration()
	if err != nil {
		writeError(w, err)
		return
	}
	if err := memberConflict(servers, req.Name, req.RaftAddr); err != nil {
		writeError(w, err)
		return
	}
	id, addr := raft.ServerID(req.Name), raft.ServerAddress(req.RaftAddr)
	m := api.Member{Name: req.Name, RaftAddr: req.RaftAddr, Role: "follower"}
	var f raft.IndexFuture
	if req.Nonvoter {
		m.Role = "nonvoter"
		f = s.raft.AddNonvoter(id, addr, 0, membershipTimeout)
	} else {
		f = s.raft.AddVoter(id, addr, 0, membershipTimeout)
	}
	if err := f.Error(); err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "add %s: %v", req.Name, err))
		return
	}
	s.log.Info("coordinator added to the cluster", "coordinator", req.Name, "raft", req.RaftAddr, "role", m.Role, "by", adminName(r))
	writeJSON(w, http.StatusCreated, m)
}

// handlePromoteMember answers POST /v1/cluster/members/{name}/promote: the
// leader gives a non-voter a vote once it has caught up (or at once with
// force). Promoting a voter changes nothing.
func (s *Server) handlePromoteMember(w http.ResponseWriter, r *http.Request) {
	var req api.PromoteRequest
	body, err := readBody(w, r, &req)
	if err != nil {
		writeError(w, err)
		return
	}
	if !s.onLeader(w, r, body) {
		return
	}
	name := r.PathValue("name")
	servers, err := s.configuration()
	if err != nil {
		writeError(w, err)
		return
	}
	var srv *raft.Server
	for i := range servers {
		if string(servers[i].ID) == name {
			srv = &servers[i]
		}
	}
	if srv == nil {
		writeError(w, api.Errorf(api.CodeNotFound, "no coordinator %q in the cluster; add it first (meshd cluster add)", name))
		return
	}
	m := api.Member{Name: name, RaftAddr: string(srv.Address), Role: "follower"}
	if srv.Suffrage == raft.Voter {
		writeJSON(w, http.StatusOK, m)
		return
	}
	if !req.Force {
		ctx, cancel := context.WithTimeout(r.Context(), promoteProbeTimeout)
		info, err := s.probeMember(ctx, name)
		cancel()
		if err != nil {
			writeError(w, api.Errorf(api.CodeCatchingUp, "cannot tell how far %s has caught up: %v; is it running with --join? (--force promotes it without checking)", name, err))
			return
		}
		if commit := s.raft.CommitIndex(); !canPromote(info.AppliedIndex, commit) {
			writeError(w, api.Errorf(api.CodeCatchingUp, "%s has applied %d of the %d entries the cluster committed; it gets a vote once it trails by %d or fewer", name, info.AppliedIndex, commit, promoteMaxLag))
			return
		}
	}
	if err := s.raft.AddVoter(srv.ID, srv.Address, 0, membershipTimeout).Error(); err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "promote %s: %v", name, err))
		return
	}
	s.log.Info("coordinator promoted to voter", "coordinator", name, "forced", req.Force, "by", adminName(r))
	writeJSON(w, http.StatusOK, m)
}

// handleTransferLeader answers POST /v1/cluster/transfer-leader: the
// leader hands leadership to the coordinator named in the body, or to the
// most up-to-date follower, and answers with the new leader.
func (s *Server) handleTransferLeader(w http.ResponseWriter, r *http.Request) {
	var req api.TransferLeaderRequest
	body, err := readBody(w, r, &req)
	if err != nil {
		writeError(w, err)
		return
	}
	if !s.onLeader(w, r, body) {
		return
	}
	s.transferLeader(w, r, req.To)
}

// transferLeader moves the leadership from this node (the leader) to the
// coordinator named to ("": Raft picks the most up-to-date follower) and
// waits to learn the new leader.
func (s *Server) transferLeader(w http.ResponseWriter, r *http.Request, to string) {
	old := s.cfg.Name
	var f raft.Future
	if to == "" {
		f = s.raft.LeadershipTransfer()
	} else {
		servers, err := s.configuration()
		if err != nil {
			writeError(w, err)
			return
		}
		var target *raft.Server
		for i := range servers {
			if string(servers[i].ID) == to {
				target = &servers[i]
			}
		}
		switch {
		case target == nil:
			writeError(w, api.Errorf(api.CodeNotFound, "no coordinator %q in the cluster", to))
			return
		case to == old:
			writeJSON(w, http.StatusOK, api.LeadershipTransfer{From: old, To: old})
			return
		case target.Suffrage != raft.Voter:
			writeError(w, api.Errorf(api.CodeConflict, "%s has no vote and cannot lead; promote it first (meshd cluster promote %s)", to, to))
			return
		}
		f = s.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := f.Error(); err != nil {
		writeError(w, api.Errorf(api.CodeUnavailable, "transfer leadership: %v", err))
		return
	}
	// This node learns the new leader from its first heartbeat.
	var id raft.ServerID
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		if _, id = s.raft.LeaderWithID(); id != "" && string(id) != old {
			break
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(10 * time.Millisecond): // polling interval, bounded by the deadline
		}
	}
	s.log.Info("leadership transferred", "from", old, "to", string(id), "asked", to, "by", adminName(r))
	writeJSON(w, http.StatusOK, api.LeadershipTransfer{From: old, To: string(id)})
}

// replicaInfo answers GET /v1/internal/replica: how far one coordinator's
// replica is, and what it knows of the others.
type replicaInfo struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Term  uint64 `json:"term"`
	// Leader is the leader this node follows ("" when it knows none).
	Leader       string `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	// LeaderContactMS is how long ago this node last heard from the
	// leader, in milliseconds; -1 when it never has (or leads).
	LeaderContactMS int64 `json:"leader_contact_ms"`
	// Unreachable, on the leader, names the members whose Raft heartbeats
	// fail, with how long ago (ms) it last heard from each.
	Unreachable map[string]int64 `json:"unreachable,omitempty"`
	// Members is the Raft configuration as this node knows it.
	Members []replicaMember `json:"members,omitempty"`
}

type replicaMember struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	Voter    bool   `json:"voter"`
}

// localReplica describes this node's replica.
func (s *Server) localReplica() *replicaInfo {
	_, leader := s.raft.LeaderWithID()
	info := &replicaInfo{
		Name: s.cfg.Name, State: s.raft.State().String(), Term: s.raft.CurrentTerm(), Leader: string(leader),
		AppliedIndex: s.raft.AppliedIndex(), CommitIndex: s.raft.CommitIndex(), LastIndex: s.raft.LastIndex(),
		LeaderContactMS: -1,
	}
	now := time.Now()
	if s.raft.State() == raft.Leader {
		info.Unreachable = map[string]int64{}
		for id, since := range s.heartbeatFailures() {
			info.Unreachable[string(id)] = now.Sub(since).Milliseconds()
		}
	} else if last := s.raft.LastContact(); !last.IsZero() {
		info.LeaderContactMS = now.Sub(last).Milliseconds()
	}
	if servers, err := s.configuration(); err == nil {
		for _, srv := range servers {
			info.Members = append(info.Members, replicaMember{Name: string(srv.ID), RaftAddr: string(srv.Address), Voter: srv.Suffrage == raft.Voter})
		}
	}
	return info
}

// handleInternalReplica answers another coordinator's question about this
// replica (any node answers, one catching up included).
func (s *Server) handleInternalReplica(w http.ResponseWriter, r *http.Request) {
	if !s.internalAuth(r) {
		writeError(w, api.Errorf(api.CodeUnauthorized, "internal API needs the cluster key"))
		return
	}
	writeJSON(w, http.StatusOK, s.localReplica())
}

// probeReplica asks the coordinator at apiURL about its replica.
func (s *Server) probeReplica(ctx context.Context, apiURL string) (*replicaInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/v1/internal/replica", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.internal)
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errors.New("no answer in time")
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is the member's, listed beside
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("it answered %s (a version without replica reports?)", resp.Status)
	}
	var info replicaInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info); err != nil {
		return nil, fmt.Errorf("read its answer: %w", err)
	}
	return &info, nil
}

// probeMember asks the registered coordinator name about its replica.
func (s *Server) probeMember(ctx context.Context, name string) (*replicaInfo, error) {
	var u string
	s.store.Read(func(t *state.Tables, _ uint64) {
		if c, ok := t.Coordinators[name]; ok {
			u = c.APIURL
		}
	})
	if u == "" {
		return nil, errors.New("it has not registered its API address (a new coordinator does once it has caught up far enough to know the leader)")
	}
	return s.probeReplica(ctx, u)
}

// joinLoop runs on a coordinator started with --join and no state, until
// the cluster has added it: every few seconds it asks the --join members
// whether the cluster lists it and logs what the operator must do.
func (s *Server) joinLoop(ctx context.Context) {
	me, addr := s.cfg.Name, string(s.trans.LocalAddr())
	var last string
	var lastAt time.Time
	say := func(level func(string, ...any), msg string, args ...any) {
		key := fmt.Sprint(msg, args)
		if key == last && time.Since(lastAt) < 30*time.Second {
			return
		}
		last, lastAt = key, time.Now()
		level(msg, args...)
	}
	for {
		if servers, err := s.configuration(); err == nil && len(servers) > 0 {
			s.log.Info("joined the cluster; catching up from the leader", "members", len(servers))
			return
		}
	ask:
		for _, u := range s.cfg.Join {
			pctx, cancel := context.WithTimeout(ctx, promoteProbeTimeout)
			info, err := s.probeReplica(pctx, u)
			cancel()
			if err != nil {
				say(s.log.Warn, "cannot ask the --join coordinator about this node", "url", u, "err", err)
				continue
			}
			status := joinStatus(info.Members, me, addr)
			switch status.state {
			case joinListed:
				say(s.log.Info, "the cluster lists this coordinator; waiting for the leader's first contact", "leader", info.Leader)
			case joinWrongAddr:
				say(s.log.Error, "the cluster knows this coordinator at another Raft address; remove it (meshd cluster remove) and add it again with this one",
					"name", me, "cluster_has", status.addr, "this_node", addr)
			default:
				say(s.log.Info, "waiting to be added to the cluster: run `meshd cluster add NAME RAFTADDR` against it", "name", me, "raft", addr)
			}
			break ask // one member that answers is enough
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

type joinState int

const (
	joinNotListed joinState = iota
	joinListed
	joinWrongAddr
)

type joinResult struct {
	state joinState
	addr  string // the address the cluster lists for this name
}

// joinStatus says whether the configuration members lists the coordinator
// name at addr.
func joinStatus(members []replicaMember, name, addr string) joinResult {
	for _, m := range members {
		if m.Name != name {
			continue
		}
		if m.RaftAddr == addr {
			return joinResult{state: joinListed, addr: m.RaftAddr}
		}
		return joinResult{state: joinWrongAddr, addr: m.RaftAddr}
	}
	return joinResult{state: joinNotListed}
}

// checkSelfAddress logs an error when the Raft configuration lists this
// node at another address than the one it advertises (restored or added
// with a wrong address): the others would dial the wrong place.
func (s *Server) checkSelfAddress() {
	servers, err := s.configuration()
	if err != nil {
		return
	}
	for _, srv := range servers {
		if string(srv.ID) == s.cfg.Name && srv.Address != s.trans.LocalAddr() {
			s.log.Error("the Raft configuration lists this coordinator at another address; the others cannot reach it: fix --advertise-raft/--raft-listen, or remove it (meshd cluster remove) and add it again",
				"configured", srv.Address, "advertised", s.trans.LocalAddr())
		}
	}
}

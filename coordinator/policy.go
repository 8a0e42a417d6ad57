package coordinator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

// forwardedHeader marks an admin call a follower passed on to the leader,
// so that it is not passed on again.
const forwardedHeader = "Meshd-Forwarded"

// policyError turns a policy's problems into an API error: the message
// names each rule or test and field, Details lists them one by one.
func policyError(vnet string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	var es policy.Errors
	if !errors.As(err, &es) {
		return api.Errorf(api.CodeInvalidPolicy, "policy of vnet %q refused: %v", vnet, err)
	}
	code := api.CodePolicyTestFailed
	details := make([]string, len(es))
	for i, e := range es {
		details[i] = e.Error()
		if !errors.Is(e, policy.ErrTestFailed) {
			code = api.CodeInvalidPolicy
		}
	}
	ae = api.Errorf(code, "policy of vnet %q refused: %v", vnet, es)
	if len(es) > 1 {
		ae = api.Errorf(code, "policy of vnet %q refused, %d problems: %v", vnet, len(es), es)
	}
	ae.Details = details
	return ae
}

// handleSetPolicy validates a policy document against the vnet (Parse,
// then Check: tags and peers exist, the policy's own tests pass) and puts
// it in force as the vnet's next policy version. It validates on the
// leader, against the newest state: a follower passes the call on.
func (s *Server) handleSetPolicy(w http.ResponseWriter, r *http.Request) {
	vnet := r.PathValue("name")
	doc, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxPolicyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, api.Errorf(api.CodeBodyTooLarge, "policy is larger than %d bytes", api.MaxPolicyBytes))
			return
		}
		writeError(w, api.Errorf(api.CodeBadRequest, "read policy: %v", err))
		return
	}
	if s.raft.State() != raft.Leader && r.Header.Get(forwardedHeader) == "" {
		s.forwardToLeader(w, r, doc)
		return
	}
	var known bool
	var prev int
	var dir *policy.Directory
	s.store.Read(func(t *state.Tables, _ uint64) {
		if _, known = t.VNets[vnet]; known {
			prev = t.PolicyVersion(vnet)
			dir, _ = netmap.Directory(t, vnet)
		}
	})
	if !known {
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet))
		return
	}
	if _, err := policy.Validate(doc, dir); err != nil {
		writeError(w, policyError(vnet, err))
		return
	}
	by := adminName(r)
	res, err := s.raftApply(r.Context(), fsm.SetPolicyType, &fsm.SetPolicy{VNet: vnet, Policy: doc, SetBy: by, Now: s.now(), Prev: prev})
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("policy set", "vnet", vnet, "version", res.Version, "by", by)
	s.writePolicy(w, vnet, res.Version)
}

// handleDeletePolicy removes a vnet's policy: every peer of the vnet may
// reach every other again.
func (s *Server) handleDeletePolicy(w http.ResponseWriter, r *http.Request) {
	vnet := r.PathValue("name")
	var prev int
	s.store.Read(func(t *state.Tables, _ uint64) { prev = t.PolicyVersion(vnet) })
	by := adminName(r)
	res, err := s.raftApply(r.Context(), fsm.DeletePolicyType, &fsm.DeletePolicy{VNet: vnet, SetBy: by, Now: s.now(), Prev: prev})
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("policy deleted", "vnet", vnet, "version", res.Version, "by", by)
	s.writePolicy(w, vnet, res.Version)
}

// handleGetPolicy shows a vnet's policy and its history; ?version=N shows
// that version's document (while it is kept).
func (s *Server) handleGetPolicy(w http.ResponseWriter, r *http.Request) {
	version := 0
	if v := r.URL.Query().Get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "version %q is not a policy version number", v))
			return
		}
		version = n
	}
	s.writePolicy(w, r.PathValue("name"), version)
}

// writePolicy answers with vnet's policy as of version (0: the latest).
func (s *Server) writePolicy(w http.ResponseWriter, vnet string, version int) {
	out := api.Policy{VNet: vnet, History: []api.PolicyVersion{}}
	var known, kept bool
	s.store.Read(func(t *state.Tables, _ uint64) {
		if _, known = t.VNets[vnet]; !known {
			return
		}
		vp := t.Policies[vnet]
		if vp == nil {
			kept = version == 0
			return
		}
		if version == 0 {
			version = vp.Current().Version
		}
		for i := len(vp.Versions) - 1; i >= 0; i-- {
			v := vp.Versions[i]
			out.History = append(out.History, api.PolicyVersion{Version: v.Version, SetBy: v.SetBy, SetAt: v.SetAt, Deleted: v.Deleted})
			if v.Version == version {
				kept = true
				out.Version, out.SetBy, out.SetAt = v.Version, v.SetBy, v.SetAt
				out.Policy = bytes.Clone(v.Policy)
			}
		}
		if p := t.Policy(vnet); p != nil && version == vp.Current().Version {
			out.Skipped = p.Skipped
		}
	})
	switch {
	case !known:
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet))
	case !kept:
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q keeps no policy version %d (the last %d versions are kept)", vnet, version, state.PolicyHistory))
	default:
		writeJSON(w, http.StatusOK, out)
	}
}

// handleTestPolicy answers whether the vnet's policy accepts a new flow:
// ?src=tag:branch&dst=192.168.10.10:443&proto=tcp.
func (s *Server) handleTestPolicy(w http.ResponseWriter, r *http.Request) {
	vnet, q := r.PathValue("name"), r.URL.Query()
	res := api.PolicyTestResult{VNet: vnet, Src: q.Get("src"), Dst: q.Get("dst"), Proto: q.Get("proto")}
	if res.Proto == "" {
		res.Proto = "tcp"
	}
	proto, ok := policy.ParseProto(res.Proto)
	if !ok {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "protocol %q: use tcp, udp or icmp", res.Proto))
		return
	}
	if res.Src == "" || res.Dst == "" {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "give a source (tag:NAME, peer:NAME or an address) and a destination HOST:PORT"))
		return
	}
	var known bool
	var pol *policy.Policy
	var dir *policy.Directory
	s.store.Read(func(t *state.Tables, _ uint64) {
		if _, known = t.VNets[vnet]; known {
			pol = t.Policy(vnet)
			if pol != nil {
				res.Version = t.PolicyVersion(vnet)
			}
			dir, _ = netmap.Directory(t, vnet)
		}
	})
	if !known {
		writeError(w, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet))
		return
	}
	rule, allowed, err := pol.Query(dir, res.Src, res.Dst, proto)
	if err != nil {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "%v", err))
		return
	}
	res.Allowed, res.NoPolicy = allowed, pol == nil
	if rule >= 0 {
		res.Rule, res.RuleName = &rule, pol.Rules[rule].Name
	}
	writeJSON(w, http.StatusOK, res)
}

// forwardToLeader passes an admin call, with its credential and body, on
// to the leader and relays the answer. A call that never reached the
// leader is refused unavailable (nothing changed); one that did and whose
// answer was lost is outcome_unknown.
func (s *Server) forwardToLeader(w http.ResponseWriter, r *http.Request, body []byte) {
	leader, ok := s.leaderAPIURL()
	if !ok {
		writeError(w, api.Errorf(api.CodeUnavailable, "no coordinator leader now: nothing was changed, it is safe to retry; is a majority of coordinators up?"))
		return
	}
	if ok, since := s.leaderInReach(); !ok {
		writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s has not heard from the leader for %s: nothing was changed, it is safe to retry, or use another coordinator", s.cfg.Name, since.Round(time.Millisecond)))
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, leader+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeError(w, err)
		return
	}
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	req.Header.Set(forwardedHeader, "1")
	lost := func(what string) {
		if r.Method == http.MethodGet {
			writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s: %s; retry", s.cfg.Name, what))
			return
		}
		writeError(w, outcomeUnknown(s.cfg.Name, what))
	}
	resp, sent, err := s.sendToLeader(req)
	if err != nil {
		if !sent {
			writeError(w, api.Errorf(api.CodeUnavailable, "coordinator %s could not pass the call on to the leader (%v): nothing was changed, it is safe to retry", s.cfg.Name, err))
			return
		}
		lost(fmt.Sprintf("passed the call on to the leader, which did not answer (%v)", err))
		return
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		lost(fmt.Sprintf("lost the leader's answer (%v)", err))
		return
	}
	if len(out) == 0 && resp.StatusCode/100 == 2 {
		w.WriteHeader(resp.StatusCode) // such as 204 No Content
		return
	}
	if !json.Valid(out) {
		lost(fmt.Sprintf("the leader answered %s", resp.Status))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.StatusCode)
	w.Write(out)
}

package coordinator

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/pkg/api"
)

// How long a write may take. A client learns one of three things, well
// before it gives up waiting (meshctl waits 10 s, the fault suite 2 s):
// the write was made; it was refused before anything was handed to Raft
// (CodeUnavailable: nothing changed, retrying is safe); or it was handed to
// Raft, or passed on to the leader, and its answer was lost
// (CodeOutcomeUnknown: list to check before retrying).
const (
	// leaderWait bounds how long a write looks for a leader it can
	// reach: through an election, or while this coordinator is cut off
	// from the leader. Then it is refused, unavailable.
	leaderWait = time.Second
	// writeTimeout bounds one write from the call to the answer; a write
	// passed on to the leader that has no answer by then ends
	// outcome_unknown.
	writeTimeout = 1500 * time.Millisecond
)

// errNoLeader: the write was not handed to Raft because no leader could be
// reached; it is retried until leaderWait.
var errNoLeader = errors.New("no leader")

// raftApply is the one write path: it encodes the command, applies it on the
// leader (forwarding from a follower), waits until this replica has applied
// it too (so a client reads its own writes from any coordinator), and turns
// an error result into err.
//
// Only failures that prove the command was not handed to Raft are retried
// (errNoLeader), and when they last past leaderWait the write is refused
// with CodeUnavailable. A write whose outcome is unknown (leadership lost
// after the command went to Raft, a forward whose answer was lost) ends
// CodeOutcomeUnknown at once rather than risk applying it twice.
func (s *Server) raftApply(ctx context.Context, t fsm.MessageType, body any) (*fsm.Result, error) {
	data, err := fsm.Encode(t, body)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	start := time.Now()
	for {
		res, err := s.applyOnce(ctx, data)
		if err == nil {
			if werr := s.waitApplied(ctx, res.Index); werr != nil {
				s.log.Debug("write applied on leader but not yet here", "index", res.Index)
			} else {
				s.metrics.applySeconds.Observe(time.Since(start).Seconds())
			}
			if res.Err != nil {
				return res, res.Err
			}
			return res, nil
		}
		if !errors.Is(err, errNoLeader) {
			return nil, err
		}
		if time.Since(start)+backoff > leaderWait || ctx.Err() != nil {
			return nil, notApplied(s.cfg.Name, err)
		}
		select {
		case <-ctx.Done():
			return nil, notApplied(s.cfg.Name, err)
		case <-time.After(backoff):
		}
		if backoff < 100*time.Millisecond {
			backoff *= 2
		}
	}
}

// notApplied is the answer to a write refused before anything was handed
// to Raft: err says why no leader could take it.
func notApplied(node string, err error) *api.Error {
	return api.Errorf(api.CodeUnavailable, "coordinator %s could not reach a coordinator leader within %s (%v): nothing was changed, it is safe to retry; is a majority of coordinators up and reachable?", node, leaderWait, err)
}

// outcomeUnknown is the answer to a write handed to Raft, or passed on to
// the leader, whose result was lost.
func outcomeUnknown(node, what string) *api.Error {
	return api.Errorf(api.CodeOutcomeUnknown, "coordinator %s: %s: the write may or may not have been made; list to check before retrying", node, what)
}

// leaderInReach reports whether this follower has heard from its leader
// within a heartbeat timeout: one it has not heard from for longer is most
// likely cut off from it (and about to call an election), and a write
// passed on to it would hang with its outcome unknown.
func (s *Server) leaderInReach() (bool, time.Duration) {
	since := time.Since(s.raft.LastContact())
	return since < s.cfg.HeartbeatTimeout, since
}

// applyOnce applies locally when leading, else forwards to the leader.
func (s *Server) applyOnce(ctx context.Context, data []byte) (*fsm.Result, error) {
	if s.raft.State() == raft.Leader {
		return s.applyLocal(data)
	}
	leader, ok := s.leaderAPIURL()
	if !ok {
		return nil, fmt.Errorf("%w known", errNoLeader)
	}
	if ok, since := s.leaderInReach(); !ok {
		return nil, fmt.Errorf("%w in reach: not heard from for %s", errNoLeader, since.Round(time.Millisecond))
	}
	return s.forward(ctx, leader, data)
}

func (s *Server) applyLocal(data []byte) (*fsm.Result, error) {
	if err := s.gate(fsm.MessageType(data[0]), ""); err != nil {
		return nil, err
	}
	start := time.Now()
	f := s.raft.Apply(data, writeTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			// Refused before it was appended to the log.
			return nil, fmt.Errorf("%w: %v", errNoLeader, err)
		}
		return nil, applyError(s.cfg.Name, err)
	}
	s.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, api.Errorf(api.CodeInternal, "unexpected apply response %T", f.Response())
	}
	return res, nil
}

// sendToLeader sends req to another coordinator. sent reports whether the
// request may have reached it: false when it never wholly left this node
// (no connection could be made, or writing it failed), so the other end
// cannot have acted on it (it reads the whole body, of a known length,
// before acting).
func (s *Server) sendToLeader(req *http.Request) (resp *http.Response, sent bool, err error) {
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}}
	resp, err = s.peerHTTP.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	return resp, err == nil || wrote.Load(), err
}

// forward sends an encoded command to the leader's internal endpoint.
func (s *Server) forward(ctx context.Context, leader string, data []byte) (*fsm.Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, leader+"/v1/internal/apply", bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.internal)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, sent, err := s.sendToLeader(req)
	if err != nil {
		if !sent {
			return nil, fmt.Errorf("%w: pass the write on to %s: %v", errNoLeader, leader, err)
		}
		return nil, outcomeUnknown(s.cfg.Name, fmt.Sprintf("passed the write on to the leader %s, which did not answer (%v)", leader, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, outcomeUnknown(s.cfg.Name, fmt.Sprintf("lost the answer of the leader %s (%v)", leader, err))
	}
	if resp.StatusCode == http.StatusMisdirectedRequest {
		// It no longer leads and did not hand the write to Raft.
		return nil, fmt.Errorf("%w: %s no longer leads", errNoLeader, leader)
	}
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != nil {
			return nil, eb.Error
		}
		return nil, outcomeUnknown(s.cfg.Name, fmt.Sprintf("the leader %s answered %s", leader, resp.Status))
	}
	var res fsm.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, outcomeUnknown(s.cfg.Name, fmt.Sprintf("the answer of the leader %s does not decode (%v)", leader, err))
	}
	return &res, nil
}

// waitApplied waits until the local replica has applied index.
func (s *Server) waitApplied(ctx context.Context, index uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for {
		ch := s.store.WatchCh()
		if s.store.Index() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// internalAuth reports whether r carries the coordinators' internal
// secret (derived from the cluster key).
func (s *Server) internalAuth(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	return subtle.ConstantTimeCompare([]byte(auth), []byte("Bearer "+s.internal)) == 1
}

// handleInternalApply is the leader's end of forwarding.
func (s *Server) handleInternalApply(w http.ResponseWriter, r *http.Request) {
	if !s.internalAuth(r) {
		writeError(w, api.Errorf(api.CodeUnauthorized, "internal API needs the cluster key"))
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, fsm.MaxCommandBytes+1))
	if err != nil || len(data) > fsm.MaxCommandBytes {
		writeError(w, api.Errorf(api.CodeBodyTooLarge, "command too large"))
		return
	}
	if _, _, err := fsm.Decode(data); err != nil {
		writeError(w, api.Errorf(api.CodeBadRequest, "%v", err))
		return
	}
	if s.raft.State() != raft.Leader {
		w.WriteHeader(http.StatusMisdirectedRequest)
		return
	}
	res, err := s.applyLocal(data)
	if errors.Is(err, errNoLeader) {
		w.WriteHeader(http.StatusMisdirectedRequest)
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// A client that went away cannot be told anything more.
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = api.Errorf(api.CodeInternal, "%v", err)
	}
	noteAPIError(w, string(ae.Code))
	writeJSON(w, ae.Status(), api.ErrorBody{Error: ae})
}

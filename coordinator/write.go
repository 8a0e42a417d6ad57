package coordinator

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/pkg/api"
)

// writeTimeout bounds one write, including finding a leader.
const writeTimeout = 5 * time.Second

// errNoLeader is retried until the write deadline.
var errNoLeader = errors.New("no leader")

// raftApply is the one write path: it encodes the command, applies it on the
// leader (forwarding from a follower), waits until this replica has applied
// it too (so a client reads its own writes from any coordinator), and turns
// an error result into err.
//
// Only failures that prove the command was not applied are retried: no
// leader yet, or a node that is not the leader. A write whose outcome is
// unknown (leadership lost mid-commit, a dropped forward) fails with
// CodeUnavailable rather than risk applying twice.
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
		select {
		case <-ctx.Done():
			return nil, api.Errorf(api.CodeUnavailable, "no coordinator leader within %s; is a majority of coordinators up?", writeTimeout)
		case <-time.After(backoff):
		}
		if backoff < 100*time.Millisecond {
			backoff *= 2
		}
	}
}

// applyOnce applies locally when leading, else forwards to the leader.
func (s *Server) applyOnce(ctx context.Context, data []byte) (*fsm.Result, error) {
	if s.raft.State() == raft.Leader {
		return s.applyLocal(data)
	}
	leader, ok := s.leaderAPIURL()
	if !ok {
		return nil, errNoLeader
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
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, errNoLeader
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

// forward sends an encoded command to the leader's internal endpoint.
func (s *Server) forward(ctx context.Context, leader string, data []byte) (*fsm.Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, leader+"/v1/internal/apply", bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.internal)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		// Nothing was acknowledged; if the request never left, retrying is
		// safe, and a leader that died mid-request lost the write unless it
		// had committed it, which the client must check.
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, api.Errorf(api.CodeUnavailable, "write to leader timed out; outcome unknown")
		}
		return nil, errNoLeader
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "read leader response: %v; outcome unknown", err)
	}
	if resp.StatusCode == http.StatusMisdirectedRequest {
		return nil, errNoLeader
	}
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != nil {
			return nil, eb.Error
		}
		return nil, api.Errorf(api.CodeUnavailable, "leader answered %s", resp.Status)
	}
	var res fsm.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, api.Errorf(api.CodeInternal, "decode leader response: %v", err)
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

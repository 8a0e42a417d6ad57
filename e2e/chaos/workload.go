package chaos

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// Tag and name prefixes of what the workload creates: tokens carry a tag
// TagPrefix+N, peers are named NamePrefix+N. Lists keep only these.
const (
	TagPrefix  = "chaos-"
	NamePrefix = "chaos-"
)

// OpTimeout bounds one call; a call that takes longer ends Unknown.
const OpTimeout = 2 * time.Second

// Workload issues random token and peer operations through the public API
// and records them. Each call goes to one coordinator, once: no client-side
// retry that could apply a write twice.
type Workload struct {
	Rec *Recorder
	// Admin has one admin client per coordinator, each knowing only it.
	Admin []*apiclient.Client
	// Agent has one client per coordinator without credentials, for joins.
	Agent []*apiclient.Client
	// JoinToken is a join token of the default vnet with uses to spare.
	JoinToken string

	mu     sync.Mutex
	next   int               // guarded by mu: the next tag/name number
	ids    map[string]string // guarded by mu: token tag -> id, once known
	tags   []string          // guarded by mu: tags created (or maybe created)
	peers  []string          // guarded by mu: peer names joined (or maybe joined)
	writes []time.Time       // guarded by mu: when each acknowledged write returned
	errs   map[string]int    // guarded by mu: calls that failed, by API error code
}

// AckedCount is how many acknowledged writes Acked would return.
func (w *Workload) AckedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes)
}

// Errors returns how many calls failed with each API error code ("" for
// no answer) and forgets them.
func (w *Workload) Errors() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.errs
	w.errs = map[string]int{}
	return out
}

// Acked returns when each acknowledged write returned, in order, and forgets
// them.
func (w *Workload) Acked() []time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.writes
	w.writes = nil
	return out
}

func (w *Workload) fresh(prefix string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.next++
	return fmt.Sprintf("%s%d", prefix, w.next)
}

func (w *Workload) pick(list []string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(list) == 0 {
		return ""
	}
	return list[rand.IntN(len(list))]
}

// Run issues operations as client id until ctx is done.
func (w *Workload) Run(ctx context.Context, id int) {
	w.mu.Lock()
	if w.ids == nil {
		w.ids = map[string]string{}
	}
	w.mu.Unlock()
	for ctx.Err() == nil {
		node := rand.IntN(len(w.Admin))
		var out Output
		switch r := rand.IntN(100); {
		case r < 25:
			out = w.createToken(id, node)
		case r < 37:
			out = w.revokeToken(id, node)
		case r < 55:
			out = w.listTokens(id, node)
		case r < 75:
			out = w.joinPeer(id, node)
		case r < 85:
			out = w.removePeer(id, node)
		default:
			out = w.listPeers(id, node)
		}
		if out.Code == api.CodeUnavailable {
			// Refused at once: back off a little, as a client would,
			// rather than spin on a coordinator cut off from the leader.
			select {
			case <-ctx.Done():
			case <-time.After(RefusedBackoff):
			}
		}
	}
}

// RefusedBackoff is how long a client waits after an unavailable answer.
const RefusedBackoff = 20 * time.Millisecond

// outcome classifies a call's error: nil is OK; unavailable (refused
// before anything was handed to Raft), storage_failed (the leader could
// not write its log) and the 4xx answers changed nothing; anything else
// (outcome_unknown, other 5xx, timeouts, broken connections) may or may
// not have taken effect.
func outcome(err error) Output {
	if err == nil {
		return Output{Outcome: OK}
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		switch {
		case ae.Code == api.CodeUnavailable, ae.Code == api.CodeStorageFailed, ae.Status() < 500:
			return Output{Outcome: Failed, Code: ae.Code}
		}
	}
	return Output{Outcome: Unknown, Code: errCode(err)}
}

func errCode(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// do makes one call with OpTimeout. The context of the workload is not
// used: a call under way when the round ends runs to its end, so that it
// is recorded with what it returned.
func do(c *apiclient.Client, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), OpTimeout)
	defer cancel()
	return c.Do(ctx, method, path, in, out)
}

func (w *Workload) ack(out Output) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if out.Outcome == OK {
		w.writes = append(w.writes, time.Now())
		return
	}
	if w.errs == nil {
		w.errs = map[string]int{}
	}
	w.errs[out.Code]++
}

func (w *Workload) createToken(id, node int) Output {
	tag := w.fresh(TagPrefix)
	call := w.Rec.Begin(id, Input{Kind: CreateToken, Key: tag})
	var resp api.CreateTokenResponse
	err := do(w.Admin[node], http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: []string{tag}}, &resp)
	out := outcome(err)
	call.End(out)
	w.ack(out)
	if out.Outcome == Failed {
		return out
	}
	w.mu.Lock()
	w.tags = append(w.tags, tag)
	if out.Outcome == OK {
		w.ids[tag] = resp.ID
	}
	w.mu.Unlock()
	return out
}

func (w *Workload) revokeToken(id, node int) Output {
	tag := w.pick(w.tags)
	w.mu.Lock()
	tid, ok := w.ids[tag]
	w.mu.Unlock()
	if !ok {
		return Output{} // not created, or its id is not known yet
	}
	call := w.Rec.Begin(id, Input{Kind: RevokeToken, Key: tag})
	err := do(w.Admin[node], http.MethodPost, "/v1/tokens/"+url.PathEscape(tid)+"/revoke", nil, nil)
	out := outcome(err)
	call.End(out)
	w.ack(out)
	return out
}

func (w *Workload) listTokens(id, node int) Output {
	call := w.Rec.Begin(id, Input{Kind: ListTokens})
	var toks []api.Token
	out := outcome(do(w.Admin[node], http.MethodGet, "/v1/tokens", nil, &toks))
	if out.Outcome == OK {
		out.Tokens = tokenEntries(toks)
		w.mu.Lock()
		for _, t := range toks {
			if tag, ok := chaosTag(t); ok {
				w.ids[tag] = t.ID
			}
		}
		w.mu.Unlock()
	}
	call.End(out)
	return out
}

func chaosTag(t api.Token) (string, bool) {
	for _, tag := range t.Tags {
		if strings.HasPrefix(tag, TagPrefix) {
			return tag, true
		}
	}
	return "", false
}

// tokenEntries keeps the workload's tokens of a list, by tag.
func tokenEntries(toks []api.Token) []TokenEntry {
	out := []TokenEntry{}
	for _, t := range toks {
		if tag, ok := chaosTag(t); ok {
			out = append(out, TokenEntry{Tag: tag, Revoked: t.Revoked})
		}
	}
	SortTokens(out)
	return out
}

// peerNames keeps the workload's peers of a list.
func peerNames(peers []api.Peer) []string {
	out := []string{}
	for _, p := range peers {
		if strings.HasPrefix(p.Name, NamePrefix) {
			out = append(out, p.Name)
		}
	}
	return out
}

func (w *Workload) joinPeer(id, node int) Output {
	name := w.fresh(NamePrefix)
	key := make([]byte, 32)
	crand.Read(key)
	call := w.Rec.Begin(id, Input{Kind: JoinPeer, Key: name})
	req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: w.JoinToken, Name: name,
		PublicKey: base64.StdEncoding.EncodeToString(key), OmitMap: true}
	out := outcome(do(w.Agent[node], http.MethodPost, "/v1/join", req, nil))
	call.End(out)
	w.ack(out)
	if out.Outcome != Failed {
		w.mu.Lock()
		w.peers = append(w.peers, name)
		w.mu.Unlock()
	}
	return out
}

func (w *Workload) removePeer(id, node int) Output {
	name := w.pick(w.peers)
	if name == "" {
		return Output{}
	}
	call := w.Rec.Begin(id, Input{Kind: RemovePeer, Key: name})
	out := outcome(do(w.Admin[node], http.MethodDelete, "/v1/peers/"+api.DefaultVNet+"/"+name, nil, nil))
	call.End(out)
	w.ack(out)
	return out
}

func (w *Workload) listPeers(id, node int) Output {
	call := w.Rec.Begin(id, Input{Kind: ListPeers})
	var peers []api.Peer
	out := outcome(do(w.Admin[node], http.MethodGet, "/v1/peers?vnet="+api.DefaultVNet, nil, &peers))
	if out.Outcome == OK {
		out.Peers = peerNames(peers)
	}
	call.End(out)
	return out
}

// Observe reads the state the models track from one coordinator (a quiet
// read between rounds: the next round's initial state).
func Observe(ctx context.Context, c *apiclient.Client) (State, error) {
	var toks []api.Token
	if err := c.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		return State{}, fmt.Errorf("list tokens: %w", err)
	}
	var peers []api.Peer
	if err := c.Do(ctx, http.MethodGet, "/v1/peers?vnet="+api.DefaultVNet, nil, &peers); err != nil {
		return State{}, fmt.Errorf("list peers: %w", err)
	}
	st := State{Tokens: map[string]bool{}, Peers: map[string]bool{}}
	for _, t := range tokenEntries(toks) {
		st.Tokens[t.Tag] = t.Revoked
	}
	for _, p := range peerNames(peers) {
		st.Peers[p] = false
	}
	return st, nil
}

// Package chaos records concurrent histories of operations on the
// coordinators' public API and checks them for linearizability with
// porcupine: join tokens (create, revoke, list) against a map of tokens,
// peers (join, remove, list) against a set of peers. The fault suite
// (e2e/chaos_test.go) drives it; the models are pure and table-tested.
//
// An operation the coordinator refused (unavailable: nothing was changed;
// storage_failed; a 4xx answer) had no effect. One whose outcome the client
// cannot know (outcome_unknown, any other 5xx, a timeout, a broken
// connection) is recorded with an unknown outcome and a return time of
// infinity, as porcupine expects: it may have taken effect at any point
// after it was called, or never.
package chaos

import (
	"math"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/meshd/meshd/pkg/api"
)

// Kind is what an operation does.
type Kind uint8

// Operations on tokens and on peers.
const (
	CreateToken Kind = iota
	RevokeToken
	ListTokens
	JoinPeer
	RemovePeer
	ListPeers
)

func (k Kind) String() string {
	return [...]string{"create-token", "revoke-token", "list-tokens", "join-peer", "remove-peer", "list-peers"}[k]
}

// IsWrite reports whether the operation changes state.
func (k Kind) IsWrite() bool { return k != ListTokens && k != ListPeers }

// onTokens reports whether the operation belongs to the token model.
func (k Kind) onTokens() bool { return k <= ListTokens }

// Input is an operation as called: its kind and the key it is about (a
// token's tag, a peer's name; empty for a list).
type Input struct {
	Kind Kind
	Key  string
}

// Outcome is how an operation ended.
type Outcome uint8

// Outcomes.
const (
	// OK: the call succeeded.
	OK Outcome = iota
	// Failed: the call was refused and changed nothing (unavailable,
	// storage_failed or a 4xx answer); Output.Code says why.
	Failed
	// Unknown: the call may or may not have taken effect.
	Unknown
)

func (o Outcome) String() string { return [...]string{"ok", "failed", "unknown"}[o] }

// TokenEntry is one token in a list: its tag and whether it is revoked.
type TokenEntry struct {
	Tag     string
	Revoked bool
}

// Output is how an operation ended and what it returned.
type Output struct {
	Outcome Outcome
	Code    string       // API error code when Failed
	Tokens  []TokenEntry // ListTokens: the tokens the model tracks
	Peers   []string     // ListPeers: the peers' names
}

// Recorder collects a history from concurrent clients. Times are
// nanoseconds since the recorder was made, from the monotonic clock.
type Recorder struct {
	start time.Time

	mu  sync.Mutex
	ops []porcupine.Operation // guarded by mu
}

// NewRecorder starts an empty history.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Call is an operation under way.
type Call struct {
	r      *Recorder
	client int
	in     Input
	at     int64
}

// Now is the recorder's clock.
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

// Begin notes that client calls in now.
func (r *Recorder) Begin(client int, in Input) *Call {
	return &Call{r: r, client: client, in: in, at: r.Now()}
}

// End records the call's outcome: an Unknown outcome returns at infinity.
// A read that did not succeed observed nothing and is dropped; so is a
// write refused without effect, which the models would accept anywhere,
// unless its refusal says something of the state (not_found: the key was
// absent; already_revoked: the token was revoked).
func (c *Call) End(out Output) {
	ret := c.r.Now()
	if out.Outcome != OK && !c.in.Kind.IsWrite() {
		return
	}
	if out.Outcome == Failed && out.Code != api.CodeNotFound && out.Code != api.CodeAlreadyRevoked {
		return
	}
	if out.Outcome == Unknown {
		ret = math.MaxInt64
	}
	c.r.mu.Lock()
	c.r.ops = append(c.r.ops, porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.at, Output: out, Return: ret})
	c.r.mu.Unlock()
}

// Take returns the history recorded so far and starts a new one.
func (r *Recorder) Take() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

// Counts tallies a history: operations by outcome.
func Counts(ops []porcupine.Operation) map[Outcome]int {
	n := map[Outcome]int{}
	for _, op := range ops {
		n[op.Output.(Output).Outcome]++
	}
	return n
}

package chaos

import (
	"context"
	"fmt"
	"io"
	"math"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// manyUnknown is a history of n overlapping creates by 8 clients, every
// third with an unknown outcome, between lists that each see the creates
// acknowledged so far: linearizable, and a search over all keys at once
// would have to try orders of every pending create.
func manyUnknown(n int) []porcupine.Operation {
	var ops []porcupine.Operation
	var seen []TokenEntry
	t := int64(0)
	for i := range n {
		tag := fmt.Sprintf("t%03d", i)
		if i%3 == 0 {
			ops = append(ops, op(i%8, t, -1, in(CreateToken, tag), Output{}))
		} else {
			ops = append(ops, op(i%8, t, t+1, in(CreateToken, tag), ok))
			seen = append(seen, live(tag))
		}
		t += 2
		if i%5 == 4 {
			ops = append(ops, op(8, t, t+1, in(ListTokens, ""), tokens(seen...)))
			t += 2
		}
	}
	return ops
}

// op is a history entry for the tables: client, call and return times
// (ret < 0: unknown outcome, returns at infinity).
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	if ret < 0 {
		ret = math.MaxInt64
		out.Outcome = Unknown
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

var (
	ok       = Output{Outcome: OK}
	notFound = Output{Outcome: Failed, Code: api.CodeNotFound}
	refused  = Output{Outcome: Failed, Code: api.CodeInvalidArgument}
)

func tokens(es ...TokenEntry) Output {
	if es == nil {
		es = []TokenEntry{}
	}
	return Output{Outcome: OK, Tokens: es}
}

func peers(names ...string) Output {
	if names == nil {
		names = []string{}
	}
	return Output{Outcome: OK, Peers: names}
}

func live(tag string) TokenEntry    { return TokenEntry{Tag: tag} }
func revoked(tag string) TokenEntry { return TokenEntry{Tag: tag, Revoked: true} }

func in(k Kind, key string) Input { return Input{Kind: k, Key: key} }

func TestModels(t *testing.T) {
	tests := []struct {
		name string
		init State
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{name: "sequential create, revoke, list", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 2, 3, in(RevokeToken, "a"), ok),
			op(1, 4, 5, in(ListTokens, ""), tokens(revoked("a"))),
		}, want: porcupine.Ok},
		{name: "list concurrent with a create may miss it", ops: []porcupine.Operation{
			op(0, 0, 10, in(CreateToken, "a"), ok),
			op(1, 1, 2, in(ListTokens, ""), tokens()),
			op(1, 3, 4, in(ListTokens, ""), tokens(live("a"))),
		}, want: porcupine.Ok},
		{name: "stale read: a list after an acknowledged create misses it", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(1, 2, 3, in(ListTokens, ""), tokens()),
		}, want: porcupine.Illegal},
		{name: "stale read: revocation seen, then unseen", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 2, 10, in(RevokeToken, "a"), ok),
			op(1, 3, 4, in(ListTokens, ""), tokens(revoked("a"))),
			op(2, 5, 6, in(ListTokens, ""), tokens(live("a"))),
		}, want: porcupine.Illegal},
		{name: "lost write: an acknowledged create never shows", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 2, 3, in(CreateToken, "b"), ok),
			op(1, 4, 5, in(ListTokens, ""), tokens(live("b"))),
		}, want: porcupine.Illegal},
		{name: "unknown create may never happen", ops: []porcupine.Operation{
			op(0, 0, -1, in(CreateToken, "a"), Output{}),
			op(1, 2, 3, in(ListTokens, ""), tokens()),
			op(1, 4, 5, in(ListTokens, ""), tokens()),
		}, want: porcupine.Ok},
		{name: "unknown create may happen late", ops: []porcupine.Operation{
			op(0, 0, -1, in(CreateToken, "a"), Output{}),
			op(1, 2, 3, in(ListTokens, ""), tokens()),
			op(1, 4, 5, in(ListTokens, ""), tokens(live("a"))),
		}, want: porcupine.Ok},
		{name: "unknown create cannot be undone", ops: []porcupine.Operation{
			op(0, 0, -1, in(CreateToken, "a"), Output{}),
			op(1, 2, 3, in(ListTokens, ""), tokens(live("a"))),
			op(1, 4, 5, in(ListTokens, ""), tokens()),
		}, want: porcupine.Illegal},
		{name: "a refused create changes nothing", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), refused),
			op(1, 2, 3, in(ListTokens, ""), tokens(live("a"))),
		}, want: porcupine.Illegal},
		{name: "revoke of an unknown token is not found", ops: []porcupine.Operation{
			op(0, 0, 1, in(RevokeToken, "a"), notFound),
			op(0, 2, 3, in(CreateToken, "a"), ok),
		}, want: porcupine.Ok},
		{name: "revoke not found after the create returned", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(1, 2, 3, in(RevokeToken, "a"), notFound),
		}, want: porcupine.Illegal},
		{name: "initial state is what the last round saw", init: State{Tokens: map[string]bool{"a": true}}, ops: []porcupine.Operation{
			op(0, 0, 1, in(ListTokens, ""), tokens(revoked("a"))),
		}, want: porcupine.Ok},
		{name: "initial state: a token vanishes", init: State{Tokens: map[string]bool{"a": false}}, ops: []porcupine.Operation{
			op(0, 0, 1, in(ListTokens, ""), tokens()),
		}, want: porcupine.Illegal},
		{name: "join, remove, list", ops: []porcupine.Operation{
			op(0, 0, 1, in(JoinPeer, "p"), ok),
			op(1, 0, 1, in(JoinPeer, "q"), ok),
			op(0, 2, 3, in(RemovePeer, "p"), ok),
			op(1, 4, 5, in(ListPeers, ""), peers("q")),
		}, want: porcupine.Ok},
		{name: "stale read: a removed peer is listed", ops: []porcupine.Operation{
			op(0, 0, 1, in(JoinPeer, "p"), ok),
			op(0, 2, 3, in(RemovePeer, "p"), ok),
			op(1, 4, 5, in(ListPeers, ""), peers("p")),
		}, want: porcupine.Illegal},
		{name: "stale read: remove of a joined peer is not found", ops: []porcupine.Operation{
			op(0, 0, 1, in(JoinPeer, "p"), ok),
			op(1, 2, 3, in(RemovePeer, "p"), notFound),
		}, want: porcupine.Illegal},
		{name: "unknown remove may land between two lists", ops: []porcupine.Operation{
			op(0, 0, 1, in(JoinPeer, "p"), ok),
			op(0, 2, -1, in(RemovePeer, "p"), Output{}),
			op(1, 3, 4, in(ListPeers, ""), peers("p")),
			op(1, 5, 6, in(ListPeers, ""), peers()),
		}, want: porcupine.Ok},
		{name: "lost join", ops: []porcupine.Operation{
			op(0, 0, 1, in(JoinPeer, "p"), ok),
			op(1, 2, 3, in(ListPeers, ""), peers()),
		}, want: porcupine.Illegal},
		{name: "revoking a revoked token is already_revoked", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 2, 3, in(RevokeToken, "a"), ok),
			op(1, 4, 5, in(RevokeToken, "a"), Output{Outcome: Failed, Code: api.CodeAlreadyRevoked}),
		}, want: porcupine.Ok},
		{name: "already_revoked before any revoke", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(1, 2, 3, in(RevokeToken, "a"), Output{Outcome: Failed, Code: api.CodeAlreadyRevoked}),
		}, want: porcupine.Illegal},
		{name: "a revoked token revoked again with success", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 2, 3, in(RevokeToken, "a"), ok),
			op(1, 4, 5, in(RevokeToken, "a"), ok),
		}, want: porcupine.Illegal},
		{name: "a list shows a token never created", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(1, 2, 3, in(ListTokens, ""), tokens(live("a"), live("b"))),
		}, want: porcupine.Illegal},
		{name: "a list shows a token revoked that is live", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(0, 0, 1, in(CreateToken, "b"), ok),
			op(1, 2, 3, in(ListTokens, ""), tokens(live("a"), revoked("b"))),
		}, want: porcupine.Illegal},
		{name: "a list shows a peer never joined", init: State{Peers: map[string]bool{"p": false}}, ops: []porcupine.Operation{
			op(1, 2, 3, in(ListPeers, ""), peers("p", "q")),
		}, want: porcupine.Illegal},
		{name: "many keys with unknown outcomes stay tractable", ops: manyUnknown(200), want: porcupine.Ok},
		{name: "token and peer histories are checked apart", ops: []porcupine.Operation{
			op(0, 0, 1, in(CreateToken, "a"), ok),
			op(1, 0, 1, in(JoinPeer, "p"), ok),
			op(0, 2, 3, in(ListPeers, ""), peers("p")),
			op(1, 2, 3, in(ListTokens, ""), tokens(live("a"))),
		}, want: porcupine.Ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Check(tt.init, tt.ops, 10*time.Second)
			if v.Result != tt.want {
				t.Fatalf("got %v; want %v", v.Result, tt.want)
			}
		})
	}
}

// TestRecorder: a failed read is dropped, and a write refused without
// effect (unless not_found); an unknown write returns at infinity, Take
// empties the history.
func TestRecorder(t *testing.T) {
	r := NewRecorder()
	r.Begin(0, in(ListTokens, "")).End(Output{Outcome: Unknown})
	r.Begin(0, in(CreateToken, "c")).End(Output{Outcome: Failed, Code: api.CodeUnavailable})
	r.Begin(0, in(CreateToken, "a")).End(Output{Outcome: Unknown})
	r.Begin(1, in(CreateToken, "b")).End(ok)
	ops := r.Take()
	if len(ops) != 2 {
		t.Fatalf("got %d operations; want 2 (the failed read dropped)", len(ops))
	}
	if ops[0].Return != math.MaxInt64 {
		t.Errorf("unknown write returns at %d; want infinity", ops[0].Return)
	}
	if ops[1].Return == math.MaxInt64 || ops[1].Return < ops[1].Call {
		t.Errorf("acknowledged write: call %d, return %d", ops[1].Call, ops[1].Return)
	}
	if n := len(r.Take()); n != 0 {
		t.Errorf("after Take: %d operations; want 0", n)
	}
}

// TestOutcome classifies call errors.
func TestOutcome(t *testing.T) {
	tests := []struct {
		err  error
		want Outcome
	}{
		{nil, OK},
		{api.Errorf(api.CodeNotFound, "x"), Failed},
		{api.Errorf(api.CodeConflict, "x"), Failed},
		// Refused before anything was handed to Raft.
		{api.Errorf(api.CodeUnavailable, "x"), Failed},
		{api.Errorf(api.CodeStorageFailed, "x"), Failed},
		// Handed over, answer lost.
		{api.Errorf(api.CodeOutcomeUnknown, "x"), Unknown},
		{&apiclient.UnreachableError{Attempts: []apiclient.Attempt{{URL: "u", Err: api.Errorf(api.CodeOutcomeUnknown, "x")}}}, Unknown},
		{&apiclient.UnreachableError{Attempts: []apiclient.Attempt{{URL: "u", Err: api.Errorf(api.CodeUnavailable, "x")}}}, Failed},
		{api.Errorf(api.CodeInternal, "x"), Unknown},
		{context.DeadlineExceeded, Unknown},
		{io.ErrUnexpectedEOF, Unknown},
	}
	for _, tt := range tests {
		if got := outcome(tt.err).Outcome; got != tt.want {
			t.Errorf("outcome(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}

package fsm

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

// TestApplyTokenPrune: a second revocation is refused with
// already_revoked; PruneTokens deletes the listed tokens that are dead and
// reports them; the state survives a snapshot; entries from older
// versions (a revocation without its time) still apply.
func TestApplyTokenPrune(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := func(id string) state.TokenSpec {
		return state.TokenSpec{ID: id, SecretHash: strings.Repeat(id[:1], 64), VNet: api.DefaultVNet, Uses: 1, Expires: now.Add(time.Hour)}
	}
	index := uint64(0)
	apply := func(typ MessageType, body any) *Result {
		t.Helper()
		data, err := Encode(typ, body)
		if err != nil {
			t.Fatal(err)
		}
		index++
		return f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(*Result)
	}
	applyRaw := func(typ MessageType, body string) *Result {
		index++
		return f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: append([]byte{byte(typ)}, body...)}).(*Result)
	}
	for _, c := range []struct {
		typ  MessageType
		body any
	}{
		{BootstrapType, &Bootstrap{Now: now, GossipKey: make([]byte, 32)}},
		{CreateTokenType, &CreateToken{Spec: spec("a"), Now: now}},
		{CreateTokenType, &CreateToken{Spec: spec("b"), Now: now}},
		{CreateTokenType, &CreateToken{Spec: spec("c"), Now: now}},
		{RevokeTokenType, &RevokeToken{ID: "a", Now: now.Add(time.Minute)}},
	} {
		if r := apply(c.typ, c.body); r.Err != nil {
			t.Fatalf("%T: %v", c.body, r.Err)
		}
	}
	if r := apply(RevokeTokenType, &RevokeToken{ID: "a", Now: now.Add(2 * time.Minute)}); r.Err == nil || r.Err.Code != api.CodeAlreadyRevoked || r.Err.Status() != 409 {
		t.Fatalf("second revoke: %+v; want %s (409)", r.Err, api.CodeAlreadyRevoked)
	}
	// As a version without RevokedAt wrote it.
	if r := applyRaw(RevokeTokenType, `{"id":"b"}`); r.Err != nil {
		t.Fatal(r.Err)
	}
	r := apply(PruneTokensType, &PruneTokens{IDs: []string{"c", "b", "a", "x"}, Now: now.Add(3 * time.Minute)})
	if r.Err != nil || !slices.Equal(r.IDs, []string{"a", "b"}) {
		t.Fatalf("prune: %v %v; want a and b (c is valid, x unknown)", r.IDs, r.Err)
	}
	// A newer version's fields are ignored.
	if r := applyRaw(PruneTokensType, `{"ids":["c"],"now":"2026-01-01T02:00:00Z","reason":"x"}`); r.Err != nil || !slices.Equal(r.IDs, []string{"c"}) {
		t.Fatalf("prune of the expired c: %v %v", r.IDs, r.Err)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	other := state.New()
	if err := New(other, logging.Discard()).Restore(readCloser(snap, t)); err != nil {
		t.Fatal(err)
	}
	other.Read(func(tb *state.Tables, _ uint64) {
		if len(tb.Tokens) != 0 {
			t.Fatalf("restored tokens %v; want none", tb.Tokens)
		}
	})
	if Required(PruneTokensType).Level != 3 || FeatureLevel < 3 {
		t.Fatalf("PruneTokens needs level %d (this version %d); want 3", Required(PruneTokensType).Level, FeatureLevel)
	}
}

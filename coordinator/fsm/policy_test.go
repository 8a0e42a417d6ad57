package fsm

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

func TestApplyPolicy(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	doc := json.RawMessage(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	for i, c := range []struct {
		t       MessageType
		body    any
		err     string
		version int
	}{
		{BootstrapType, &Bootstrap{Now: now, GossipKey: make([]byte, 32)}, "", 0},
		{SetPolicyType, &SetPolicy{VNet: "nope", Policy: doc, SetBy: "admin", Now: now}, api.CodeNotFound, 0},
		{SetPolicyType, &SetPolicy{VNet: api.DefaultVNet, Policy: doc, SetBy: "admin", Now: now}, "", 1},
		{SetPolicyType, &SetPolicy{VNet: api.DefaultVNet, Policy: doc, SetBy: "ops", Now: now, Prev: 0}, api.CodeConflict, 0},
		{SetPolicyType, &SetPolicy{VNet: api.DefaultVNet, Policy: doc, SetBy: "ops", Now: now.Add(time.Hour), Prev: 1}, "", 2},
		{DeletePolicyType, &DeletePolicy{VNet: api.DefaultVNet, SetBy: "ops", Now: now, Prev: 2}, "", 3},
		{SetPolicyType, &SetPolicy{VNet: api.DefaultVNet, Policy: doc, SetBy: "admin", Now: now, Prev: 3}, "", 4},
	} {
		data, err := Encode(c.t, c.body)
		if err != nil {
			t.Fatal(err)
		}
		r := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*Result)
		got := ""
		if r.Err != nil {
			got = r.Err.Code
		}
		if got != c.err || r.Version != c.version {
			t.Fatalf("command %d: got error %q version %d; want %q, %d", i, got, r.Version, c.err, c.version)
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	other := state.New()
	if err := New(other, logging.Discard()).Restore(readCloser(snap, t)); err != nil {
		t.Fatal(err)
	}
	if string(other.Dump()) != string(st.Dump()) {
		t.Fatalf("restore changed the state:\n got %s\nwant %s", other.Dump(), st.Dump())
	}
	other.Read(func(tb *state.Tables, _ uint64) {
		vs := tb.Policies[api.DefaultVNet].Versions
		if len(vs) != 4 || vs[1].SetBy != "ops" || !vs[2].Deleted || tb.Policy(api.DefaultVNet) == nil {
			t.Fatalf("restored history %+v; want 4 versions, the 2nd by ops, the 3rd a deletion, one in force", vs)
		}
	})
}

// TestDecodePolicyCompatible: a SetPolicy from a newer version, with
// fields this one does not know, decodes.
func TestDecodePolicyCompatible(t *testing.T) {
	typ, body, err := Decode(append([]byte{byte(SetPolicyType)}, `{"vnet":"v","policy":{"acls":[],"x":1},"set_by":"a","now":"2026-01-01T00:00:00Z","prev":2,"reason":"new"}`...))
	if err != nil || typ != SetPolicyType {
		t.Fatalf("got %v, %v; want a SetPolicy", typ, err)
	}
	if c := body.(*SetPolicy); c.VNet != "v" || c.Prev != 2 || string(c.Policy) != `{"acls":[],"x":1}` {
		t.Fatalf("got %+v", c)
	}
}

// readCloser persists a snapshot into memory for Restore.
func readCloser(s raft.FSMSnapshot, t *testing.T) io.ReadCloser {
	t.Helper()
	sink := &memSink{}
	if err := s.Persist(sink); err != nil {
		t.Fatal(err)
	}
	return io.NopCloser(bytes.NewReader(sink.Bytes()))
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

package fsm

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

const hash64 = "0000000000000000000000000000000000000000000000000000000000000000"

func TestApplyAndSnapshotRoundTrip(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cmds := []struct {
		t    MessageType
		body any
		err  string
	}{
		{BootstrapType, &Bootstrap{Now: now, GossipKey: make([]byte, 32)}, ""},
		{CreateVNetType, &CreateVNet{Name: "site", Overlay: "100.112.0.0/16", Now: now}, ""},
		{CreateVNetType, &CreateVNet{Name: "clash", Overlay: "100.112.4.0/24", Now: now}, api.CodeOverlap},
		{CreateVNetType, &CreateVNet{Name: "site", Overlay: "100.113.0.0/16", Now: now}, api.CodeConflict},
		{RegisterCoordinatorType, &RegisterCoordinator{Coordinator: state.Coordinator{Name: "c1", RaftAddr: "127.0.0.1:1", APIURL: "https://127.0.0.1:2"}}, ""},
		{CreateTokenType, &CreateToken{Spec: state.TokenSpec{ID: "tok", SecretHash: hash64, VNet: api.DefaultVNet, Uses: 1, Expires: now.Add(time.Hour)}, Now: now}, ""},
		{JoinPeerType, &JoinPeer{Spec: state.JoinSpec{TokenID: "tok", SecretHash: hash64, PeerID: "p1", Name: "p1", PublicKey: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", CredHash: hash64}, Now: now}, ""},
		{MarkWatchesType, &MarkWatches{Coordinator: "c1", Held: []string{"p1", "unknown"}}, ""},
		{UpdatePeerType, &UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Relay: ptr("192.0.2.1:49152")}}, ""},
		{UpdatePeerType, &UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Relay: ptr("not an address")}}, api.CodeInvalidArgument},
		{RegisterCoordinatorType, &RegisterCoordinator{Coordinator: state.Coordinator{Name: "c2", RaftAddr: "127.0.0.1:3", APIURL: "https://127.0.0.1:4",
			STUNAddr: "127.0.0.1:3478", RelayIP: "127.0.0.1", RelayTLSAddr: "127.0.0.1:5349"}}, ""},
	}
	for i, c := range cmds {
		data, err := Encode(c.t, c.body)
		if err != nil {
			t.Fatal(err)
		}
		r := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*Result)
		got := ""
		if r.Err != nil {
			got = r.Err.Code
		}
		if got != c.err {
			t.Fatalf("command %d: got error %q; want %q", i, got, c.err)
		}
	}
	snap, err := st.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	other := state.New()
	if err := other.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if string(other.Dump()) != string(st.Dump()) {
		t.Fatalf("restore changed the state:\n got %s\nwant %s", other.Dump(), st.Dump())
	}
	var by, relay string
	var c2 state.Coordinator
	other.Read(func(t *state.Tables, _ uint64) {
		by, relay, c2 = t.Peers["p1"].WatchedBy, t.Peers["p1"].Relay, *t.Coordinators["c2"]
	})
	if by != "c1" {
		t.Fatalf("restored watch mark %q; want c1", by)
	}
	if relay != "192.0.2.1:49152" || c2.RelayIP != "127.0.0.1" || c2.RelayTLSAddr != "127.0.0.1:5349" {
		t.Fatalf("restored relay %q and coordinator %+v; want the relayed address and the relay addresses", relay, c2)
	}
	if other.Index() != st.Index() {
		t.Fatalf("got index %d; want %d", other.Index(), st.Index())
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{100, '{', '}'}},
		{"bad json", []byte{byte(CreateVNetType), '{'}},
		{"trailing", append([]byte{byte(DeleteVNetType)}, `{"name":"x"} {}`...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := Decode(tt.data); !errors.Is(err, ErrDecode) {
				t.Fatalf("got %v; want %v", err, ErrDecode)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestDecodeCompatible: entries written before a field existed decode, and
// fields from a newer version are ignored rather than taken for divergence.
func TestDecodeCompatible(t *testing.T) {
	for _, tt := range []struct {
		name string
		data string
		want any
	}{
		{"heartbeat before relays", `{"update":{"peer_id":"p1","endpoints":["192.0.2.1:51820"]}}`,
			&UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Endpoints: &[]string{"192.0.2.1:51820"}}}},
		{"heartbeat with a relay", `{"update":{"peer_id":"p1","relay":"192.0.2.1:49152"}}`,
			&UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Relay: ptr("192.0.2.1:49152")}}},
		{"field from a newer version", `{"update":{"peer_id":"p1","relay":"","future":{"x":1}},"also":2}`,
			&UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Relay: ptr("")}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			typ, body, err := Decode(append([]byte{byte(UpdatePeerType)}, tt.data...))
			if err != nil || typ != UpdatePeerType {
				t.Fatalf("got %v, %v; want an UpdatePeer", typ, err)
			}
			got, _ := json.Marshal(body)
			want, _ := json.Marshal(tt.want)
			if string(got) != string(want) {
				t.Fatalf("got %s; want %s", got, want)
			}
		})
	}
	// An update without a relay encodes as it did before the field existed.
	b, err := Encode(UpdatePeerType, &UpdatePeer{Update: state.PeerUpdate{PeerID: "p1", Endpoints: &[]string{}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x08{\"update\":{\"peer_id\":\"p1\",\"endpoints\":[]}}\n"; string(b) != want {
		t.Fatalf("got %q; want %q", b, want)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range []struct {
		t MessageType
		b any
	}{
		{CreateVNetType, &CreateVNet{Name: "a", Overlay: "10.0.0.0/8"}},
		{JoinPeerType, &JoinPeer{Spec: state.JoinSpec{Name: "p", Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: 5}}}}},
		{TouchPeersType, &TouchPeers{Seen: map[string]time.Time{"x": {}}}},
		{MarkWatchesType, &MarkWatches{Coordinator: "c1", Held: []string{"a"}, Released: map[string]time.Time{"b": {}}}},
	} {
		d, err := Encode(c.t, c.b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, err := Decode(data)
		if err != nil {
			return
		}
		again, err := Encode(typ, body)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, _, err := Decode(again); err != nil {
			t.Fatalf("decode of re-encoded command: %v", err)
		}
	})
}

// TestIgnorableUnknownType: a command type this version does not know is
// skipped when it carries IgnorableFlag (the index moves on, the state
// does not), and stops the replica otherwise.
func TestIgnorableUnknownType(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	before := st.Dump()
	r := f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: []byte{byte(IgnorableFlag | 0x30), '{', '}'}})
	if res, ok := r.(*Result); !ok || res.Index != 7 || res.Err != nil {
		t.Fatalf("applying an ignorable unknown command returned %#v", r)
	}
	if st.Index() != 7 || string(st.Dump()) != string(before) {
		t.Fatalf("index %d after skipping; want 7 and the state untouched", st.Index())
	}
	defer func() {
		if recover() == nil {
			t.Fatal("an unknown command without IgnorableFlag was applied instead of stopping the replica")
		}
	}()
	f.Apply(&raft.Log{Index: 8, Type: raft.LogCommand, Data: []byte{0x30, '{', '}'}})
}

package fsm

import (
	"bytes"
	"encoding/base64"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

// TestGossipKeyCommands: the key-rotating commands applied by two replicas
// give the same state (the keys come from the seeds in the log, not from
// the replicas); a removal rotates only its vnet's ring; a removal written
// before rotation on removal existed rotates nothing; a prune drops the
// superseded key once the grace is over; the state survives a snapshot.
func TestGossipKeyCommands(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seed := func(b byte) []byte { return bytes.Repeat([]byte{b}, state.GossipSeedBytes) }
	join := func(id, tok string) *JoinPeer {
		return &JoinPeer{Spec: state.JoinSpec{TokenID: tok, SecretHash: hash64, PeerID: id, Name: id, PublicKey: wgKey(id), CredHash: hash64}, Now: now}
	}
	token := func(id, vnet string) *CreateToken {
		return &CreateToken{Spec: state.TokenSpec{ID: id, SecretHash: hash64, VNet: vnet, Uses: 5, Expires: now.Add(time.Hour)}, Now: now}
	}
	type cmd struct {
		t    MessageType
		body any
		raw  string // a log entry as an older version wrote it
		err  string
	}
	cmds := []cmd{
		{t: BootstrapType, body: &Bootstrap{Now: now, GossipKey: make([]byte, 32)}},
		{t: CreateVNetType, body: &CreateVNet{Name: "site", Overlay: "100.112.0.0/16", Now: now, GossipSeed: seed(1)}},
		{t: CreateVNetType, body: &CreateVNet{Name: "bad", Overlay: "100.113.0.0/16", Now: now, GossipSeed: []byte("short")}, err: api.CodeInvalidArgument},
		{t: CreateTokenType, body: token("td", api.DefaultVNet)},
		{t: CreateTokenType, body: token("ts", "site")},
		{t: JoinPeerType, body: join("d1", "td")},
		{t: JoinPeerType, body: join("d2", "td")},
		{t: JoinPeerType, body: join("s1", "ts")},
		{t: JoinPeerType, body: join("s2", "ts")},
		{t: RemovePeerType, body: &RemovePeer{ID: "s1", Now: now.Add(time.Second), GossipSeed: seed(2)}},
		{t: RemovePeerType, raw: `{"id":"d1"}`},
		{t: RotateVNetKeysType, body: &RotateVNetKeys{VNet: "nope", GossipSeed: seed(3), Now: now}, err: api.CodeNotFound},
		{t: PruneGossipKeysType, body: &PruneGossipKeys{Now: now.Add(30 * time.Second), Grace: time.Minute}},
	}
	apply := func(f *FSM, from uint64, cmds []cmd) []*Result {
		t.Helper()
		var out []*Result
		for i, c := range cmds {
			data := append([]byte{byte(c.t)}, c.raw...)
			if c.raw == "" {
				var err error
				if data, err = Encode(c.t, c.body); err != nil {
					t.Fatal(err)
				}
			}
			r := f.Apply(&raft.Log{Index: from + uint64(i), Type: raft.LogCommand, Data: data}).(*Result)
			got := ""
			if r.Err != nil {
				got = r.Err.Code
			}
			if got != c.err {
				t.Fatalf("command %d (type %d): got error %q; want %q", i, c.t, got, c.err)
			}
			out = append(out, r)
		}
		return out
	}
	a, b := state.New(), state.New()
	apply(New(a, logging.Discard()), 1, cmds)
	apply(New(b, logging.Discard()), 1, cmds)
	if !bytes.Equal(a.Dump(), b.Dump()) {
		t.Fatalf("two replicas applying the same log differ:\n%s\n%s", a.Dump(), b.Dump())
	}
	keys := func(s *state.Store, vnet string) (out [][]byte) {
		s.Read(func(t *state.Tables, _ uint64) { out = t.VNetGossipKeys(vnet) })
		return out
	}
	legacy := make([]byte, 32)
	site1, site2 := state.DeriveGossipKey(seed(1), "site"), state.DeriveGossipKey(seed(2), "site")
	if got := keys(a, "site"); !slices.EqualFunc(got, [][]byte{site2, site1}, bytes.Equal) {
		t.Fatalf("site ring %x; want its new key, then its first within the grace", got)
	}
	if got := keys(a, api.DefaultVNet); !slices.EqualFunc(got, [][]byte{legacy}, bytes.Equal) {
		t.Fatalf("default ring %x; want the legacy key alone (its removal carried no seed)", got)
	}
	var has bool
	a.Read(func(t *state.Tables, _ uint64) { _, has = t.VNets["bad"] })
	if has {
		t.Fatal("a vnet whose command carried a bad seed was created")
	}

	// The grace ends; then an admin rotates every vnet.
	n := uint64(len(cmds) + 1)
	res := apply(New(a, logging.Discard()), n, []cmd{
		{t: PruneGossipKeysType, body: &PruneGossipKeys{Now: now.Add(61 * time.Second), Grace: time.Minute}},
		{t: RotateVNetKeysType, body: &RotateVNetKeys{GossipSeed: seed(4), Now: now.Add(2 * time.Minute)}},
	})
	if !slices.Equal(res[0].IDs, []string{"site"}) || !slices.Equal(res[1].IDs, []string{api.DefaultVNet, "site"}) {
		t.Fatalf("pruned %v, rotated %v; want [site], [default site]", res[0].IDs, res[1].IDs)
	}
	if got := keys(a, "site"); !slices.EqualFunc(got, [][]byte{state.DeriveGossipKey(seed(4), "site"), site2}, bytes.Equal) {
		t.Fatalf("site ring %x after prune and rotation", got)
	}
	if got := keys(a, api.DefaultVNet); !slices.EqualFunc(got, [][]byte{state.DeriveGossipKey(seed(4), api.DefaultVNet), legacy}, bytes.Equal) {
		t.Fatalf("default ring %x after its first rotation", got)
	}

	snap, err := New(a, logging.Discard()).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf sink
	if err := snap.Persist(&buf); err != nil {
		t.Fatal(err)
	}
	c := state.New()
	if err := New(c, logging.Discard()).Restore(io.NopCloser(&buf.Buffer)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Dump(), a.Dump()) {
		t.Fatalf("restore changed the state:\n got %s\nwant %s", c.Dump(), a.Dump())
	}
}

// TestGossipKeyCommandsDecodeCompatible: a removal as older versions wrote
// it decodes with no seed, and one without a seed encodes as before.
func TestGossipKeyCommandsDecodeCompatible(t *testing.T) {
	typ, body, err := Decode(append([]byte{byte(RemovePeerType)}, `{"id":"p1"}`...))
	if err != nil || typ != RemovePeerType {
		t.Fatalf("got %v, %v", typ, err)
	}
	if r := body.(*RemovePeer); r.ID != "p1" || r.GossipSeed != nil || !r.Now.IsZero() {
		t.Fatalf("got %+v; want p1 with no seed", r)
	}
	b, err := Encode(RemovePeerType, &RemovePeer{ID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x07{\"id\":\"p1\"}\n"; string(b) != want {
		t.Fatalf("got %q; want %q", b, want)
	}
}

// wgKey is a distinct valid WireGuard public key per name.
func wgKey(name string) string {
	k := bytes.Repeat([]byte{1}, 32)
	copy(k, name)
	return base64.StdEncoding.EncodeToString(k)
}

type sink struct{ bytes.Buffer }

func (*sink) ID() string    { return "test" }
func (*sink) Cancel() error { return nil }
func (*sink) Close() error  { return nil }

package fsm

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

func TestApplyAdminTokens(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := strings.Repeat("a", 64)
	for i, c := range []struct {
		t    MessageType
		body any
		err  string
		ids  []string
	}{
		{BootstrapType, &Bootstrap{Now: now, GossipKey: make([]byte, 32)}, "", nil},
		{RevokeAdminTokenType, &RevokeAdminToken{Ref: "admin", By: "admin", Now: now}, api.CodeConflict, nil},
		{CreateAdminTokenType, &CreateAdminToken{Spec: state.AdminTokenSpec{ID: "id1", Name: "grafana", SecretHash: h, ReadOnly: true, CreatedBy: "admin"}, Now: now}, "", nil},
		{RevokeAdminTokenType, &RevokeAdminToken{Ref: "admin", By: "admin", Now: now}, api.CodeConflict, nil},
		{CreateAdminTokenType, &CreateAdminToken{Spec: state.AdminTokenSpec{ID: "id2", Name: "ops", SecretHash: h, CreatedBy: "admin"}, Now: now}, "", nil},
		{CreateAdminTokenType, &CreateAdminToken{Spec: state.AdminTokenSpec{ID: "id3", Name: "ops", SecretHash: h}, Now: now}, api.CodeConflict, nil},
		{RevokeAdminTokenType, &RevokeAdminToken{Ref: "admin", By: "ops", Now: now.Add(time.Hour)}, "", []string{"admin"}},
		{RevokeAdminTokenType, &RevokeAdminToken{Ref: "id2", By: "ops", Now: now}, api.CodeConflict, nil},
		{RevokeAdminTokenType, &RevokeAdminToken{Ref: "grafana", By: "ops", Now: now}, "", []string{"id1"}},
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
		if got != c.err || strings.Join(r.IDs, ",") != strings.Join(c.ids, ",") {
			t.Fatalf("command %d: got error %q ids %v; want %q, %v", i, got, r.IDs, c.err, c.ids)
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
		b := tb.AdminTokens[state.BootstrapAdminID]
		if !tb.BootstrapAdminRevoked() || b.RevokedBy != "ops" || !tb.AdminTokens["id1"].Revoked || tb.AdminTokens["id2"].Revoked {
			t.Fatalf("restored %+v; want admin and grafana revoked (admin by ops), ops valid", tb.AdminTokens)
		}
	})
}

// TestDecodeAdminCompatible: admin token commands from a newer version,
// with fields this one does not know, decode.
func TestDecodeAdminCompatible(t *testing.T) {
	typ, body, err := Decode(append([]byte{byte(CreateAdminTokenType)}, `{"spec":{"id":"i","name":"n","secret_hash":"h","read_only":true,"expires":"2027-01-01T00:00:00Z"},"now":"2026-01-01T00:00:00Z","x":1}`...))
	if err != nil || typ != CreateAdminTokenType {
		t.Fatalf("got %v, %v; want a CreateAdminToken", typ, err)
	}
	if c := body.(*CreateAdminToken); c.Spec.Name != "n" || !c.Spec.ReadOnly {
		t.Fatalf("got %+v", c)
	}
	typ, body, err = Decode(append([]byte{byte(RevokeAdminTokenType)}, `{"ref":"ops","by":"admin","now":"2026-01-01T00:00:00Z","reason":"left"}`...))
	if err != nil || typ != RevokeAdminTokenType || body.(*RevokeAdminToken).Ref != "ops" {
		t.Fatalf("got %v, %+v, %v; want a RevokeAdminToken of ops", typ, body, err)
	}
}

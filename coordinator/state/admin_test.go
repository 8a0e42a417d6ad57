package state

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

func adminSpec(id, name string, readOnly bool) AdminTokenSpec {
	return AdminTokenSpec{ID: id, Name: name, SecretHash: hash(id[0]), ReadOnly: readOnly, CreatedBy: "admin"}
}

// adminState describes every admin credential as name:state, the bootstrap
// one included.
func adminState(s *Store) map[string]string {
	out := map[string]string{}
	s.Read(func(t *Tables, _ uint64) {
		for _, a := range t.SortedAdminTokens() {
			st := "full"
			if a.ReadOnly {
				st = "read-only"
			}
			if a.Revoked {
				st += ",revoked"
			}
			out[a.Name] = st
		}
	})
	return out
}

func TestAdminTokens(t *testing.T) {
	s := setup(t)
	if got := adminState(s); len(got) != 1 || got["admin"] != "full" {
		t.Fatalf("got %v; want only the bootstrap credential, full", got)
	}
	// The bootstrap credential alone is the last full one.
	if _, err := s.RevokeAdminToken("admin", "admin", t0); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the only admin credential: got %v; want %s", err, api.CodeConflict)
	}
	if err := s.CreateAdminToken(adminSpec("r1", "grafana", true), t0); err != nil {
		t.Fatal(err)
	}
	// A read-only credential does not count: still the last full one.
	if _, err := s.RevokeAdminToken("admin", "admin", t0); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("revoke the last full credential next to a read-only one: got %v; want %s", err, api.CodeConflict)
	}
	for _, tt := range []struct {
		name string
		spec AdminTokenSpec
		code string
	}{
		{"name taken", adminSpec("x1", "grafana", false), api.CodeConflict},
		{"bootstrap name", adminSpec("x1", "admin", false), api.CodeConflict},
		{"bootstrap id", adminSpec("admin", "ops", false), api.CodeInvalidArgument},
		{"bad name", adminSpec("x1", "Ops!", false), api.CodeInvalidName},
		{"no hash", AdminTokenSpec{ID: "x1", Name: "ops"}, api.CodeInvalidArgument},
		{"id taken", adminSpec("r1", "ops", false), api.CodeConflict},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Dump()
			if err := s.CreateAdminToken(tt.spec, t0); !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want code %s", err, tt.code)
			}
			if string(s.Dump()) != string(before) {
				t.Fatal("a refused create changed the state")
			}
		})
	}
	if err := s.CreateAdminToken(adminSpec("f1", "ops", false), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// Now the bootstrap credential may go, by name; revoking it again is
	// refused as already revoked and changes nothing.
	if id, err := s.RevokeAdminToken("admin", "ops", t0.Add(time.Minute)); err != nil || id != BootstrapAdminID {
		t.Fatalf("revoke bootstrap: got %q, %v; want admin, nil", id, err)
	}
	before := s.Dump()
	if _, err := s.RevokeAdminToken("admin", "someone", t0.Add(time.Hour)); !api.IsCode(err, api.CodeAlreadyRevoked) || string(s.Dump()) != string(before) {
		t.Fatalf("revoke again: got %v (state changed: %t); want %s and no change", err, string(s.Dump()) != string(before), api.CodeAlreadyRevoked)
	}
	s.Read(func(tb *Tables, _ uint64) {
		a := tb.AdminTokens[BootstrapAdminID]
		if !tb.BootstrapAdminRevoked() || a.RevokedBy != "ops" || !a.RevokedAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("bootstrap record %+v; want revoked by ops at t0+1m", a)
		}
	})
	// ops is the last full credential now, by id or by name.
	for _, ref := range []string{"ops", "f1"} {
		if _, err := s.RevokeAdminToken(ref, "ops", t0); !api.IsCode(err, api.CodeConflict) {
			t.Fatalf("revoke %s, the last full credential: got %v; want %s", ref, err, api.CodeConflict)
		}
	}
	// A read-only credential may always go; its name is not reused.
	if id, err := s.RevokeAdminToken("grafana", "ops", t0); err != nil || id != "r1" {
		t.Fatalf("revoke grafana: got %q, %v; want r1, nil", id, err)
	}
	if err := s.CreateAdminToken(adminSpec("r2", "grafana", true), t0); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("reuse a revoked name: got %v; want %s", err, api.CodeConflict)
	}
	if _, err := s.RevokeAdminToken("nope", "ops", t0); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("revoke unknown: got %v; want %s", err, api.CodeNotFound)
	}
	want := map[string]string{"admin": "full,revoked", "grafana": "read-only,revoked", "ops": "full"}
	if got := adminState(s); len(got) != len(want) || got["admin"] != want["admin"] || got["grafana"] != want["grafana"] || got["ops"] != want["ops"] {
		t.Fatalf("got %v; want %v", got, want)
	}
}

func TestAdminTokensSnapshotRoundTrip(t *testing.T) {
	s := setup(t)
	for _, sp := range []AdminTokenSpec{adminSpec("f1", "ops", false), adminSpec("r1", "grafana", true)} {
		if err := s.CreateAdminToken(sp, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeAdminToken("admin", "ops", t0); err != nil {
		t.Fatal(err)
	}
	r := roundTrip(t, s)
	r.Read(func(tb *Tables, _ uint64) {
		if !tb.BootstrapAdminRevoked() || !tb.AdminTokens["r1"].ReadOnly || tb.AdminTokens["f1"].SecretHash != hash('f') {
			t.Fatalf("restored %+v; want the bootstrap revoked, grafana read-only, ops with its hash", tb.AdminTokens)
		}
	})
	// The last-full rule holds on the restored state.
	if _, err := r.RevokeAdminToken("ops", "ops", t0); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("got %v; want %s", err, api.CodeConflict)
	}
}

// TestOldSnapshotAdminLoads: a snapshot written before admin credentials
// were objects (no "admin_tokens" table) loads with the bootstrap
// credential valid, and named ones can be added on top of it.
func TestOldSnapshotAdminLoads(t *testing.T) {
	s := setup(t)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Tables map[string]json.RawMessage `json:"tables"`
	}
	if err := json.Unmarshal(snap, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Tables["admin_tokens"]; ok {
		t.Fatal("a state without admin tokens writes an admin_tokens table; older versions' snapshots have none")
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	r.Read(func(tb *Tables, _ uint64) {
		if tb.BootstrapAdminRevoked() || tb.fullAdmins() != 1 {
			t.Fatal("the bootstrap credential is not valid after loading an old snapshot")
		}
	})
	if err := r.CreateAdminToken(adminSpec("f1", "ops", false), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RevokeAdminToken("admin", "ops", t0); err != nil {
		t.Fatal(err)
	}
}

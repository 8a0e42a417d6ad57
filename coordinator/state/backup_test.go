package state

import (
	"encoding/json"
	"testing"

	"github.com/meshd/meshd/pkg/api"
)

// TestBackupReseed: a backup restores into a new store with every table;
// reseeding it for a new cluster moves the index, forgets the coordinators
// and the watch marks, keeps everything else, and sends any watcher of the
// old cluster a full map.
func TestBackupReseed(t *testing.T) {
	s := setup(t)
	s.SetIndex(2)
	if _, err := s.Join(JoinSpec{TokenID: "tok1", SecretHash: hash('a'), PeerID: "p1", Name: "gw1", PublicKey: key(), CredHash: hash('c'),
		Routes: []api.Route{{Prefix: "10.1.2.0/24", Priority: 10}}}, t0); err != nil {
		t.Fatal(err)
	}
	s.SetIndex(3)
	if err := s.RegisterCoordinator(Coordinator{Name: "c1", RaftAddr: "10.0.0.1:8301", APIURL: "https://10.0.0.1:8443"}); err != nil {
		t.Fatal(err)
	}
	s.SetIndex(4)
	s.MarkWatches("c1", []string{"p1"}, nil)
	s.Applied(4)

	data, index, counts, err := s.Backup()
	if err != nil {
		t.Fatal(err)
	}
	if index != 4 || counts["peers"] != 1 || counts["routes"] != 1 || counts["tokens"] != 1 || counts["coordinators"] != 1 || counts["vnets"] != 1 {
		t.Fatalf("backup at %d with %v; want index 4, one vnet, peer, route, token and coordinator", index, counts)
	}
	r := New()
	if err := r.Restore(data); err != nil {
		t.Fatal(err)
	}
	if string(r.Dump()) != string(s.Dump()) {
		t.Fatal("restored tables differ from the backed-up ones")
	}
	if err := r.Reseed(3); err == nil {
		t.Fatal("reseeding below the state's index was accepted")
	}
	const next = 1 << 40
	if err := r.Reseed(next); err != nil {
		t.Fatal(err)
	}
	if r.Index() != next {
		t.Fatalf("index %d after reseed; want %d", r.Index(), next)
	}
	// Everything but the coordinators and the watch marks is kept.
	want := decodeTables(t, s.Dump())
	want.Coordinators = map[string]*Coordinator{}
	want.Peers["p1"].WatchedBy = ""
	got := decodeTables(t, r.Dump())
	if a, b := mustJSON(t, got), mustJSON(t, want); a != b {
		t.Fatalf("reseeded tables:\n%s\nwant:\n%s", a, b)
	}
	if !got.Peers["p1"].Watcher || got.Peers["p1"].CredHash != hash('c') {
		t.Fatalf("peer lost its credential or watcher flag: %+v", got.Peers["p1"])
	}
	for _, tt := range []struct {
		name  string
		since uint64
		ok    bool
	}{
		{"a watcher of the old cluster", 4, false},
		{"one that went on past the backup", 1 << 39, false},
		{"a watcher of the new cluster", next, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, ok := r.ChangesSince(api.DefaultVNet, tt.since); ok != tt.ok {
				t.Fatalf("ChangesSince(%d) ok %v; want %v", tt.since, ok, tt.ok)
			}
		})
	}
}

func decodeTables(t *testing.T, b []byte) Tables {
	t.Helper()
	var tb Tables
	if err := json.Unmarshal(b, &tb); err != nil {
		t.Fatal(err)
	}
	return tb
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/backup"
)

// TestSaveSnapshotWholeOrNothing: a snapshot that does not arrive whole
// leaves neither the file nor a partial one behind; a whole one is
// written with mode 0600.
func TestSaveSnapshotWholeOrNothing(t *testing.T) {
	var file bytes.Buffer
	if err := backup.Write(&file, &backup.Header{Index: 7, TakenAt: time.Now()}, []byte(`{"index":7}`)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "b.snap")
	if _, err := saveSnapshot(path, bytes.NewReader(file.Bytes()[:file.Len()-2])); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("truncated stream: %v; want ErrCorrupt", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a failed save left %v", entries)
	}
	h, err := saveSnapshot(path, bytes.NewReader(file.Bytes()))
	if err != nil || h.Index != 7 {
		t.Fatalf("save: %+v, %v", h, err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, file.Bytes()) {
		t.Fatalf("saved file differs (%v)", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v; want 0600", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("dir holds %d files after a save; want 1", len(entries))
	}
}

// TestClusterCommands: the command names, and the former
// transfer-leadership kept as a hidden alias.
func TestClusterCommands(t *testing.T) {
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	for _, tt := range []struct {
		args   []string
		hidden bool
	}{
		{[]string{"cluster", "status"}, false},
		{[]string{"cluster", "add"}, false},
		{[]string{"cluster", "promote"}, false},
		{[]string{"cluster", "remove"}, false},
		{[]string{"cluster", "transfer-leader"}, false},
		{[]string{"cluster", "transfer-leadership"}, true},
		{[]string{"cluster", "snapshot", "save"}, false},
		{[]string{"cluster", "snapshot", "inspect"}, false},
		{[]string{"coordinator", "restore"}, false},
	} {
		cmd, rest, err := root.Find(tt.args)
		if err != nil || len(rest) != 0 || cmd.Name() != tt.args[len(tt.args)-1] || cmd.Hidden != tt.hidden {
			t.Errorf("%v: found %q (rest %v, hidden %v, %v); want it, hidden %v", tt.args, cmd.Name(), rest, cmd.Hidden, err, tt.hidden)
		}
	}
}

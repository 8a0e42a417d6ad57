package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/coordinator/clusterkey"
)

func TestLooseKeyFile(t *testing.T) {
	for _, tt := range []struct {
		mode fs.FileMode
		want string
	}{
		{0o600, ""},
		{0o400, ""},
		{0o700, ""},
		{0o640, "its group may access it (mode 0640)"},
		{0o620, "its group may access it (mode 0620)"},
		{0o644, "others may access it (mode 0644)"},
		{0o604, "others may access it (mode 0604)"},
		{0o666, "others may access it (mode 0666)"},
	} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			if got := looseKeyFile(tt.mode); got != tt.want {
				t.Fatalf("looseKeyFile(%04o) = %q; want %q", tt.mode, got, tt.want)
			}
		})
	}
}

// TestKeygenOut: keygen --out writes a loadable key with mode 0600 and
// never overwrites a file; a coordinator started with a key file others
// can read warns on stderr.
func TestKeygenOut(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	code, out, errOut := meshdErr(t, "coordinator", "keygen", "--out", path)
	if code != 0 || out != "" {
		t.Fatalf("keygen --out: exit %d, stdout %q, stderr %q; want the key in the file only", code, out, errOut)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", fi, err)
	}
	if _, err := clusterkey.Load(path); err != nil {
		t.Fatalf("the written key does not load: %v", err)
	}
	before, _ := os.ReadFile(path)
	code, _, errOut = meshdErr(t, "coordinator", "keygen", "--out", path)
	after, _ := os.ReadFile(path)
	if code != 1 || !strings.Contains(errOut, "exists already") || !bytes.Equal(before, after) {
		t.Fatalf("keygen over an existing file: exit %d, stderr %q, changed %v; want exit 1 and the file kept", code, errOut, !bytes.Equal(before, after))
	}

	// The warning comes before anything else is checked: an invalid
	// --gossip-key-grace then stops the coordinator before it starts.
	for _, tt := range []struct {
		mode fs.FileMode
		warn bool
	}{{0o644, true}, {0o640, true}, {0o600, false}} {
		if err := os.Chmod(path, tt.mode); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = meshdErr(t, "coordinator", "--cluster-key-file", path, "--data-dir", dir, "--gossip-key-grace", "1s")
		warned := strings.Contains(errOut, "warning: cluster key file "+path) && strings.Contains(errOut, "chmod 600 "+path)
		if code != 1 || warned != tt.warn {
			t.Fatalf("mode %04o: exit %d, stderr %q; want a warning: %v", tt.mode, code, errOut, tt.warn)
		}
	}
}

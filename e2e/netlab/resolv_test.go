package netlab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolvers(t *testing.T) {
	old := EtcNetns
	EtcNetns = t.TempDir()
	t.Cleanup(func() { EtcNetns = old })
	l := &Lab{Prefix: "rt-"}
	other := &Lab{Prefix: "rt2-"}

	if err := l.SetResolver("cl1", "100.96.0.5", "default.mesh"); err != nil {
		t.Fatal(err)
	}
	if err := other.SetResolver("cl1", "100.96.0.9"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(EtcNetns, "rt-cl1", "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 4 || lines[1] != "nameserver 100.96.0.5" || lines[2] != "search default.mesh" {
		t.Fatalf("resolv.conf:\n%s\nwant the marker, nameserver 100.96.0.5, search default.mesh, options", b)
	}
	// Writing again replaces the lab's own file.
	if err := l.SetResolver("cl1", "100.96.0.6"); err != nil {
		t.Fatalf("rewrite: %v", err)
	}

	// A resolv.conf someone else put there is neither replaced nor removed.
	foreign := filepath.Join(EtcNetns, "rt-host", "resolv.conf")
	if err := os.MkdirAll(filepath.Dir(foreign), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(foreign, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.SetResolver("host", "100.96.0.7"); err == nil {
		t.Fatal("SetResolver replaced a resolv.conf the lab did not write")
	}

	if err := l.removeResolvers(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(EtcNetns, "rt-cl1")); !os.IsNotExist(err) {
		t.Errorf("rt-cl1 after removal: %v; want it gone", err)
	}
	if b, err := os.ReadFile(foreign); err != nil || string(b) != "nameserver 192.0.2.53\n" {
		t.Errorf("the foreign resolv.conf after removal: %q, %v; want it untouched", b, err)
	}
	if _, err := os.Stat(filepath.Join(EtcNetns, "rt2-cl1", "resolv.conf")); err != nil {
		t.Errorf("another lab's resolv.conf after removal: %v; want it kept", err)
	}
}

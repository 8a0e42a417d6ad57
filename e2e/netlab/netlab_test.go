package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestTopologyUnderlay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	prefix := fmt.Sprintf("mt%d-", os.Getpid())
	l, err := New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if left, _ := Namespaces(prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	topo := MeshdLab()
	if err := topo.Build(l); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ from, to string }{
		{"cl1", "198.18.99.11"},
		{"hosta", "198.19.10.2"},
		{"gwa1", "198.18.99.31"},
		{"hostb", SiteBGW},
	} {
		if err := l.Ping(tt.from, tt.to, 5*time.Second); err != nil {
			t.Error(err)
		}
	}
	// No mesh yet: the sites cannot reach each other.
	if _, err := l.Exec("hosta", "ping", "-c1", "-W1", HostB); err == nil {
		t.Error("hosta reaches hostb without the mesh")
	}
}

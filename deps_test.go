package meshd_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPlanesStayApart keeps the control plane and the data plane apart:
// coordinator never imports peer, netlink or wireguard; peer never imports
// coordinator or raft; pkg imports neither side.
func TestPlanesStayApart(t *testing.T) {
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{"./coordinator/...", []string{"github.com/meshd/meshd/peer", "github.com/vishvananda/netlink", "golang.zx2c4.com/wireguard"}},
		{"./peer/...", []string{"github.com/meshd/meshd/coordinator", "github.com/hashicorp/raft"}},
		{"./pkg/...", []string{"github.com/meshd/meshd/coordinator", "github.com/meshd/meshd/peer", "github.com/meshd/meshd/meshd"}},
	}
	for _, r := range rules {
		out, err := exec.Command("go", "list", "-deps", r.pkg).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "matched no packages") || strings.Contains(string(out), "no such file or directory") {
				continue
			}
			t.Fatalf("go list %s: %v\n%s", r.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range r.forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s", r.pkg, dep)
				}
			}
		}
	}
}

package harness

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryAtMissingCommit: a commit the repository does not have is an
// error that names it, not a skip.
func TestBinaryAtMissingCommit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("needs git")
	}
	_, err := BinaryAt("0000000000000000000000000000000000000001")
	if err == nil || !strings.Contains(err.Error(), "0000000000000000000000000000000000000001") {
		t.Fatalf("got %v; want an error naming the commit", err)
	}
}

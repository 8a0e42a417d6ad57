package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	atMu    sync.Mutex
	atBuilt = map[string]string{} // guarded by atMu: commit -> binary
)

// BinaryAt builds the meshd binary of an earlier commit of this repository
// (static, like Binary) from git itself and returns its path. The binary
// is kept by commit hash in the user's cache dir (meshd-e2e/meshd-HASH), so
// later runs take it from there. A repository without that commit (a
// shallow clone) gives an error that says so.
func BinaryAt(commit string) (string, error) {
	atMu.Lock()
	defer atMu.Unlock()
	if p, ok := atBuilt[commit]; ok {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	full, err := resolveCommit(root, commit)
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("a cache dir for the meshd binary of %s: %w", commit, err)
	}
	dir := filepath.Join(cache, "meshd-e2e")
	bin := filepath.Join(dir, "meshd-"+full)
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o100 != 0 {
		atBuilt[commit] = bin
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	src, err := os.MkdirTemp("", "meshd-src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	// git archive writes the commit's tree, nothing of the working tree.
	archive := exec.Command("git", "-C", root, "archive", "--format=tar", full)
	untar := exec.Command("tar", "-x", "-C", src)
	if untar.Stdin, err = archive.StdoutPipe(); err != nil {
		return "", err
	}
	var archErr, untarErr strings.Builder
	archive.Stderr, untar.Stderr = &archErr, &untarErr
	if err := untar.Start(); err != nil {
		return "", fmt.Errorf("tar: %w", err)
	}
	if err := archive.Run(); err != nil {
		untar.Wait()
		return "", fmt.Errorf("git archive %s: %w: %s", full, err, archErr.String())
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("unpack %s: %w: %s", full, err, untarErr.String())
	}
	tmp := bin + fmt.Sprintf(".%d.tmp", os.Getpid())
	build := exec.Command("go", "build", "-o", tmp, "./meshd")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("build meshd at %s: %w\n%s", commit, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		os.Remove(tmp)
		return "", err
	}
	atBuilt[commit] = bin
	return bin, nil
}

// resolveCommit returns the full hash of commit, or an error that says why
// the repository does not have it.
func resolveCommit(root, commit string) (string, error) {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "--quiet", commit+"^{commit}").Output()
	if err == nil {
		return strings.TrimSpace(string(out)), nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return "", fmt.Errorf("git rev-parse %s: %w (is git installed?)", commit, err)
	}
	if s, _ := exec.Command("git", "-C", root, "rev-parse", "--is-shallow-repository").Output(); strings.TrimSpace(string(s)) == "true" {
		return "", fmt.Errorf("commit %s is not in this repository: it is a shallow clone; fetch the history (git fetch --unshallow) to build that version", commit)
	}
	return "", fmt.Errorf("commit %s is not in this repository's history", commit)
}

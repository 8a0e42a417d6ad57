// Package harness starts and stops real meshd processes for multi-process
// tests, network-namespace tests and the benchmarks: it builds the binary
// once, keeps a pid file per process, and stops only the processes it
// started.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// RepoRoot finds the module root from the working directory.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the meshd module")
	}
	return filepath.Dir(mod), nil
}

// Binary builds bin/meshd-e2e once per process (static, like a release) and
// returns its path.
func Binary() (string, error) {
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(root, "bin", "meshd-e2e")
		cmd := exec.Command("go", "build", "-o", buildPath, "./meshd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build meshd: %w\n%s", err, out)
		}
	})
	return buildPath, buildErr
}

// FreePorts returns n TCP ports free on 127.0.0.1 right now.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// Proc is one process the harness started.
type Proc struct {
	Name    string
	Args    []string
	Dir     string // working dir: logs and the pid file live here
	Wrap    []string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logFile *os.File
}

// Start runs bin with args (prefixed by wrap, e.g. ip netns exec NS), its
// output going to DIR/NAME.log and its pid to DIR/NAME.pid. The process dies
// with the caller.
func Start(dir, name string, wrap []string, bin string, args ...string) (*Proc, error) {
	return start(dir, name, wrap, false, bin, args...)
}

// StartDetached is Start for a process that outlives the caller (the lab):
// it gets its own session. StopPidFile stops it later.
func StartDetached(dir, name string, wrap []string, bin string, args ...string) (*Proc, error) {
	return start(dir, name, wrap, true, bin, args...)
}

func start(dir, name string, wrap []string, detached bool, bin string, args ...string) (*Proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	argv := append(append(append([]string{}, wrap...), bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := startCmd(cmd); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Args: args, Dir: dir, Wrap: wrap, cmd: cmd, done: make(chan struct{}), logFile: lf}
	os.WriteFile(p.PidFile(), []byte(fmt.Sprintf("%d\n", cmd.Process.Pid)), 0o644)
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		os.Remove(p.PidFile())
		close(p.done)
	}()
	return p, nil
}

// StopPidFile stops the process named in a pid file a detached Start wrote:
// SIGTERM, then SIGKILL after d; it removes the file. A missing file or a
// process already gone is not an error.
func StopPidFile(path string, d time.Duration) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var pid int
	if _, err := fmt.Sscanf(string(b), "%d", &pid); err != nil || pid <= 1 {
		return fmt.Errorf("pid file %s: %q is not a pid", path, b)
	}
	defer os.Remove(path)
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return nil // already gone
	}
	deadline := time.Now().Add(d)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
	return nil
}

var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

// startCmd starts cmd from one OS thread that never exits. The kernel sends
// a child its parent-death signal when the *thread* that forked it exits,
// and Go discards threads (a goroutine that locked its thread into another
// network namespace, say), which would kill children at random.
func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // kept for the life of the process
			for r := range spawnCh {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnCh <- spawnReq{cmd, errc}
	return <-errc
}

// PidFile is where the process's pid is kept while it runs.
func (p *Proc) PidFile() string { return filepath.Join(p.Dir, p.Name+".pid") }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error once Done is closed.
func (p *Proc) Err() error { <-p.done; return p.err }

// Log returns what the process has printed so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, p.Name+".log"))
	return string(b)
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	if !p.Exited() {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// Stop sends SIGTERM and waits up to d, then SIGKILL.
func (p *Proc) Stop(d time.Duration) {
	if p.Exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		p.Kill()
	}
}

// Cluster is a set of coordinator processes on loopback.
type Cluster struct {
	Bin   string
	Dir   string
	Key   string // path of the cluster key file
	Nodes []*Node
}

// Node is one coordinator of a Cluster.
type Node struct {
	Name     string
	DataDir  string
	APIAddr  string
	RaftAddr string
	Extra    []string // more flags
	// Join, when set, starts the node with --join Join instead of
	// --initial-cluster: with an empty data dir it waits to be added.
	Join string
	// Wrap is the command prefix the node runs under (ip netns exec NS);
	// nil: the caller's namespace.
	Wrap []string
	Proc *Proc
}

// URL is the node's API URL.
func (n *Node) URL() string { return "https://" + n.APIAddr }

// NewCluster prepares (does not start) size coordinators under dir.
func NewCluster(dir string, size int) (*Cluster, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Bin: bin, Dir: dir, Key: filepath.Join(dir, "cluster.key")}
	out, err := exec.Command(bin, "coordinator", "keygen").Output()
	if err != nil {
		return nil, fmt.Errorf("keygen: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.Key, out, 0o600); err != nil {
		return nil, err
	}
	ports, err := FreePorts(2 * size)
	if err != nil {
		return nil, err
	}
	for i := range size {
		name := fmt.Sprintf("c%d", i+1)
		c.Nodes = append(c.Nodes, &Node{
			Name: name, DataDir: filepath.Join(dir, name),
			APIAddr:  fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			RaftAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
		})
	}
	return c, nil
}

// StartAll starts every node that is not running.
func (c *Cluster) StartAll() error {
	for _, n := range c.Nodes {
		if n.Proc == nil || n.Proc.Exited() {
			if err := c.Start(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start starts (or restarts, with the same data dir) node n.
func (c *Cluster) Start(n *Node) error {
	var initial []string
	if len(c.Nodes) > 1 {
		for _, m := range c.Nodes {
			initial = append(initial, m.Name+"="+m.RaftAddr)
		}
	}
	args := []string{"coordinator", "--name", n.Name, "--data-dir", n.DataDir,
		"--listen", n.APIAddr, "--raft-listen", n.RaftAddr, "--cluster-key-file", c.Key,
		"--stun-listen", "127.0.0.1:0", "--log-level", "info"}
	switch {
	case n.Join != "":
		args = append(args, "--join", n.Join)
	case len(initial) > 0:
		args = append(args, "--initial-cluster", strings.Join(initial, ","))
	}
	args = append(args, n.Extra...)
	p, err := Start(c.Dir, n.Name, n.Wrap, c.Bin, args...)
	if err != nil {
		return err
	}
	n.Proc = p
	return nil
}

// Close kills every node the cluster started.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		if n.Proc != nil {
			n.Proc.Kill()
		}
	}
}

// URLs are the API URLs of all nodes.
func (c *Cluster) URLs() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.URL())
	}
	return out
}

// AdminToken reads the admin token from the first node whose data dir has
// one.
func (c *Cluster) AdminToken() (string, error) {
	for _, n := range c.Nodes {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "admin.token"))
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			return strings.TrimSpace(string(b)), nil
		}
	}
	return "", errors.New("no admin.token written yet")
}

// Admin returns an admin client that knows urls (all nodes when empty).
func (c *Cluster) Admin(urls ...string) (*apiclient.Client, error) {
	tokStr, err := c.AdminToken()
	if err != nil {
		return nil, err
	}
	tok, err := token.ParseKind(tokStr, token.KindAdmin)
	if err != nil {
		return nil, err
	}
	if len(urls) == 0 {
		urls = c.URLs()
	}
	return apiclient.New(urls, tok.Pin, tokStr), nil
}

// WaitLeader polls until the running nodes agree on a leader that is
// running, and returns it.
func (c *Cluster) WaitLeader(ctx context.Context, d time.Duration) (*Node, error) {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		if n, err := c.leader(ctx); err == nil {
			return n, nil
		} else {
			last = err
		}
		for _, n := range c.Nodes {
			if n.Proc != nil && n.Proc.Exited() && n.Proc.Err() != nil && !killed(n.Proc.Err()) {
				return nil, fmt.Errorf("%s exited: %v\n%s", n.Name, n.Proc.Err(), n.Proc.Log())
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling interval
		}
	}
	return nil, fmt.Errorf("no leader within %s: %v", d, last)
}

func killed(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return true
		}
	}
	return false
}

func (c *Cluster) leader(ctx context.Context) (*Node, error) {
	var leader string
	for _, n := range c.Nodes {
		if n.Proc == nil || n.Proc.Exited() {
			continue
		}
		cl, err := c.Admin(n.URL())
		if err != nil {
			return nil, err
		}
		var st api.ClusterStatus
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err = cl.Do(actx, http.MethodGet, "/v1/cluster/status", nil, &st)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
		if st.Leader == "" || leader != "" && st.Leader != leader {
			return nil, fmt.Errorf("%s sees leader %q", n.Name, st.Leader)
		}
		leader = st.Leader
	}
	for _, n := range c.Nodes {
		if n.Name == leader && n.Proc != nil && !n.Proc.Exited() {
			return n, nil
		}
	}
	return nil, fmt.Errorf("leader %q is not running", leader)
}

// WaitReady polls until every running node answers /v1/health (a node that
// is still replaying its log answers 503).
func (c *Cluster) WaitReady(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var last error
		for _, n := range c.Nodes {
			if n.Proc == nil || n.Proc.Exited() {
				continue
			}
			cl, err := c.Admin(n.URL())
			if err != nil {
				last = err
				break
			}
			actx, cancel := context.WithTimeout(ctx, time.Second)
			err = cl.Do(actx, http.MethodGet, "/v1/health", nil, nil)
			cancel()
			if err != nil {
				last = fmt.Errorf("%s: %w", n.Name, err)
				break
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not ready within %s: %v", d, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling interval
		}
	}
}

// Run runs a command and returns its standard output; the error carries its
// standard error.
func Run(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

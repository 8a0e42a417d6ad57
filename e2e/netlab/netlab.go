// Package netlab builds network-namespace topologies on one machine with
// iproute2, for the local lab and the end-to-end tests. Every namespace it
// creates starts with the lab's prefix, nothing is connected to the host's
// own namespace (no route leaves the machine), and Close removes it all
// (the namespaces and the resolv.conf files written for them), including
// what an earlier crashed run with the same prefix left behind.
package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// Lab is a set of namespaces whose names start with Prefix.
type Lab struct {
	Prefix string

	mu  sync.Mutex
	nss []string // guarded by mu: namespaces created, in order
}

// New returns a lab whose namespaces are named prefix+NAME. It removes any
// namespace left with that prefix.
func New(prefix string) (*Lab, error) {
	l := &Lab{Prefix: prefix}
	if err := l.removeStale(); err != nil {
		return nil, err
	}
	return l, nil
}

func run(args ...string) ([]byte, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Namespaces lists the namespaces on the machine whose names start with
// prefix.
func Namespaces(prefix string) ([]string, error) {
	out, err := run("ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var nss []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			nss = append(nss, f[0])
		}
	}
	return nss, nil
}

func (l *Lab) removeStale() error {
	nss, err := Namespaces(l.Prefix)
	if err != nil {
		return err
	}
	errs := []error{l.removeResolvers()}
	for _, ns := range nss {
		if _, err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NS is the full name of namespace name.
func (l *Lab) NS(name string) string { return l.Prefix + name }

// AddNS creates namespace name with its loopback up.
func (l *Lab) AddNS(name string) error {
	ns := l.NS(name)
	if _, err := run("ip", "netns", "add", ns); err != nil {
		return err
	}
	l.mu.Lock()
	l.nss = append(l.nss, ns)
	l.mu.Unlock()
	_, err := run("ip", "-n", ns, "link", "set", "lo", "up")
	return err
}

// AddBridge creates bridge br, up, inside namespace name.
func (l *Lab) AddBridge(name, br string) error {
	ns := l.NS(name)
	if _, err := run("ip", "-n", ns, "link", "add", br, "type", "bridge"); err != nil {
		return err
	}
	_, err := run("ip", "-n", ns, "link", "set", br, "up")
	return err
}

// Connect adds a veth: ifname with addr (CIDR, may be empty) in namespace
// name, its other end attached to bridge br in namespace brName.
func (l *Lab) Connect(name, ifname, addr, brName, br string) error {
	ns, brNS := l.NS(name), l.NS(brName)
	peer := fmt.Sprintf("v%s%s", strings.TrimPrefix(name, ""), ifname)
	if len(peer) > 15 {
		peer = peer[:15]
	}
	steps := [][]string{
		{"ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer, "netns", brNS},
		{"ip", "-n", brNS, "link", "set", peer, "master", br},
		{"ip", "-n", brNS, "link", "set", peer, "up"},
		{"ip", "-n", ns, "link", "set", ifname, "up"},
	}
	if addr != "" {
		steps = append(steps, []string{"ip", "-n", ns, "addr", "add", addr, "dev", ifname})
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// Exec runs a command in namespace name and returns its output.
func (l *Lab) Exec(name string, args ...string) ([]byte, error) {
	return run(append([]string{"ip", "netns", "exec", l.NS(name)}, args...)...)
}

// ExecStdin runs a command in namespace name with stdin as its input and
// returns its output.
func (l *Lab) ExecStdin(name, stdin string, args ...string) ([]byte, error) {
	return runStdin(stdin, append(l.Wrap(name), args...)...)
}

// Wrap is the command prefix that runs a program in namespace name.
func (l *Lab) Wrap(name string) []string {
	return []string{"ip", "netns", "exec", l.NS(name)}
}

// Ping polls until dst answers one ping from namespace name, or d passes.
func (l *Lab) Ping(name, dst string, d time.Duration) error {
	if _, err := exec.LookPath("ping"); err != nil {
		return errors.New("ping is not installed (iputils-ping; scripts/deps.sh installs it)")
	}
	deadline := time.Now().Add(d)
	for {
		_, err := l.Exec(name, "ping", "-c1", "-W1", "-n", dst)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s cannot ping %s within %s: %w", name, dst, d, err)
		}
	}
}

// Close deletes every namespace of the lab (with their links and bridges).
func (l *Lab) Close() error {
	l.mu.Lock()
	nss := slices.Clone(l.nss)
	l.nss = nil
	l.mu.Unlock()
	var errs []error
	for _, ns := range nss {
		if _, err := run("ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if err := l.removeStale(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Link connects namespaces a and b with a veth pair: ifA (addrA, CIDR) in
// a and ifB (addrB) in b, both up.
func (l *Lab) Link(a, ifA, addrA, b, ifB, addrB string) error {
	steps := [][]string{
		{"ip", "link", "add", ifA, "netns", l.NS(a), "type", "veth", "peer", "name", ifB, "netns", l.NS(b)},
		{"ip", "-n", l.NS(a), "addr", "add", addrA, "dev", ifA},
		{"ip", "-n", l.NS(b), "addr", "add", addrB, "dev", ifB},
		{"ip", "-n", l.NS(a), "link", "set", ifA, "up"},
		{"ip", "-n", l.NS(b), "link", "set", ifB, "up"},
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

package meshdns

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// HostResolver points the host's resolver at the server for the mesh's
// domains only, on the mesh interface. Its methods may block for a few
// seconds (they talk to another daemon).
type HostResolver interface {
	// Set sends queries for domains (and names under them) to server,
	// through iface, replacing what an earlier Set made.
	Set(iface string, server netip.Addr, domains []string) error
	// Revert undoes Set on iface.
	Revert(iface string) error
}

// Resolved configures systemd-resolved per link, as `resolvectl dns` and
// `resolvectl domain` do: the link's DNS server is the mesh's, and its
// domains are routing-only (~mesh), so only the mesh's names go to it and
// the link is never the default route for other names.
type Resolved struct {
	// Run runs a command and returns its combined output; nil runs it
	// (tests record it instead).
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
}

var _ HostResolver = (*Resolved)(nil)

// resolvedTimeout bounds each resolvectl call.
const resolvedTimeout = 5 * time.Second

func (r *Resolved) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), resolvedTimeout)
	defer cancel()
	run := r.Run
	if run == nil {
		run = func(ctx context.Context, name string, args ...string) ([]byte, error) {
			return exec.CommandContext(ctx, name, args...).CombinedOutput()
		}
	}
	out, err := run(ctx, "resolvectl", args...)
	if err != nil {
		return fmt.Errorf("resolvectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Set implements HostResolver.
func (r *Resolved) Set(iface string, server netip.Addr, domains []string) error {
	routing := []string{"domain", iface}
	for _, d := range domains {
		routing = append(routing, "~"+d)
	}
	if err := r.run("dns", iface, server.String()); err != nil {
		return err
	}
	if err := r.run(routing...); err != nil {
		return err
	}
	// Routing-only domains already keep other names away from the link;
	// saying so explicitly fails on systemd before 240, which is fine.
	r.run("default-route", iface, "false")
	return nil
}

// Revert implements HostResolver.
func (r *Resolved) Revert(iface string) error { return r.run("revert", iface) }

// ResolverFacts are what deciding how to reach the host's resolver looks at.
type ResolverFacts struct {
	// HostNetNS: this process is in the network namespace of PID 1. An
	// agent in another namespace (a lab, a container without its own
	// init) must not configure the host's resolver: the interface index it
	// would hand over names another link there.
	HostNetNS bool
	// ResolvedRunning: /run/systemd/resolve exists.
	ResolvedRunning bool
	// Resolvectl: resolvectl is installed.
	Resolvectl bool
}

// ChooseResolver decides whether systemd-resolved can be configured;
// when not, why says so in a sentence.
func ChooseResolver(f ResolverFacts) (useResolved bool, why string) {
	switch {
	case !f.HostNetNS:
		return false, "the agent runs in a network namespace of its own, so the host's resolver is left alone"
	case !f.ResolvedRunning:
		return false, "systemd-resolved is not running"
	case !f.Resolvectl:
		return false, "systemd-resolved runs but resolvectl is not installed"
	}
	return true, ""
}

// Facts looks at this host.
func Facts() ResolverFacts {
	f := ResolverFacts{HostNetNS: true}
	if self, err := os.Stat("/proc/self/ns/net"); err == nil {
		// PID 1 may be hidden (systemd's ProtectProc=invisible, a
		// container's ptrace rules); a namespace `ip netns add` made is
		// also recognised by its name in /run/netns.
		if pid1, err := os.Stat("/proc/1/ns/net"); err == nil && !os.SameFile(self, pid1) {
			f.HostNetNS = false
		}
		named, _ := filepath.Glob("/run/netns/*")
		for _, n := range named {
			if st, err := os.Stat(n); err == nil && os.SameFile(self, st) {
				f.HostNetNS = false
			}
		}
	}
	if st, err := os.Stat("/run/systemd/resolve"); err == nil && st.IsDir() {
		f.ResolvedRunning = true
	}
	if _, err := exec.LookPath("resolvectl"); err == nil {
		f.Resolvectl = true
	}
	return f
}

// ManualHint tells an operator how to send the mesh's names to server
// when the agent cannot configure the host's resolver itself.
func ManualHint(iface string, server netip.Addr, suffix string) string {
	return fmt.Sprintf("dnsmasq: server=/%s/%s; systemd-resolved: resolvectl dns %s %s && resolvectl domain %s '~%s'; or, for a host that asks only the mesh, nameserver %s in /etc/resolv.conf",
		suffix, server, iface, server, iface, suffix, server)
}

// Package meshlab brings up meshd labs on one machine, every host in its
// own network namespace: the flat lab (the netlab topology, three
// coordinators and the peer agents of two sites and two roaming clients,
// optionally two more clients behind NATs), the NAT lab (netlab's NAT
// matrix with its three coordinators) and the IPv6 firewall lab
// (netlab's IPv6 hosts behind stateful firewalls, with three coordinators
// on IPv6). `make lab`, the end-to-end tests and the bench all use it.
package meshlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/netlab"
)

// Options configure Start.
type Options struct {
	Prefix   string // namespace prefix, e.g. "mlab-"
	Dir      string // state, logs and pid files
	Bin      string // the meshd binary
	Detached bool   // processes outlive the caller (the interactive lab)
	// SNAT makes the site gateways masquerade (--snat).
	SNAT bool
	// Peers limits which peers start (default all).
	Peers []string
	// Extra arguments per peer name.
	PeerArgs map[string][]string
	// IfPrefix starts every WireGuard interface name (default "wg-"). The
	// UAPI socket directory is shared by all namespaces, so labs that run
	// at the same time need different prefixes.
	IfPrefix string
	// NATClients adds the clients of NATClients to the flat lab, each
	// behind its own NAT router on the lab's wan (Start only).
	NATClients bool
	// CoordinatorArgs are more flags for every coordinator.
	CoordinatorArgs []string
	// AttachHost links the host's own namespace to the lab's wan
	// (netlab.AttachHost, at HostAddr), so the admin CLI and a browser on
	// the host reach the coordinators; the host is sealed first
	// (netlab.SealHost).
	AttachHost bool
	// Resolvers points each agent's namespace at its agent's name server
	// once the peers are up (SetResolvers); Close removes the files.
	Resolvers bool
	// DualStack builds the dual-stack topology (netlab.MeshdLabDualStack:
	// cl2 on an IPv6-only underlay), runs the coordinators on IPv6 (API,
	// Raft and STUN on the wan's IPv6 addresses) and puts every peer in
	// the dual-stack vnet DualStackVNet; gateways announce their site's
	// IPv6 prefix beside the IPv4 one, and site A's pair owns an IPv6
	// virtual IP beside the IPv4 one (Start only).
	DualStack bool
}

// The dual-stack lab's vnet (Options.DualStack).
const (
	DualStackVNet = "ds"
	Overlay4      = "100.70.0.0/16"
	Overlay6      = "fd7a:115c:a1e0::/48"
)

// Lab is a running mesh lab.
type Lab struct {
	Opts Options
	Net  *netlab.Lab
	// Topo is the flat lab's topology; nil in a NAT lab.
	Topo *netlab.Topology
	// NAT holds the hosts behind NAT routers: the NAT lab's whole
	// topology, or the flat lab's NAT clients; nil when there are none.
	NAT *netlab.NATTopology
	// Firewall6 is the IPv6 firewall lab's topology (StartFirewall6); nil
	// in other labs.
	Firewall6 *netlab.Firewall6Topology
	// VNet is the vnet Token's tokens join; empty for the default vnet.
	VNet string
	// Coordinators are c1..c3 (WAN is each one's address).
	Coordinators []netlab.Node
	Procs        map[string]*harness.Proc
	// Started is when each peer's agent was last started.
	Started map[string]time.Time
	Key     string
}

// PeerSpec is how the lab runs one peer.
type PeerSpec struct {
	Name     string
	Routes   string // --advertise-routes
	Priority int
}

// ClientTag is the tag of the lab's clients' join token.
const ClientTag = "branch"

// Peers of the lab, in start order.
var Peers = []PeerSpec{
	{Name: "gwa1", Routes: netlab.SiteA, Priority: 200},
	{Name: "gwa2", Routes: netlab.SiteA, Priority: 100},
	{Name: "gwb1", Routes: netlab.SiteB, Priority: 100},
	{Name: "cl1"},
	{Name: "cl2"},
}

// NATClients are the flat lab's clients behind NATs (Options.NATClients):
// cl3 behind a symmetric NAT, reached from cl4 only through a relay, and
// cl4 behind a port-preserving NAT, reached directly by everyone else.
var NATClients = []netlab.NATHostSpec{
	{Name: "cl3", Kind: netlab.Symmetric},
	{Name: "cl4", Kind: netlab.PortPreserving},
}

// natClientWAN is the flat lab's wan address of NAT router n (from 1).
func natClientWAN(n int) string { return fmt.Sprintf("198.18.99.%d", 100+n) }

// Start builds the topology and starts coordinators and peers, waiting
// until every peer is up. On error it tears down what it started.
func Start(ctx context.Context, o Options) (_ *Lab, err error) {
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	if o.IfPrefix == "" {
		o.IfPrefix = "wg-"
	}
	nl, err := netlab.New(o.Prefix)
	if err != nil {
		return nil, err
	}
	topo := netlab.MeshdLab()
	if o.DualStack {
		topo = netlab.MeshdLabDualStack()
	}
	l := newLab(o, nl, topo.Coordinators)
	l.Topo = topo
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if err := l.Topo.Build(nl); err != nil {
		return nil, err
	}
	if o.AttachHost {
		if err := nl.AttachHost(HostAddr+"/24", "wan", "br0"); err != nil {
			return nil, err
		}
	}
	clients := 2
	if o.NATClients {
		if l.NAT, err = netlab.AddNATHosts(nl, "wan", "br0", natClientWAN, NATClients); err != nil {
			return nil, err
		}
		clients += len(NATClients)
	}
	if err := l.startCoordinators(ctx); err != nil {
		return nil, err
	}
	allow, vnet := netlab.SiteA+","+netlab.SiteB, []string{}
	if o.DualStack {
		if err := l.createDualStackVNet(ctx, 30*time.Second); err != nil {
			return nil, err
		}
		allow += "," + netlab.SiteA6 + "," + netlab.SiteB6
		vnet = []string{"--vnet", DualStackVNet}
	}
	gwTok, err := l.Admin(append([]string{"token", "create", "--uses", "3", "--allow-routes", allow}, vnet...)...)
	if err != nil {
		return nil, err
	}
	// Clients carry the tag "branch" (policies name it).
	clTok, err := l.Admin(append([]string{"token", "create", "--uses", fmt.Sprint(clients), "--tag", ClientTag}, vnet...)...)
	if err != nil {
		return nil, err
	}
	for _, p := range Peers {
		if o.Peers != nil && !contains(o.Peers, p.Name) {
			continue
		}
		tok := strings.TrimSpace(clTok)
		if p.Routes != "" {
			tok = strings.TrimSpace(gwTok)
		}
		if err := l.StartPeer(p.Name, tok); err != nil {
			return nil, err
		}
	}
	if o.NATClients {
		for _, c := range NATClients {
			if err := l.StartPeer(c.Name, strings.TrimSpace(clTok)); err != nil {
				return nil, err
			}
		}
	}
	for name := range l.Procs {
		if l.isCoordinator(name) {
			continue
		}
		if err := l.WaitPeerUp(ctx, name, 30*time.Second); err != nil {
			return nil, err
		}
	}
	if o.Resolvers {
		if err := l.SetResolvers(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// createDualStackVNet creates DualStackVNet. An IPv6 overlay needs every
// coordinator at feature level 4, which a coordinator records when it
// registers, shortly after the cluster answers: until every one has, the
// cluster refuses with upgrade_required, and it is asked again.
func (l *Lab) createDualStackVNet(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := l.Admin("vnet", "create", DualStackVNet, "--overlay", Overlay4, "--overlay", Overlay6)
		if err == nil || !strings.Contains(err.Error(), "upgrade_required") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // polling interval
		}
	}
}

// HostAddr is the host's address on the flat lab's wan (Options.AttachHost).
const HostAddr = "198.18.99.1"

// newLab is a Lab with nothing started yet.
func newLab(o Options, nl *netlab.Lab, coords []netlab.Node) *Lab {
	return &Lab{Opts: o, Net: nl, Coordinators: coords, Procs: map[string]*harness.Proc{},
		Started: map[string]time.Time{}, Key: filepath.Join(o.Dir, "cluster.key")}
}

// startCoordinators writes the cluster key, starts c1..c3 and waits until
// the cluster answers.
func (l *Lab) startCoordinators(ctx context.Context) error {
	key, err := harness.Run(l.Opts.Bin, "coordinator", "keygen")
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.Key, key, 0o600); err != nil {
		return err
	}
	for _, c := range l.Coordinators {
		if err := l.StartCoordinator(c.Name); err != nil {
			return err
		}
	}
	return l.WaitCluster(ctx, 30*time.Second)
}

// isCoordinator reports whether name is one of the lab's coordinators.
func (l *Lab) isCoordinator(name string) bool {
	for _, c := range l.Coordinators {
		if c.Name == name {
			return true
		}
	}
	return false
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (l *Lab) start(name string, args ...string) error {
	start := harness.Start
	if l.Opts.Detached {
		start = harness.StartDetached
	}
	p, err := start(l.Opts.Dir, name, l.Net.Wrap(name), l.Opts.Bin, args...)
	if err != nil {
		return err
	}
	l.Procs[name] = p
	return nil
}

// CoordinatorURLs are the coordinators' API URLs.
func (l *Lab) CoordinatorURLs() []string {
	var out []string
	for _, c := range l.Coordinators {
		out = append(out, "https://"+net.JoinHostPort(coordinatorAddr(c), "8443"))
	}
	return out
}

// coordinatorAddr is the address a coordinator serves on: its IPv6 wan
// address in a dual-stack lab, else its IPv4 one.
func coordinatorAddr(c netlab.Node) string {
	if c.WAN6 != "" {
		return c.WAN6
	}
	return c.WAN
}

// StartCoordinator starts (or restarts with the same data dir) a
// coordinator.
func (l *Lab) StartCoordinator(name string) error {
	var initial []string
	var n netlab.Node
	for _, c := range l.Coordinators {
		initial = append(initial, c.Name+"="+net.JoinHostPort(coordinatorAddr(c), "8301"))
		if c.Name == name {
			n = c
		}
	}
	if n.Name == "" {
		return fmt.Errorf("no coordinator %q in the lab", name)
	}
	addr := coordinatorAddr(n)
	listen, stun := net.JoinHostPort(addr, "8443"), net.JoinHostPort(addr, "3478")
	var advertise []string
	if n.WAN6 != "" {
		// The API and STUN on every address of both families; peers
		// are told the IPv6 URL.
		listen, stun = "[::]:8443", "[::]:3478"
		advertise = []string{"--advertise-api", "https://" + net.JoinHostPort(addr, "8443")}
	}
	args := []string{"coordinator", "--name", name, "--data-dir", filepath.Join(l.Opts.Dir, name),
		"--listen", listen, "--raft-listen", net.JoinHostPort(addr, "8301"), "--cluster-key-file", l.Key,
		"--initial-cluster", strings.Join(initial, ","), "--stun-listen", stun}
	args = append(args, advertise...)
	return l.start(name, append(args, l.Opts.CoordinatorArgs...)...)
}

// Interface is the WireGuard interface name of a lab peer (the UAPI socket
// directory is shared by all namespaces, so names must differ).
func (l *Lab) Interface(peer string) string { return l.Opts.IfPrefix + peer }

// StateDir is a lab peer's state dir.
func (l *Lab) StateDir(peer string) string { return filepath.Join(l.Opts.Dir, peer) }

// StartPeer starts (or restarts) a peer agent; tok may be empty after the
// first join.
func (l *Lab) StartPeer(name, tok string) error {
	args := []string{"peer", "up", "--state-dir", l.StateDir(name), "--name", name, "--interface", l.Interface(name), "--log-level", "debug"}
	if tok != "" {
		args = append(args, "--token", tok)
	}
	for _, p := range Peers {
		if p.Name == name && p.Routes != "" {
			routes, vip := p.Routes, netlab.SiteAVIP+"/24"
			if l.Opts.DualStack {
				routes += "," + map[string]string{netlab.SiteA: netlab.SiteA6, netlab.SiteB: netlab.SiteB6}[p.Routes]
				vip += "," + netlab.SiteAVIP6 + "/64"
			}
			args = append(args, "--advertise-routes", routes, "--gateway-priority", fmt.Sprint(p.Priority))
			if p.Routes == netlab.SiteA {
				args = append(args, "--lan-vip", vip, "--lan-dev", "eth1")
			}
			if l.Opts.SNAT {
				args = append(args, "--snat")
			}
		}
	}
	args = append(args, l.Opts.PeerArgs[name]...)
	l.Started[name] = time.Now()
	return l.start(name, args...)
}

// StartPeerIn starts one more agent, name, in the namespace of lab host
// ns beside the one already there (its own interface, state dir and
// WireGuard port), joining with tok; extra are more flags. Its logs and
// process are under name.
func (l *Lab) StartPeerIn(ns, name, tok string, extra ...string) error {
	args := []string{"peer", "up", "--state-dir", l.StateDir(name), "--name", name, "--interface", l.Interface(name),
		"--log-level", "debug", "--token", tok}
	start := harness.Start
	if l.Opts.Detached {
		start = harness.StartDetached
	}
	l.Started[name] = time.Now()
	p, err := start(l.Opts.Dir, name, l.Net.Wrap(ns), l.Opts.Bin, append(args, extra...)...)
	if err != nil {
		return err
	}
	l.Procs[name] = p
	return nil
}

// Admin runs an admin command inside the first running coordinator's
// namespace, with the admin token, and returns its output.
func (l *Lab) Admin(args ...string) (string, error) {
	tok, err := l.AdminToken()
	if err != nil {
		return "", err
	}
	var last error
	for _, c := range l.Coordinators {
		if p := l.Procs[c.Name]; p == nil || p.Exited() {
			continue
		}
		cmd := append([]string{"env", "MESHD_ADMIN_TOKEN=" + tok, l.Opts.Bin}, args...)
		out, err := l.Net.Exec(c.Name, cmd...)
		if err == nil {
			return string(out), nil
		}
		last = err
	}
	return "", fmt.Errorf("meshd %s: %w", strings.Join(args, " "), last)
}

// AdminToken reads the admin token a coordinator wrote.
func (l *Lab) AdminToken() (string, error) {
	for _, c := range l.Coordinators {
		b, err := os.ReadFile(filepath.Join(l.Opts.Dir, c.Name, "admin.token"))
		if err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return strings.TrimSpace(string(b)), nil
		}
	}
	return "", errors.New("no coordinator has written admin.token yet")
}

// WaitCluster polls until the admin CLI works against the cluster.
func (l *Lab) WaitCluster(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := l.Admin("cluster", "status")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinators not up within %s: %w\n%s", d, err, l.Logs("c1"))
		}
		for _, c := range l.Coordinators {
			if p := l.Procs[c.Name]; p != nil && p.Exited() {
				return fmt.Errorf("coordinator %s exited: %v\n%s", c.Name, p.Err(), p.Log())
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling interval
		}
	}
}

// WaitPeerUp polls until the peer's status socket answers.
func (l *Lab) WaitPeerUp(ctx context.Context, name string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := l.Net.Exec(name, l.Opts.Bin, "status", "--state-dir", l.StateDir(name)); err == nil {
			return nil
		}
		if p := l.Procs[name]; p != nil && p.Exited() {
			return fmt.Errorf("peer %s exited: %v\n%s", name, p.Err(), p.Log())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("peer %s not up within %s\n%s", name, d, l.Logs(name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling interval
		}
	}
}

// Logs returns what a process has logged.
func (l *Lab) Logs(name string) string {
	b, _ := os.ReadFile(filepath.Join(l.Opts.Dir, name+".log"))
	return string(b)
}

// Close stops every process the lab started and removes its namespaces.
func (l *Lab) Close() error {
	for _, p := range l.Procs {
		p.Stop(5 * time.Second)
	}
	return l.Net.Close()
}

// Down stops a detached lab from its state dir and removes its namespaces.
func Down(prefix, dir string) error {
	pids, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	var errs []error
	for _, f := range pids {
		if err := harness.StopPidFile(f, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	nl, err := netlab.New(prefix) // removes every namespace with the prefix
	if err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, nl.Close())
	}
	return errors.Join(errs...)
}

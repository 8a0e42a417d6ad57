// Command lab brings the meshd lab up or down (`make lab`, `make lab-down`):
// three coordinators, two sites and four clients in network namespaces on
// this machine, two of the clients behind NAT routers (one symmetric, one
// port-preserving). It needs root, iproute2 and nftables.
//
//	go run ./e2e/lab up BIN    start the lab with the meshd binary BIN
//	go run ./e2e/lab down      stop it and remove its namespaces (and the
//	                           resolv.conf files written for them)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
)

const prefix = "mlab-"

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	root, err := harness.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	dir := filepath.Join(root, ".lab")
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: lab up BIN | lab down")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "lab: network namespaces need root (sudo make lab)")
		return 1
	}
	switch args[0] {
	case "down":
		if err := errors.Join(meshlab.Down(prefix, dir), netlab.DetachHost()); err != nil {
			fmt.Fprintln(os.Stderr, "lab down:", err)
			return 1
		}
		os.RemoveAll(dir)
		fmt.Println("lab stopped; namespaces removed")
		return 0
	case "up":
		if len(args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: lab up BIN")
			return 2
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: lab up BIN | lab down")
		return 2
	}
	bin, err := filepath.Abs(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	if err := meshlab.Down(prefix, dir); err != nil { // a lab left running
		fmt.Fprintln(os.Stderr, "lab: clean up the previous lab:", err)
		return 1
	}
	os.RemoveAll(dir)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := meshlab.Start(ctx, meshlab.Options{Prefix: prefix, Dir: dir, Bin: bin, Detached: true, NATClients: true, Resolvers: true, AttachHost: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	if err := l.Net.Ping("cl1", netlab.HostB, 15e9); err != nil {
		fmt.Fprintln(os.Stderr, "lab: the mesh did not come up:", err)
		return 1
	}
	// cl3 (symmetric NAT) reaches cl4 (port-preserving NAT) only through
	// a relay.
	st, err := l.Status("cl4")
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	if err := l.Net.Ping("cl3", st.Self.OverlayIP, 20e9); err != nil {
		fmt.Fprintln(os.Stderr, "lab: the NAT clients did not come up:", err)
		return 1
	}
	nat3, nat4 := l.NAT.Host("cl3"), l.NAT.Host("cl4")
	fmt.Printf(`
meshd lab is up: 3 coordinators, site A (gwa1 priority 200, gwa2 priority 100, hosta %s),
site B (gwb1, hostb %s), clients cl1 and cl2 on the wan, cl3 (%s) behind a symmetric NAT
and cl4 (%s) behind a port-preserving NAT (routers at %s and %s on the wan).
Namespaces: %s*; state and logs: .lab/

Try:
  sudo ip netns exec %scl1 ping -c3 %s            # client -> site A LAN host, through gwa1
  sudo ip netns exec %shosta ping -c3 %s          # site A LAN -> site B LAN, true source IPs
  sudo ip netns exec %scl1 %s status --state-dir .lab/cl1
  sudo ip netns exec %sgwa1 wg show %s

The host is on the lab's wan (%s at %s), so the admin CLI works from this shell:
  export MESHD_ADMIN_TOKEN=$(sudo cat .lab/c1/admin.token)
  %s cluster status
  %s peer list
  %s route lookup %s

Dashboard (the coordinators' certificate comes from the cluster's own CA: accept it once):
  https://%s:8443/ui/    sign in with the admin token above, or a read-only one:
  %s admin token create dashboard --read-only

Failover: ping site A from cl1 every 10 ms, then kill the active gateway (gwa1):
  sudo ip netns exec %scl1 ping -i 0.01 %s
  sudo kill -9 $(cat .lab/gwa1.pid)      # gwa2 takes the route and the VIP %s

Names: every agent answers NAME.VNET.mesh on its overlay address; each agent's namespace
resolves through it (/etc/netns/NS/resolv.conf, removed by make lab-down):
  sudo ip netns exec %scl2 ping -c3 cl1.default.mesh
  sudo ip netns exec %scl2 getent hosts gwa1.default.mesh

NAT traversal: the PATH column says direct (a punched hole) or relay (through a coordinator):
  sudo %s status --state-dir .lab/cl4    # cl1, cl2, the gateways: direct; cl3: relay
  sudo %s ping cl3 --state-dir .lab/cl4  # which path answered, and the round-trip time
  sudo %s netcheck --state-dir .lab/cl3  # the symmetric NAT: a new port per destination

Stop it with: make lab-down
`, netlab.HostA, netlab.HostB, nat3.Addr, nat4.Addr, nat3.WAN, nat4.WAN, prefix,
		prefix, netlab.HostA, prefix, netlab.HostB,
		prefix, bin, prefix, l.Interface("gwa1"),
		netlab.HostIf, meshlab.HostAddr, bin, bin, bin, netlab.HostA,
		l.Topo.Coordinators[0].WAN, bin,
		prefix, netlab.HostA, netlab.SiteAVIP,
		prefix, prefix,
		bin, bin, bin)
	return 0
}

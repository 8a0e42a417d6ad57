// Command dockerlab drives the docker-compose lab (docker-compose.yml):
//
//	go run ./e2e/dockerlab up      build the image, start the lab, wait until the mesh is up
//	go run ./e2e/dockerlab check   the same, then check it and take it down (also on failure)
//	go run ./e2e/dockerlab down    remove the lab's containers, networks, volumes and rules
//
// The check covers the reachability matrix (ping between clients, sites and
// LAN hosts, both directions, including LAN hosts opening connections to
// clients), the source address each server sees (no SNAT), and a failover:
// site A's active gateway is SIGKILLed (`docker-compose kill`) under a 10 ms
// ping stream, the route and the virtual IP must move to the standby, and
// the restarted gateway must come back with its identity.
//
// It needs root (Docker and iptables) and a running Docker engine with
// docker-compose 1.29 or compose v2 (scripts/docker-deps.sh installs them).
// bin/meshd and bin/busybox (static) must be in place: `make lab-docker`
// and `make lab-docker-check` do that first.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// LAN bridges (docker-compose.yml names them). Docker's isolation rules for
// internal networks drop IPv4 that is bridged across them when its source
// or destination is outside the network's subnet; with br_netfilter (which
// Docker turns on) that includes LAN hosts routing through a gateway
// container. The lab accepts traffic that stays on one LAN bridge, before
// Docker's rules, in the DOCKER-USER chain.
var lanBridges = []string{"meshd-site-a", "meshd-site-b"}

const (
	siteA   = "198.19.10.0/24"
	hostA   = "198.19.10.10"
	hostB   = "198.19.20.10"
	readyIn = 120 * time.Second
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerlab up|check|down")
		os.Exit(2)
	}
	root, err := harness.RepoRoot()
	if err == nil {
		err = os.Chdir(root)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dockerlab:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &compose{cmd: composeCommand()}
	switch os.Args[1] {
	case "up":
		err = c.up(ctx)
		if err == nil {
			printTry(c)
		}
	case "check":
		err = c.up(ctx)
		if err == nil {
			err = c.check(ctx)
		}
		if err != nil {
			c.dumpLogs()
		}
		if derr := c.down(); err == nil {
			err = derr
		}
		if err == nil {
			fmt.Println("docker lab check passed")
		}
	case "down":
		err = c.down()
	default:
		err = fmt.Errorf("unknown command %q (up, check or down)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dockerlab:", err)
		os.Exit(1)
	}
}

// composeCommand is compose v2 when the docker CLI has it, else
// docker-compose (1.29 in Debian).
func composeCommand() []string {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	return []string{"docker-compose"}
}

type compose struct{ cmd []string }

// run runs a compose subcommand and returns its standard output.
func (c *compose) run(ctx context.Context, args ...string) (string, error) {
	a := append(append([]string{}, c.cmd[1:]...), args...)
	cmd := exec.CommandContext(ctx, c.cmd[0], a...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", strings.Join(c.cmd, " "), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// exec runs a command in a service's container.
func (c *compose) exec(ctx context.Context, svc string, args ...string) (string, error) {
	return c.run(ctx, append([]string{"exec", "-T", svc}, args...)...)
}

func (c *compose) up(ctx context.Context) error {
	// The host reaches the lab on the wan's bridge (meshd-wan); every other
	// lab address stays on this machine.
	if err := netlab.SealHost(); err != nil {
		return err
	}
	for _, f := range []string{"bin/meshd", "bin/busybox"} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s is missing: run `make lab-docker` (it builds it)", f)
		}
	}
	fmt.Println("building the images: meshd:dev (deploy/Dockerfile) and the lab's meshd-lab:dev")
	if err := runCmd("docker", "build", "-q", "-t", "meshd:dev", "-f", "deploy/Dockerfile", "bin"); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "docker", "run", "--rm", "--network", "none", "meshd:dev", "coordinator", "keygen").Output(); err != nil || len(bytes.TrimSpace(out)) == 0 {
		return fmt.Errorf("the meshd:dev image does not run meshd: %v", err)
	}
	if _, err := c.run(ctx, "build", "init"); err != nil {
		return err
	}
	fmt.Println("starting the lab")
	if _, err := c.run(ctx, "up", "-d"); err != nil {
		return err
	}
	if err := lanRules(true); err != nil {
		return err
	}
	return c.waitMesh(ctx)
}

func (c *compose) down() error {
	// Not the check's context: it must run after an interrupt too.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := c.run(ctx, "down", "-v", "--remove-orphans", "-t", "2")
	if rerr := lanRules(false); err == nil {
		err = rerr
	}
	if err == nil {
		fmt.Println("docker lab removed (containers, networks, volumes)")
	}
	return err
}

// lanRules adds (or removes) the DOCKER-USER rules that let traffic stay on
// a lab LAN bridge; adding twice adds nothing.
func lanRules(add bool) error {
	for _, br := range lanBridges {
		rule := []string{"DOCKER-USER", "-i", br, "-o", br, "-j", "ACCEPT"}
		present := exec.Command("iptables", append([]string{"-C"}, rule...)...).Run() == nil
		var err error
		switch {
		case add && !present:
			err = runCmd("iptables", append([]string{"-I"}, rule...)...)
		case !add && present:
			err = runCmd("iptables", append([]string{"-D"}, rule...)...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func runCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *compose) dumpLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := c.run(ctx, "logs", "--no-color", "--tail", "40")
	fmt.Fprintln(os.Stderr, "--- lab logs (last 40 lines per service) ---")
	fmt.Fprintln(os.Stderr, out)
}

// status is a peer's `meshd status --json`.
func (c *compose) status(ctx context.Context, svc string) (*api.LocalStatus, error) {
	out, err := c.exec(ctx, svc, "meshd", "status", "--json", "--state-dir", "/state")
	if err != nil {
		return nil, err
	}
	var st api.LocalStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("%s: status: %w", svc, err)
	}
	return &st, nil
}

var peers = []string{"gwa1", "gwa2", "gwb1", "cl1", "cl2"}

// waitMesh waits until every peer's agent answers and has a handshake with
// every other peer.
func (c *compose) waitMesh(ctx context.Context) error {
	fmt.Println("waiting for every peer to have a handshake with every other")
	return poll(ctx, readyIn, func() error {
		for _, p := range peers {
			st, err := c.status(ctx, p)
			if err != nil {
				return err
			}
			n := 0
			for _, q := range st.Peers {
				if q.LastHandshake != nil && !q.LastHandshake.IsZero() {
					n++
				}
			}
			if n != len(peers)-1 {
				return fmt.Errorf("%s has handshakes with %d of %d peers", p, n, len(peers)-1)
			}
		}
		return nil
	})
}

// poll calls f until it succeeds or d passes; the error is f's last.
func poll(ctx context.Context, d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %w", d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *compose) check(ctx context.Context) error {
	ip := map[string]string{"hosta": hostA, "hostb": hostB}
	for _, cl := range []string{"cl1", "cl2"} {
		st, err := c.status(ctx, cl)
		if err != nil {
			return err
		}
		ip[cl] = st.Self.OverlayIP
	}

	// Reachability: every pair, both ways; LAN hosts also open flows to clients.
	pairs := [][2]string{
		{"cl1", "cl2"}, {"cl2", "cl1"},
		{"cl1", "hosta"}, {"cl1", "hostb"}, {"cl2", "hosta"}, {"cl2", "hostb"},
		{"hosta", "hostb"}, {"hostb", "hosta"},
		{"hosta", "cl1"}, {"hostb", "cl2"},
	}
	for _, p := range pairs {
		if err := c.ping(ctx, p[0], ip[p[1]]); err != nil {
			return err
		}
		fmt.Printf("ok   ping %s -> %s (%s)\n", p[0], p[1], ip[p[1]])
	}

	// True source IPs: the server sees the client's overlay address or the
	// remote LAN host's own address.
	for _, p := range [][2]string{{"hostb", "hosta"}, {"hosta", "hostb"}, {"cl1", "hostb"}, {"cl2", "hosta"}, {"hosta", "cl1"}} {
		if err := c.sourceIP(ctx, p[0], ip[p[0]], ip[p[1]]); err != nil {
			return err
		}
		fmt.Printf("ok   %s -> %s over TCP, seen from %s\n", p[0], p[1], ip[p[0]])
	}
	return c.failover(ctx, ip)
}

func (c *compose) ping(ctx context.Context, from, to string) error {
	return poll(ctx, 20*time.Second, func() error {
		_, err := c.exec(ctx, from, "ping", "-c", "1", "-W", "1", to)
		return err
	})
}

// sourceIP fetches /cgi-bin/ip from server (busybox httpd in every lab
// container) and compares the address it saw with want.
func (c *compose) sourceIP(ctx context.Context, client, want, server string) error {
	var got string
	err := poll(ctx, 20*time.Second, func() error {
		// busybox wget -T crashes (1.35); timeout bounds the attempt.
		out, err := c.exec(ctx, client, "timeout", "5", "wget", "-q", "-O", "-", "http://"+server+":8080/cgi-bin/ip")
		if err != nil {
			return err
		}
		got = strings.TrimSpace(out)
		return nil
	})
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s -> %s: the server saw source %q, want %s (no SNAT)", client, server, got, want)
	}
	return nil
}

// activeGateway is the gateway cl1 uses for site A.
func (c *compose) activeGateway(ctx context.Context) (string, error) {
	st, err := c.status(ctx, "cl1")
	if err != nil {
		return "", err
	}
	for _, r := range st.Routes {
		if r.Prefix == siteA {
			return r.ActiveGateway, nil
		}
	}
	return "", fmt.Errorf("cl1 has no route for %s", siteA)
}

// waitActive waits until cl1 routes site A through gw.
func (c *compose) waitActive(ctx context.Context, gw string, d time.Duration) error {
	return poll(ctx, d, func() error {
		g, err := c.activeGateway(ctx)
		if err == nil && g != gw {
			err = fmt.Errorf("cl1 routes site A through %s, want %s", g, gw)
		}
		return err
	})
}

var seqRE = regexp.MustCompile(`seq=(\d+)`)

// failover SIGKILLs site A's active gateway while cl1 pings hosta every
// 10 ms; the standby must take the route and the VIP. Then the killed one
// is started again and must come back as active after its hold-down.
func (c *compose) failover(ctx context.Context, ip map[string]string) error {
	active, err := c.activeGateway(ctx)
	if err != nil {
		return err
	}
	standby := map[string]string{"gwa1": "gwa2", "gwa2": "gwa1"}[active]
	if standby == "" {
		return fmt.Errorf("site A's active gateway is %q, want gwa1 or gwa2", active)
	}
	before, err := c.status(ctx, active)
	if err != nil {
		return err
	}
	const interval, count = 10 * time.Millisecond, 600
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pingOut := make(chan string, 1)
	go func() {
		out, _ := c.exec(pctx, "cl1", "ping", "-i", "0.01", "-c", strconv.Itoa(count), "-W", "1", hostA)
		pingOut <- out
	}()
	// Let the stream run before the kill.
	if err := poll(ctx, 10*time.Second, func() error {
		_, err := c.exec(ctx, "cl1", "ping", "-c", "1", "-W", "1", hostA)
		return err
	}); err != nil {
		return err
	}
	fmt.Printf("killing %s (site A's active gateway) with SIGKILL under a 10 ms ping stream\n", active)
	if _, err := c.run(ctx, "kill", "-s", "SIGKILL", active); err != nil {
		return err
	}
	if err := c.waitActive(ctx, standby, 10*time.Second); err != nil {
		return err
	}
	out := <-pingOut
	gap, received, err := longestGap(out, interval)
	if err != nil {
		return err
	}
	if received == count {
		return errors.New("no packet was lost: the kill did not hit the path")
	}
	fmt.Printf("ok   %s took over; longest gap %v (%d of %d replies)\n", standby, gap, received, count)
	if gap > 3*time.Second {
		return fmt.Errorf("failover gap %v is over 3 s", gap)
	}
	// The return path from the LAN goes through the VIP, now on the standby.
	if err := c.sourceIP(ctx, "hosta", hostA, ip["cl1"]); err != nil {
		return err
	}
	fmt.Println("ok   hosta -> cl1 over TCP through the standby")

	fmt.Printf("starting %s again\n", active)
	if _, err := c.run(ctx, "start", active); err != nil {
		return err
	}
	if err := c.waitActive(ctx, active, 30*time.Second); err != nil {
		return err
	}
	if err := c.ping(ctx, "cl1", hostA); err != nil {
		return err
	}
	after, err := c.status(ctx, active)
	if err != nil {
		return err
	}
	if after.Self.PublicKey != before.Self.PublicKey || after.Self.OverlayIP != before.Self.OverlayIP {
		return fmt.Errorf("%s came back as %s %s, was %s %s", active, after.Self.PublicKey, after.Self.OverlayIP, before.Self.PublicKey, before.Self.OverlayIP)
	}
	fmt.Printf("ok   %s is back with the same key and address, and active again after its hold-down\n", active)
	return nil
}

// longestGap reads busybox ping output and returns the longest run of
// missing replies as time, and how many replies came.
func longestGap(out string, interval time.Duration) (time.Duration, int, error) {
	var seqs []int
	for _, m := range seqRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		seqs = append(seqs, n)
	}
	if len(seqs) < 2 {
		return 0, len(seqs), fmt.Errorf("ping got %d replies: %s", len(seqs), out)
	}
	worst := 0
	for i := 1; i < len(seqs); i++ {
		if d := seqs[i] - seqs[i-1]; d > worst {
			worst = d
		}
	}
	return time.Duration(worst) * interval, len(seqs), nil
}

func printTry(c *compose) {
	dc := strings.Join(c.cmd, " ")
	fmt.Printf(`
The docker lab is up. Try:
  %[1]s exec hosta ping 198.19.20.10                 # site A LAN -> site B LAN
  %[1]s exec hostb wget -qO- http://198.19.10.10:8080/cgi-bin/ip   # prints the source hosta saw
  %[1]s exec cl1 meshd status --state-dir /state
  %[1]s exec c1 lab-admin.sh route lookup 198.19.10.10
  # from this shell: the host is on the wan (bridge meshd-wan, 198.18.98.254)
  export MESHD_ADMIN_TOKEN=$(%[1]s exec -T c1 cat /data/admin.token)
  bin/meshd cluster status
  # failover: ping site A from a client, and kill the active gateway in another terminal
  %[1]s exec cl1 ping -i 0.01 198.19.10.10
  %[1]s kill gwa1
make lab-docker-down removes it.
`, dc)
}

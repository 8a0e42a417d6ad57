package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

// pairLab is two namespaces joined by one veth pair, a single coordinator
// in the first, and meshd peers on both sides.
type pairLab struct {
	net   *netlab.Lab
	dir   string
	bin   string
	procs []*harness.Proc
	admin string // admin token
}

const (
	pairA = "10.98.0.1"
	pairB = "10.98.0.2"
)

func newPairLab(dir, prefix string) (*pairLab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("data-plane figures need root (network namespaces)")
	}
	bin, err := harness.Binary()
	if err != nil {
		return nil, err
	}
	nl, err := netlab.New(prefix)
	if err != nil {
		return nil, err
	}
	p := &pairLab{net: nl, dir: dir, bin: bin}
	if err := nl.AddNS("a"); err != nil {
		p.Close()
		return nil, err
	}
	if err := nl.AddNS("b"); err != nil {
		p.Close()
		return nil, err
	}
	if err := nl.Link("a", "eth0", pairA+"/24", "b", "eth0", pairB+"/24"); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *pairLab) Close() {
	for _, pr := range p.procs {
		pr.Stop(5 * time.Second)
	}
	p.net.Close()
}

func (p *pairLab) start(ns, name string, args ...string) (*harness.Proc, error) {
	pr, err := harness.Start(p.dir, name, p.net.Wrap(ns), p.bin, args...)
	if err != nil {
		return nil, err
	}
	p.procs = append(p.procs, pr)
	return pr, nil
}

// startMesh runs the coordinator in a and waits for its admin token.
func (p *pairLab) startCoordinator() error {
	key, err := harness.Run(p.bin, "coordinator", "keygen")
	if err != nil {
		return err
	}
	keyFile := filepath.Join(p.dir, "cluster.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		return err
	}
	if _, err := p.start("a", "c1", "coordinator", "--name", "c1", "--data-dir", filepath.Join(p.dir, "c1"),
		"--listen", pairA+":8443", "--raft-listen", pairA+":8301", "--cluster-key-file", keyFile, "--stun-listen", "off"); err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(p.dir, "c1", "admin.token"))
		if err == nil && len(b) > 0 {
			p.admin = strings.TrimSpace(string(b))
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("coordinator did not come up")
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// adminClient talks to the coordinator from inside namespace a.
func (p *pairLab) adminClient() (*apiclient.Client, *token.Token, error) {
	t, err := token.ParseKind(p.admin, token.KindAdmin)
	if err != nil {
		return nil, nil, err
	}
	c := apiclient.New(t.URLs, t.Pin, p.admin)
	c.SetDialContext(p.net.DialContext("a"))
	return c, t, nil
}

func (p *pairLab) newToken(ctx context.Context) (string, error) {
	c, _, err := p.adminClient()
	if err != nil {
		return "", err
	}
	var tok api.CreateTokenResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1}, &tok); err != nil {
		return "", err
	}
	return tok.Token, nil
}

// startPeer runs `meshd peer up` in ns and returns when its status answers.
func (p *pairLab) startPeer(ctx context.Context, ns, name, tok string) (*harness.Proc, *api.LocalStatus, error) {
	dir := filepath.Join(p.dir, name)
	pr, err := p.start(ns, name, "peer", "up", "--token", tok, "--state-dir", dir, "--name", name, "--interface", "mb-"+name)
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := p.net.Exec(ns, p.bin, "status", "--json", "--state-dir", dir)
		if err == nil {
			var st api.LocalStatus
			if err := json.Unmarshal(out, &st); err != nil {
				return nil, nil, err
			}
			return pr, &st, nil
		}
		if pr.Exited() || time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("peer %s did not come up: %v\n%s", name, err, pr.Log())
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// iperf runs one TCP stream from ns "a" to addr in ns "b" for d and returns
// the received Gbit/s.
func (p *pairLab) iperf(addr string, d time.Duration) (float64, error) {
	return iperfTCP(p.net, "a", "b", addr, d)
}

// iperfTCP runs one iperf3 TCP stream from namespace from to addr, served
// in namespace to, for d and returns the received Gbit/s.
func iperfTCP(nl *netlab.Lab, from, to, addr string, d time.Duration) (float64, error) {
	srv := exec.Command("ip", "netns", "exec", nl.NS(to), "iperf3", "-s", "-1", "-B", addr)
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	type result struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	deadline := time.Now().Add(10 * time.Second)
	var res result
	for {
		out, err := nl.Exec(from, "iperf3", "-c", addr, "-t", strconv.Itoa(int(d.Seconds())), "-J")
		res = result{}
		jerr := json.Unmarshal(out, &res)
		if err == nil && jerr == nil && res.Error == "" {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("iperf3 to %s: %v %v %s", addr, err, jerr, res.Error)
		}
		time.Sleep(50 * time.Millisecond) // the server is starting; polling interval
	}
	if res.End.SumReceived.BitsPerSecond < 1e6 {
		return 0, fmt.Errorf("iperf3 to %s moved almost nothing", addr)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// plainWireGuard runs the wireguard-go binary built from the module version
// meshd uses on both sides of the pair, configured with wg(8), with
// tunnel addresses 10.97.0.1/.2.
func (p *pairLab) plainWireGuard() (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	wgo := filepath.Join(root, "bin", "wireguard-go")
	build := exec.Command("go", "build", "-o", wgo, "golang.zx2c4.com/wireguard")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build wireguard-go: %w\n%s", err, out)
	}
	keys := map[string][2]string{}
	for _, ns := range []string{"a", "b"} {
		priv, err := harness.Run("wg", "genkey")
		if err != nil {
			return "", err
		}
		pub := exec.Command("wg", "pubkey")
		pub.Stdin = strings.NewReader(string(priv))
		pubOut, err := pub.Output()
		if err != nil {
			return "", err
		}
		keys[ns] = [2]string{strings.TrimSpace(string(priv)), strings.TrimSpace(string(pubOut))}
	}
	for i, ns := range []string{"a", "b"} {
		other, otherAddr := "b", pairB
		if ns == "b" {
			other, otherAddr = "a", pairA
		}
		ifn := "pw" + ns
		pr, err := harness.Start(p.dir, "wg-"+ns, p.net.Wrap(ns), wgo, "-f", ifn)
		if err != nil {
			return "", err
		}
		p.procs = append(p.procs, pr)
		keyFile := filepath.Join(p.dir, "wg-"+ns+".key")
		os.WriteFile(keyFile, []byte(keys[ns][0]+"\n"), 0o600)
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := p.net.Exec(ns, "wg", "set", ifn, "private-key", keyFile, "listen-port", "51999",
				"peer", keys[other][1], "allowed-ips", "10.97.0.0/24", "endpoint", otherAddr+":51999")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return "", fmt.Errorf("configure wireguard-go: %w\n%s", err, pr.Log())
			}
			time.Sleep(20 * time.Millisecond) // the UAPI socket is being created; polling interval
		}
		for _, c := range [][]string{
			{"ip", "addr", "add", fmt.Sprintf("10.97.0.%d/24", i+1), "dev", ifn},
			{"ip", "link", "set", ifn, "mtu", "1420", "up"},
		} {
			if _, err := p.net.Exec(ns, c...); err != nil {
				return "", err
			}
		}
	}
	return "10.97.0.2", nil
}

func dataPlane(ctx context.Context, dir string) (*Figure, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("iperf3 is not installed (scripts/deps.sh)")
	}
	p, err := newPairLab(dir, "mbd-")
	if err != nil {
		return nil, err
	}
	defer p.Close()
	const d = 5 * time.Second
	raw, err := p.iperf(pairB, d)
	if err != nil {
		return nil, err
	}
	wgAddr, err := p.plainWireGuard()
	if err != nil {
		return nil, err
	}
	if err := p.startCoordinator(); err != nil {
		return nil, err
	}
	tokA, err := p.newToken(ctx)
	if err != nil {
		return nil, err
	}
	tokB, err := p.newToken(ctx)
	if err != nil {
		return nil, err
	}
	if _, _, err := p.startPeer(ctx, "a", "pa", tokA); err != nil {
		return nil, err
	}
	_, stB, err := p.startPeer(ctx, "b", "pb", tokB)
	if err != nil {
		return nil, err
	}
	meshAddr := stB.Self.OverlayIP
	if err := p.net.Ping("a", meshAddr, 10*time.Second); err != nil {
		return nil, err
	}
	// Alternate the two so that machine noise hits both alike.
	var wgs, meshes []float64
	const rounds = 5
	for range rounds {
		w, err := p.iperf(wgAddr, d)
		if err != nil {
			return nil, err
		}
		m, err := p.iperf(meshAddr, d)
		if err != nil {
			return nil, err
		}
		wgs, meshes = append(wgs, w), append(meshes, m)
	}
	wg, mesh := median(wgs), median(meshes)
	return &Figure{
		Value: mesh, Unit: "Gbit/s", Target: "ratio >= 0.95 against plain wireguard-go",
		Baseline: wg, BaselineWhat: "plain wireguard-go, same veth", Ratio: mesh / wg, Pass: mesh/wg >= 0.95,
		How:   fmt.Sprintf("one iperf3 TCP stream for %s between two namespaces joined by one veth pair: over meshd (userspace engine, MTU 1420) and over the wireguard-go binary of the same module version configured with wg (MTU 1420), alternated %d times each, medians", d, rounds),
		Extra: map[string]any{"raw_veth_gbit_s": raw, "meshd_runs": meshes, "wireguard_go_runs": wgs},
	}, nil
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// firstReply sends a datagram to addr every 10 ms from namespace ns and
// returns when the first answer arrives.
func firstReply(l *netlab.Lab, ns, addr string, d time.Duration) error {
	var c *net.UDPConn
	err := l.InNS(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", nil)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 64)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c.WriteToUDP([]byte("ping"), dst) // fails until the route exists
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, _, err := c.ReadFromUDP(buf); err == nil {
			return nil
		}
	}
	return fmt.Errorf("no reply from %s within %s", addr, d)
}

func joinToFirstPacket(ctx context.Context, dir string) (*Figure, error) {
	p, err := newPairLab(dir, "mbj-")
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.startCoordinator(); err != nil {
		return nil, err
	}
	tok, err := p.newToken(ctx)
	if err != nil {
		return nil, err
	}
	_, stA, err := p.startPeer(ctx, "a", "pa", tok)
	if err != nil {
		return nil, err
	}
	echo, err := p.net.UDPEcho("a", stA.Self.OverlayIP+":7001")
	if err != nil {
		return nil, err
	}
	defer echo.Close()
	admin, _, err := p.adminClient()
	if err != nil {
		return nil, err
	}
	const trials = 10
	var times []float64
	for i := range trials {
		tok, err := p.newToken(ctx)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("j%d", i)
		start := time.Now()
		pr, err := p.start("b", name, "peer", "up", "--token", tok, "--state-dir", filepath.Join(p.dir, name), "--name", name, "--interface", "mb-j")
		if err != nil {
			return nil, err
		}
		if err := firstReply(p.net, "b", stA.Self.OverlayIP+":7001", 20*time.Second); err != nil {
			sa, _ := p.net.Exec("a", p.bin, "status", "--state-dir", filepath.Join(p.dir, "pa"))
			sb, _ := p.net.Exec("b", p.bin, "status", "--state-dir", filepath.Join(p.dir, name))
			return nil, fmt.Errorf("%w\n%s\n%s\n%s", err, sa, sb, pr.Log())
		}
		times = append(times, time.Since(start).Seconds())
		pr.Stop(5 * time.Second)
		if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/"+name, nil, nil); err != nil {
			return nil, err
		}
	}
	med := median(times)
	return &Figure{
		Value: med, Unit: "s", Target: "median <= 1 s",
		Pass:  med <= 1,
		How:   fmt.Sprintf("start `meshd peer up --token` in a fresh namespace state; time until the first UDP echo reply from an existing peer's overlay address (probe every 10 ms); %d joins, median", trials),
		Extra: map[string]any{"trials_s": times, "max_s": slices.Max(times)},
	}, nil
}

// agentMemory is the RSS of an idle agent with 20 other peers in its map.
func agentMemory(ctx context.Context, dir string) (*Figure, error) {
	p, err := newPairLab(dir, "mbm-")
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.startCoordinator(); err != nil {
		return nil, err
	}
	admin, adminTok, err := p.adminClient()
	if err != nil {
		return nil, err
	}
	var multi api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 20}, &multi); err != nil {
		return nil, err
	}
	joiner := apiclient.New(adminTok.URLs, adminTok.Pin, "")
	joiner.SetDialContext(p.net.DialContext("a"))
	for i := range 20 {
		req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: multi.Token, Name: fmt.Sprintf("m%02d", i), PublicKey: wgKey(),
			Endpoints: []string{fmt.Sprintf("10.98.0.%d:51820", 100+i)}, OmitMap: true}
		if err := joiner.Do(ctx, http.MethodPost, "/v1/join", req, nil); err != nil {
			return nil, err
		}
	}
	tok, err := p.newToken(ctx)
	if err != nil {
		return nil, err
	}
	pr, st, err := p.startPeer(ctx, "b", "idle", tok)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(st.Peers) < 20 && time.Now().Before(deadline) {
		out, err := p.net.Exec("b", p.bin, "status", "--json", "--state-dir", filepath.Join(p.dir, "idle"))
		if err == nil {
			json.Unmarshal(out, st)
		}
	}
	if len(st.Peers) < 20 {
		return nil, fmt.Errorf("agent has %d peers; want 20", len(st.Peers))
	}
	time.Sleep(3 * time.Second) // let the agent go idle before reading its memory
	rss, err := rssKiB(pr.Pid())
	if err != nil {
		return nil, err
	}
	return &Figure{
		Value: float64(rss) / 1024, Unit: "MiB", Target: "report",
		Pass: true,
		How:  "VmRSS of an idle `meshd peer up` (userspace engine) with 20 other peers in its network map, 3 s after they were configured",
	}, nil
}

func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no VmRSS")
}

// policyFill is a 100-rule policy for the pair lab: 99 rules that match
// nothing of the benchmark's traffic and one that lets pa reach pb's
// iperf3 port.
func policyFill() json.RawMessage {
	var rules []string
	for i := range 99 {
		rules = append(rules, fmt.Sprintf(`{"action": "accept", "src": ["peer:pa"], "dst": ["10.200.%d.0/24:%d"], "proto": "tcp"}`, i, 1000+i))
	}
	rules = append(rules, `{"action": "accept", "src": ["peer:pa"], "dst": ["peer:pb:5201"], "proto": "tcp"}`)
	return json.RawMessage(`{"acls": [` + strings.Join(rules, ",") + `]}`)
}

// policyInForce reports whether pb's filter drops what the policy denies:
// a connection from a to a closed port of pb times out instead of being
// refused.
func (p *pairLab) policyInForce(ctx context.Context, addr string) bool {
	dial := p.net.DialContext("a")
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	c, err := dial(ctx, "tcp", net.JoinHostPort(addr, "5202"))
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout")
}

// dataPlanePolicy: one TCP stream pa -> pb with a 100-rule policy in the
// vnet against none, alternated.
func dataPlanePolicy(ctx context.Context, dir string) (*Figure, error) {
	p, err := newPairLab(dir, "mbp-")
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.startCoordinator(); err != nil {
		return nil, err
	}
	var stB *api.LocalStatus
	for _, name := range []string{"pa", "pb"} {
		tok, err := p.newToken(ctx)
		if err != nil {
			return nil, err
		}
		ns := map[string]string{"pa": "a", "pb": "b"}[name]
		if _, st, err := p.startPeer(ctx, ns, name, tok); err != nil {
			return nil, err
		} else if name == "pb" {
			stB = st
		}
	}
	addr := stB.Self.OverlayIP
	if err := p.net.Ping("a", addr, 10*time.Second); err != nil {
		return nil, err
	}
	c, _, err := p.adminClient()
	if err != nil {
		return nil, err
	}
	policySet := false
	set := func(on bool) error {
		if !on && !policySet {
			return nil // no policy yet
		}
		policySet = on
		var err error
		if on {
			err = c.Do(ctx, http.MethodPut, "/v1/vnets/default/policy", policyFill(), nil)
		} else {
			err = c.Do(ctx, http.MethodDelete, "/v1/vnets/default/policy", nil, nil)
		}
		if err != nil {
			return err
		}
		deadline := time.Now().Add(10 * time.Second)
		for p.policyInForce(ctx, addr) != on {
			if time.Now().After(deadline) {
				return fmt.Errorf("policy on=%v not in force on pb after 10 s", on)
			}
		}
		return nil
	}
	const d, rounds = 5 * time.Second, 5
	var without, with []float64
	for range rounds {
		if err := set(false); err != nil {
			return nil, err
		}
		w, err := p.iperf(addr, d)
		if err != nil {
			return nil, err
		}
		if err := set(true); err != nil {
			return nil, err
		}
		m, err := p.iperf(addr, d)
		if err != nil {
			return nil, err
		}
		without, with = append(without, w), append(with, m)
	}
	wo, wi := median(without), median(with)
	return &Figure{
		Value: wi, Unit: "Gbit/s", Target: "ratio >= 0.95 against no policy",
		Baseline: wo, BaselineWhat: "the same pair without a policy", Ratio: wi / wo, Pass: wi/wo >= 0.95,
		How:   fmt.Sprintf("one iperf3 TCP stream for %s from pa to pb (userspace engine, one veth pair) with a 100-rule policy in the vnet (99 rules for other addresses, one accepting pa -> pb:5201; pb's filter judges every packet) and without one, alternated %d times, medians", d, rounds),
		Extra: map[string]any{"with_policy_runs": with, "without_policy_runs": without},
	}, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
)

// benchHoldDown shortens the lab's hold-down so trials follow each other
// quickly; it does not take part in the failover itself.
const benchHoldDown = "1s"

func failoverLab(ctx context.Context, dir, prefix string, peerArgs map[string][]string) (*meshlab.Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("failover figures need root (network namespaces)")
	}
	bin, err := harness.Binary()
	if err != nil {
		return nil, err
	}
	args := map[string][]string{}
	for _, p := range meshlab.Peers {
		args[p.Name] = append([]string{"--hold-down", benchHoldDown}, peerArgs[p.Name]...)
	}
	return meshlab.Start(ctx, meshlab.Options{Prefix: prefix, IfPrefix: prefix[:3] + "-", Dir: dir, Bin: bin, PeerArgs: args})
}

func waitActive(l *meshlab.Lab, gw string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		got, err := l.ActiveGateway("cl1", netlab.SiteA)
		if err == nil && got == gw {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("site A not carried by %s within %s (got %q, %v)", gw, d, got, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// waitSteady waits until gw has carried site A for cl1 without a break for
// hold.
func waitSteady(l *meshlab.Lab, gw string, hold, d time.Duration) error {
	deadline := time.Now().Add(d)
	var since time.Time
	for {
		got, err := l.ActiveGateway("cl1", netlab.SiteA)
		switch {
		case err != nil || got != gw:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= hold:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("site A not carried steadily by %s within %s (got %q, %v)", gw, d, got, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// waitVIP waits until hosta's neighbour entry for site A's VIP names gw's
// LAN interface (an entry that still names the other gateway is stale
// until the next gratuitous ARP or probe).
func waitVIP(l *meshlab.Lab, gw string, d time.Duration) error {
	mac, err := l.Net.Exec(gw, "cat", "/sys/class/net/eth1/address")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	for {
		// hosta resolves the VIP when it sends to it (the VIP answers ARP,
		// not ping).
		l.Net.Exec("hosta", "ping", "-n", "-q", "-c", "1", "-W", "0.2", netlab.SiteAVIP)
		neigh, err := l.Net.Exec("hosta", "ip", "neigh", "show", netlab.SiteAVIP)
		if err == nil && strings.Contains(string(neigh), strings.TrimSpace(string(mac))) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("site A's VIP not on %s within %s (hosta: %q)", gw, d, strings.TrimSpace(string(neigh)))
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// gapTrial pings hosta from cl1 every 10 ms, applies fault after 1 s and
// returns the longest interval without a reply.
func gapTrial(l *meshlab.Lab, fault func() error) (time.Duration, error) {
	// Steady state: gwa1 carries the site for cl1 and has done so for a
	// while (a gateway that just came back may drop out once more while
	// its paths settle), and the LAN's replies go to gwa1 too (the VIP
	// handed back after the hold-down, as hosta's neighbour entry shows).
	if err := waitSteady(l, "gwa1", 1500*time.Millisecond, 30*time.Second); err != nil {
		return 0, err
	}
	if err := waitVIP(l, "gwa1", 10*time.Second); err != nil {
		return 0, err
	}
	ping, err := l.StartPing("cl1", netlab.HostA, 4*time.Second)
	if err != nil {
		return 0, err
	}
	time.Sleep(time.Second) // steady traffic before the fault
	if err := fault(); err != nil {
		return 0, err
	}
	gap, _, _ := ping.Wait()
	if err := waitActive(l, "gwa2", 10*time.Second); err != nil {
		return 0, err
	}
	return gap, nil
}

func restartGWA1(ctx context.Context, l *meshlab.Lab) error {
	if err := l.StartPeer("gwa1", ""); err != nil {
		return err
	}
	return l.WaitPeerUp(ctx, "gwa1", 20*time.Second)
}

func gapFigure(name string, gaps []time.Duration, how string) *Figure {
	slices.Sort(gaps)
	med, max := gaps[len(gaps)/2], gaps[len(gaps)-1]
	var secs []float64
	for _, g := range gaps {
		secs = append(secs, float64(g.Milliseconds())/1000)
	}
	return &Figure{
		Value: med.Seconds(), Unit: "s (median gap)", Target: "median <= 0.25 s, max <= 0.5 s",
		Pass:  med <= 250*time.Millisecond && max <= 500*time.Millisecond,
		How:   how,
		Extra: map[string]any{"max_s": max.Seconds(), "trials_s": secs},
	}
}

func failoverKill(ctx context.Context, dir string) (*Figure, error) {
	l, err := failoverLab(ctx, dir, "mbk-", nil)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	const trials = 20
	var gaps []time.Duration
	for i := range trials {
		var killed time.Time
		gap, err := gapTrial(l, func() error { killed = time.Now(); l.Procs["gwa1"].Kill(); return nil })
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(os.Stderr, "  trial %d: killed at %s, gap %s\n", i+1, killed.UTC().Format("15:04:05.000"), gap.Round(time.Millisecond))
		gaps = append(gaps, gap)
		if err := restartGWA1(ctx, l); err != nil {
			return nil, err
		}
	}
	return gapFigure("failover_gap_sigkill", gaps, fmt.Sprintf("cl1 pings site A's LAN host every 10 ms through the HA pair (VIP as the host's default gateway); SIGKILL the active gateway; longest interval without a reply; %d trials (hold-down %s between them)", trials, benchHoldDown)), nil
}

func failoverHeadless(ctx context.Context, dir string) (*Figure, error) {
	l, err := failoverLab(ctx, dir, "mbh-", nil)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	const trials = 20
	var gaps []time.Duration
	for i := range trials {
		if i > 0 {
			for _, c := range l.Topo.Coordinators {
				if err := l.StartCoordinator(c.Name); err != nil {
					return nil, err
				}
			}
			if err := l.WaitCluster(ctx, 30*time.Second); err != nil {
				return nil, err
			}
			if err := restartGWA1(ctx, l); err != nil {
				return nil, err
			}
		}
		if err := waitActive(l, "gwa1", 30*time.Second); err != nil {
			return nil, err
		}
		for _, c := range l.Topo.Coordinators {
			l.Procs[c.Name].Kill()
		}
		gap, err := gapTrial(l, func() error { l.Procs["gwa1"].Kill(); return nil })
		if err != nil {
			return nil, err
		}
		gaps = append(gaps, gap)
	}
	return gapFigure("failover_gap_sigkill_coordinators_down", gaps, fmt.Sprintf("as failover_gap_sigkill, with all three coordinators SIGKILLed before each trial; %d trials", trials)), nil
}

func failoverFaults(ctx context.Context, dir string) (*Figure, error) {
	l, err := failoverLab(ctx, dir, "mbz-", map[string][]string{
		"gwa1": {"--lan-check", netlab.HostA}, "gwa2": {"--lan-check", netlab.HostA}})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	const trials = 5
	run := func(fault, undo []string) ([]time.Duration, error) {
		var gaps []time.Duration
		for i := range trials {
			var at time.Time
			gap, err := gapTrial(l, func() error { at = time.Now(); _, err := l.Net.Exec("gwa1", fault...); return err })
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "  %s trial %d: at %s, gap %s\n", fault[len(fault)-2], i+1, at.UTC().Format("15:04:05.000"), gap.Round(time.Millisecond))
			gaps = append(gaps, gap)
			if _, err := l.Net.Exec("gwa1", undo...); err != nil {
				return nil, err
			}
		}
		slices.Sort(gaps)
		return gaps, nil
	}
	zombie, err := run([]string{"sysctl", "-qw", "net.ipv4.ip_forward=0"}, []string{"sysctl", "-qw", "net.ipv4.ip_forward=1"})
	if err != nil {
		return nil, fmt.Errorf("zombie: %w", err)
	}
	cut, err := run([]string{"ip", "link", "set", "eth0", "down"}, []string{"ip", "link", "set", "eth0", "up"})
	if err != nil {
		return nil, fmt.Errorf("link cut: %w", err)
	}
	lan, err := run([]string{"ip", "link", "set", "eth1", "down"}, []string{"ip", "link", "set", "eth1", "up"})
	if err != nil {
		return nil, fmt.Errorf("LAN check: %w", err)
	}
	secs := func(gs []time.Duration) []float64 {
		var out []float64
		for _, g := range gs {
			out = append(out, float64(g.Milliseconds())/1000)
		}
		return out
	}
	zmed, cmed, lmed := zombie[len(zombie)/2], cut[len(cut)/2], lan[len(lan)/2]
	return &Figure{
		Value: zmed.Seconds(), Unit: "s (median gap, zombie)", Target: "zombie median <= 0.25 s; uplink cut max <= 1 s",
		Pass: zmed <= 250*time.Millisecond && cut[len(cut)-1] <= time.Second,
		How:  fmt.Sprintf("as failover_gap_sigkill, but the active gateway's forwarding is turned off (zombie), its uplink is cut, or its LAN link goes down (both gateways run --lan-check hosta); %d trials each", trials),
		Extra: map[string]any{"zombie_trials_s": secs(zombie), "link_cut_median_s": cmed.Seconds(), "link_cut_max_s": cut[len(cut)-1].Seconds(), "link_cut_trials_s": secs(cut),
			"lan_check_median_s": lmed.Seconds(), "lan_check_trials_s": secs(lan)},
	}, nil
}

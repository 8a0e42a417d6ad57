package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// natJoinHosts are the hosts whose joins are timed, one of each kind;
// pub2 is the flat-WAN baseline (a host on the WAN itself).
var natJoinHosts = []string{"pub2", "pp1", "fc1", "sym1", "udpb1", "sh1", "cg1"}

const (
	natJoinRuns     = 3
	natSwitchTrials = 3
	natIperfRounds  = 3
	natIperfFor     = 5 * time.Second
)

// natFigures measures the NAT traversal figures in one NAT lab: the matrix
// plus pub2, a second public host for the baseline.
func natFigures(ctx context.Context, dir string) (map[string]*Figure, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("NAT figures need root (network namespaces)")
	}
	for _, tool := range []string{"nft", "conntrack", "iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("needs %s (scripts/deps.sh installs it)", tool)
		}
	}
	bin, err := harness.Binary()
	if err != nil {
		return nil, err
	}
	specs := append(netlab.DefaultNATMatrix(), netlab.NATHostSpec{Name: "pub2", Kind: netlab.Public})
	// Relays unthrottled, so that the relayed stream measures the relay
	// and not its default cap of 10 MB/s per allocation.
	l, err := meshlab.StartNAT(ctx, meshlab.Options{Prefix: "mbn-", IfPrefix: "mbn-", Dir: dir, Bin: bin,
		CoordinatorArgs: []string{"--relay-bandwidth", "0"}}, specs)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	var hosts []string
	for _, h := range l.NAT.Hosts {
		hosts = append(hosts, h.Name)
	}
	const target = "pub1"
	if err := startNATPeer(ctx, l, target); err != nil {
		return nil, err
	}
	st, err := l.Status(target)
	if err != nil {
		return nil, err
	}
	targetIP := st.Self.OverlayIP

	out := map[string]*Figure{}
	if out["nat_join_to_first_reply"], err = natJoins(ctx, l, target, targetIP); err != nil {
		return nil, fmt.Errorf("joins: %w", err)
	}
	if out["nat_time_to_direct"], err = natTimeToDirect(l); err != nil {
		return nil, fmt.Errorf("time to direct: %w", err)
	}

	// Everyone else at once, fresh, for the matrix.
	others := slices.DeleteFunc(slices.Clone(hosts), func(h string) bool { return h == target })
	for _, h := range others {
		if err := freshPeer(l, h); err != nil {
			return nil, err
		}
	}
	started := time.Now()
	for _, h := range others {
		tok, err := l.Token()
		if err != nil {
			return nil, err
		}
		if err := l.StartPeer(h, tok); err != nil {
			return nil, err
		}
	}
	for _, h := range others {
		if err := l.WaitPeerUp(ctx, h, 30*time.Second); err != nil {
			return nil, err
		}
	}
	res, err := l.CheckNATMatrix(hosts, started, started.Add(60*time.Second))
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, meshlab.MatrixTable(res))
	out["nat_matrix"] = matrixFigure(res)

	switched, err := natPathSwitch(l)
	if err != nil {
		return nil, fmt.Errorf("path switch: %w", err)
	}
	out["nat_path_switch"] = switched
	if out["nat_relay_vs_direct_tcp"], err = natIperf(l); err != nil {
		return nil, fmt.Errorf("iperf3: %w", err)
	}
	return out, nil
}

// startNATPeer joins host with a new token and waits until it is up.
func startNATPeer(ctx context.Context, l *meshlab.Lab, host string) error {
	tok, err := l.Token()
	if err != nil {
		return err
	}
	if err := l.StartPeer(host, tok); err != nil {
		return err
	}
	return l.WaitPeerUp(ctx, host, 30*time.Second)
}

// freshPeer stops host's agent if it runs, removes it from the mesh and
// deletes its state, so that it joins anew.
func freshPeer(l *meshlab.Lab, host string) error {
	if p := l.Procs[host]; p != nil && !p.Exited() {
		p.Stop(5 * time.Second)
		if _, err := l.Admin("peer", "remove", host); err != nil {
			return err
		}
	}
	return os.RemoveAll(l.StateDir(host))
}

// natJoins times fresh joins of one host of each kind, one at a time:
// `meshd peer up` start to the first UDP echo from the target's overlay
// address (probes every 10 ms).
func natJoins(ctx context.Context, l *meshlab.Lab, target, targetIP string) (*Figure, error) {
	echo, err := l.StartEcho(target)
	if err != nil {
		return nil, err
	}
	defer echo.Close()
	trials := map[string][]float64{}
	for range natJoinRuns {
		for _, h := range natJoinHosts {
			if err := freshPeer(l, h); err != nil {
				return nil, err
			}
			tok, err := l.Token()
			if err != nil {
				return nil, err
			}
			if err := l.StartPeer(h, tok); err != nil {
				return nil, err
			}
			at, err := l.FirstReply(h, targetIP, 10*time.Millisecond, time.Now().Add(30*time.Second))
			if err != nil {
				return nil, fmt.Errorf("%w\n%s", err, tail(l.Logs(h), 30))
			}
			trials[h] = append(trials[h], at.Sub(l.Started[h]).Seconds())
			if err := freshPeer(l, h); err != nil {
				return nil, err
			}
		}
	}
	medians := map[string]float64{}
	worst, worstKind := 0.0, ""
	perKind := map[string]any{}
	for _, h := range natJoinHosts {
		kind := l.NAT.Host(h).Kind.String()
		m := median(trials[h])
		medians[h] = m
		perKind[kind] = map[string]any{"host": h, "median_s": m, "trials_s": trials[h]}
		if h != "pub2" && m > worst {
			worst, worstKind = m, kind
		}
	}
	base := medians["pub2"]
	return &Figure{
		Value: worst, Unit: "s", Target: "median <= 1 s for every kind",
		Baseline: base, BaselineWhat: "a host on the WAN itself, same run", Ratio: worst / base,
		Pass: worst <= 1,
		How: fmt.Sprintf("NAT lab (netlab.DefaultNATMatrix plus a second public host): one host of each kind joins with a fresh state dir and token, alone; "+
			"time from `meshd peer up` start to the first UDP echo from pub1's overlay address (probes every 10 ms); %d runs per kind; value: the slowest kind's median (%s)", natJoinRuns, worstKind),
		Extra: map[string]any{"per_kind": perKind},
	}, nil
}

// matrixFigure is the matrix's reachability and direct share.
func matrixFigure(res []meshlab.PairResult) *Figure {
	s := meshlab.Summarize(res)
	var wrong []string
	for _, p := range s.Wrong {
		wrong = append(wrong, p.String())
	}
	var direct time.Duration // when the last pair that must be direct was
	for _, p := range res {
		if p.WantDirect {
			direct = max(direct, p.DirectAfter)
		}
	}
	return &Figure{
		Value: float64(s.Reached) / float64(s.Ordered), Unit: "of ordered pairs reached", Target: "1 (every pair), direct exactly where possible",
		Pass: s.Reached == s.Ordered && len(s.Wrong) == 0,
		How: fmt.Sprintf("NAT lab: all %d hosts but pub1 join at once; every ordered pair sends UDP to an echo server on the other's overlay address until it answers (60 s deadline); "+
			"both sides' `meshd status` must show direct where netlab.DirectPathPossible says so and relay elsewhere", len(res)+1),
		Extra: map[string]any{"direct_pairs": s.Direct, "must_be_direct": s.WantDirect, "pairs": s.Pairs,
			"direct_share": float64(s.Direct) / float64(s.Pairs), "wrong": wrong,
			"all_direct_pairs_seen_direct_after_s": direct.Seconds()},
	}
}

// natTimeToDirect times how long two fresh peers behind port-preserving
// NATs take to show each other as direct, both sides, from the start of
// their agents.
func natTimeToDirect(l *meshlab.Lab) (*Figure, error) {
	pair := []string{"pp1", "pp2"}
	var secs []float64
	for range natJoinRuns {
		for _, h := range pair {
			if err := freshPeer(l, h); err != nil {
				return nil, err
			}
		}
		var toks []string
		for range pair {
			tok, err := l.Token()
			if err != nil {
				return nil, err
			}
			toks = append(toks, tok)
		}
		for i, h := range pair {
			if err := l.StartPeer(h, toks[i]); err != nil {
				return nil, err
			}
		}
		start := l.Started[pair[0]]
		deadline := start.Add(30 * time.Second)
		for {
			// Status fails until an agent's socket is up.
			sa, erra := l.Status(pair[0])
			sb, errb := l.Status(pair[1])
			if erra == nil && errb == nil {
				pa, _ := meshlab.PeerPath(sa, pair[1])
				pb, _ := meshlab.PeerPath(sb, pair[0])
				if pa == api.PathDirect && pb == api.PathDirect {
					secs = append(secs, time.Since(start).Seconds())
					break
				}
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("pp1 and pp2 not direct within 30 s of their start (%v, %v)", erra, errb)
			}
			time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
		}
		for _, h := range pair {
			if err := freshPeer(l, h); err != nil {
				return nil, err
			}
		}
	}
	return &Figure{
		Value: median(secs), Unit: "s (median)", Target: "report", Pass: true,
		How:   fmt.Sprintf("pp1 and pp2, each behind a port-preserving NAT, join at once with fresh state and no traffic of their own; time from the start of their agents until both statuses show the other as direct (polled every 20 ms plus the time to read them); %d runs", natJoinRuns),
		Extra: map[string]any{"runs_s": secs, "max_s": slices.Max(secs)},
	}, nil
}

// waitBothPaths polls pp1 and pp2 until each shows the other on path want.
func waitBothPaths(l *meshlab.Lab, want string, d time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		sa, err := l.Status("pp1")
		if err != nil {
			return 0, err
		}
		sb, err := l.Status("pp2")
		if err != nil {
			return 0, err
		}
		pa, _ := meshlab.PeerPath(sa, "pp2")
		pb, _ := meshlab.PeerPath(sb, "pp1")
		if pa == want && pb == want {
			return time.Since(start), nil
		}
		if time.Since(start) > d {
			return 0, fmt.Errorf("pp1 and pp2 not both %s within %s (pp1 shows %q, pp2 %q)", want, d, pa, pb)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// natPathSwitch cuts and restores UDP between pp1's and pp2's routers
// under 100 pps pings both ways, a few times.
func natPathSwitch(l *meshlab.Lab) (*Figure, error) {
	h1, h2 := l.NAT.Host("pp1"), l.NAT.Host("pp2")
	ip := map[string]string{}
	for _, h := range []string{"pp1", "pp2"} {
		st, err := l.Status(h)
		if err != nil {
			return nil, err
		}
		ip[h] = st.Self.OverlayIP
	}
	// streams pings both ways at 100 pps for d around fn and returns the
	// packets lost and the longest gap of the two.
	streams := func(d time.Duration, fn func() error) (lost int, gap time.Duration, err error) {
		a, err := l.StartPing("pp1", ip["pp2"], d)
		if err != nil {
			return 0, 0, err
		}
		b, err := l.StartPing("pp2", ip["pp1"], d)
		if err != nil {
			return 0, 0, err
		}
		time.Sleep(time.Second) // steady traffic first
		ferr := fn()
		for _, p := range []*meshlab.PingStream{a, b} {
			g, sent, recv := p.Wait()
			lost += sent - recv
			gap = max(gap, g)
		}
		return lost, gap, ferr
	}
	var cutGaps, cutLost, liftLost, toRelay, toDirect []float64
	if _, err := waitBothPaths(l, api.PathDirect, 10*time.Second); err != nil {
		return nil, err
	}
	for range natSwitchTrials {
		var took time.Duration
		lost, gap, err := streams(5*time.Second, func() error {
			if err := l.BlockUDP(h1.Router, h2.WAN); err != nil {
				return err
			}
			if err := l.FlushUDPConntrack(h2.Router); err != nil {
				return err
			}
			var err error
			took, err = waitBothPaths(l, api.PathRelay, 5*time.Second)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("cut: %w", err)
		}
		cutGaps, cutLost, toRelay = append(cutGaps, gap.Seconds()), append(cutLost, float64(lost)), append(toRelay, took.Seconds())
		lost, _, err = streams(8*time.Second, func() error {
			if err := l.UnblockUDP(h1.Router); err != nil {
				return err
			}
			var err error
			took, err = waitBothPaths(l, api.PathDirect, 6*time.Second)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("lift: %w", err)
		}
		liftLost, toDirect = append(liftLost, float64(lost)), append(toDirect, took.Seconds())
	}
	gap := median(cutGaps)
	return &Figure{
		Value: gap, Unit: "s (median gap, direct path cut)", Target: "cut: gap <= 1.5 s; relay to direct: 0 lost",
		Pass: slices.Max(cutGaps) <= 1.5 && slices.Max(liftLost) == 0,
		How: fmt.Sprintf("pp1 and pp2 (port-preserving NATs) ping each other at 100 pps both ways; UDP between their routers is dropped and their UDP conntrack flushed (the pair falls back to the relay), "+
			"then allowed again (the pair moves back to direct); %d trials; gap is the longest interval without a reply in either stream", natSwitchTrials),
		Extra: map[string]any{"cut_gaps_s": cutGaps, "cut_lost_packets": cutLost, "cut_to_relay_s": toRelay,
			"relay_to_direct_lost_packets": liftLost, "relay_to_direct_s": toDirect},
	}, nil
}

// natIperf runs one TCP stream pp1 -> pp2 over the direct path and over
// the relay (UDP between their routers dropped), alternated.
func natIperf(l *meshlab.Lab) (*Figure, error) {
	h1, h2 := l.NAT.Host("pp1"), l.NAT.Host("pp2")
	st, err := l.Status("pp2")
	if err != nil {
		return nil, err
	}
	// What the routers themselves carry: pp1 to pub1's WAN address,
	// through one NAT, no tunnel.
	raw, err := iperfTCP(l.Net, "pp1", "pub1", l.NAT.Host("pub1").Addr, natIperfFor)
	if err != nil {
		return nil, err
	}
	var directs, relays []float64
	for range natIperfRounds {
		if _, err := waitBothPaths(l, api.PathDirect, 10*time.Second); err != nil {
			return nil, err
		}
		d, err := iperfTCP(l.Net, "pp1", "pp2", st.Self.OverlayIP, natIperfFor)
		if err != nil {
			return nil, err
		}
		if err := l.BlockUDP(h1.Router, h2.WAN); err != nil {
			return nil, err
		}
		if _, err := waitBothPaths(l, api.PathRelay, 10*time.Second); err != nil {
			return nil, err
		}
		r, err := iperfTCP(l.Net, "pp1", "pp2", st.Self.OverlayIP, natIperfFor)
		if err != nil {
			return nil, err
		}
		if err := l.UnblockUDP(h1.Router); err != nil {
			return nil, err
		}
		directs, relays = append(directs, d), append(relays, r)
	}
	d, r := median(directs), median(relays)
	return &Figure{
		Value: r, Unit: "Gbit/s", Target: "ratio >= 0.5",
		Baseline: d, BaselineWhat: "the direct path, same veths", Ratio: r / d, Pass: r/d >= 0.5,
		How:   fmt.Sprintf("one iperf3 TCP stream pp1 -> pp2 for %s over the punched direct path and through the coordinators' TURN relay (UDP between the two routers dropped; relays run with --relay-bandwidth 0), alternated %d times, medians", natIperfFor, natIperfRounds),
		Extra: map[string]any{"direct_runs": directs, "relay_runs": relays, "raw_through_one_nat_gbit_s": raw},
	}, nil
}

// Command bench measures meshd's figures (SPEC.md, "How it is measured") on
// this machine, each beside a baseline measured in the same run, prints one
// table and merges the figures into bench/results.json.
//
//	go run ./e2e/bench [-only NAME,...] [-out bench/results.json]
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

// Figure is one measured value with its baseline.
type Figure struct {
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Target   string  `json:"target"`
	Baseline float64 `json:"baseline,omitempty"`
	// BaselineWhat says what the baseline is.
	BaselineWhat string         `json:"baseline_what,omitempty"`
	Ratio        float64        `json:"ratio,omitempty"`
	Pass         bool           `json:"pass"`
	How          string         `json:"how"`
	Extra        map[string]any `json:"extra,omitempty"`
	MeasuredAt   time.Time      `json:"measured_at"`
}

// bench measures one figure (run), or several from one setup (many: the
// figures by name; -only takes the bench's name).
type bench struct {
	name string
	run  func(ctx context.Context, dir string) (*Figure, error)
	many func(ctx context.Context, dir string) (map[string]*Figure, error)
}

func main() {
	only := flag.String("only", "", "comma-separated figure names to run (default all)")
	out := flag.String("out", "", "results file (default REPO/bench/results.json)")
	flag.Parse()
	benches := []bench{
		{"write_throughput", writeThroughput, nil},
		{"leader_failover_write_outage", leaderFailover, nil},
		{"rolling_upgrade_outage", rollingUpgrade, nil},
		{"join_to_first_packet", joinToFirstPacket, nil},
		{"data_plane_tcp", dataPlane, nil},
		{"data_plane_policy", dataPlanePolicy, nil},
		{"agent_rss_20_peers", agentMemory, nil},
		{"failover_gap_sigkill", failoverKill, nil},
		{"failover_gap_sigkill_coordinators_down", failoverHeadless, nil},
		{"failover_gap_zombie_and_link_cut", failoverFaults, nil},
		{"health_traffic", healthTraffic, nil},
		{"map_fanout_policy_1000", fanoutPolicy, nil},
		{"nat", nil, natFigures},
		{"metrics", nil, metricsOverhead},
	}
	root, err := harness.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *out == "" {
		*out = filepath.Join(root, "bench", "results.json")
	}
	results := map[string]*Figure{}
	if b, err := os.ReadFile(*out); err == nil {
		json.Unmarshal(b, &results)
	}
	ctx := context.Background()
	failed := false
	for _, b := range benches {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), b.name) {
			continue
		}
		dir, err := os.MkdirTemp("", "meshd-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "measuring %s ...\n", b.name)
		figs := map[string]*Figure{}
		if b.many != nil {
			figs, err = b.many(ctx, dir)
		} else {
			figs[b.name], err = b.run(ctx, dir)
		}
		if os.Getenv("MESHD_BENCH_KEEP") != "" {
			fmt.Fprintln(os.Stderr, "kept", dir)
		} else {
			os.RemoveAll(dir)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", b.name, err)
			failed = true
			continue
		}
		for name, f := range figs {
			f.MeasuredAt = time.Now().UTC()
			results[name] = f
		}
	}
	data, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: encode results:", err)
		os.Exit(1)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		os.WriteFile(*out, append(data, '\n'), 0o644)
	}
	printTable(results)
	if failed {
		os.Exit(1)
	}
}

func printTable(results map[string]*Figure) {
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FIGURE\tVALUE\tTARGET\tBASELINE (same run)\tRATIO\tPASS")
	for _, n := range names {
		f := results[n]
		base := "-"
		if f.BaselineWhat != "" {
			base = fmt.Sprintf("%.3g %s (%s)", f.Baseline, f.Unit, f.BaselineWhat)
		}
		ratio := "-"
		if f.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f", f.Ratio)
		}
		fmt.Fprintf(w, "%s\t%.4g %s\t%s\t%s\t%s\t%t\n", n, f.Value, f.Unit, f.Target, base, ratio, f.Pass)
	}
	w.Flush()
}

func startCluster(ctx context.Context, dir string, size int) (*harness.Cluster, error) {
	c, err := harness.NewCluster(dir, size)
	if err != nil {
		return nil, err
	}
	if err := c.StartAll(); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.WaitLeader(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.WaitReady(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func wgKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// joinRate joins peers with workers concurrent clients for d and returns
// joins per second.
func joinRate(ctx context.Context, c *harness.Cluster, workers int, d time.Duration) (float64, int64, error) {
	admin, err := c.Admin()
	if err != nil {
		return 0, 0, err
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1_000_000}, &tok); err != nil {
		return 0, 0, err
	}
	t, err := token.ParseKind(tok.Token, token.KindJoin)
	if err != nil {
		return 0, 0, err
	}
	urls := c.URLs()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			order := append(slices.Clone(urls[w%len(urls):]), urls[:w%len(urls)]...)
			cl := apiclient.New(order, t.Pin, "")
			for i := 0; ctx.Err() == nil; i++ {
				req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: fmt.Sprintf("w%d-%d", w, i), PublicKey: wgKey(), OmitMap: true}
				var resp api.JoinResponse
				if err := cl.Do(ctx, http.MethodPost, "/v1/join", req, &resp); err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if e := firstErr.Load(); e != nil && failed.Load() > ok.Load()/100 {
		return 0, failed.Load(), fmt.Errorf("%d joins failed, e.g. %v", failed.Load(), e)
	}
	return float64(ok.Load()) / el.Seconds(), failed.Load(), nil
}

func writeThroughput(ctx context.Context, dir string) (*Figure, error) {
	const workers, dur = 128, 5 * time.Second
	single, err := startCluster(ctx, filepath.Join(dir, "single"), 1)
	if err != nil {
		return nil, err
	}
	base, _, err := joinRate(ctx, single, workers, dur)
	single.Close()
	if err != nil {
		return nil, fmt.Errorf("single node: %w", err)
	}
	three, err := startCluster(ctx, filepath.Join(dir, "three"), 3)
	if err != nil {
		return nil, err
	}
	defer three.Close()
	rate, failed, err := joinRate(ctx, three, workers, dur)
	if err != nil {
		return nil, fmt.Errorf("three nodes: %w", err)
	}
	return &Figure{
		Value: rate, Unit: "joins/s", Target: ">= 2000 joins/s",
		Baseline: base, BaselineWhat: "single-node cluster", Ratio: rate / base, Pass: rate >= 2000,
		How:   fmt.Sprintf("%d concurrent clients POST /v1/join (unique names, fresh keys, map left to the watch as the agent does) spread over the 3 coordinators of a loopback cluster of real processes with TLS, for %s; one token with many uses", workers, dur),
		Extra: map[string]any{"failed_joins": failed},
	}, nil
}

// writeGaps writes a token every 10 ms and returns the longest gap between
// two acknowledged writes while fn runs (plus settle afterwards).
func writeGaps(ctx context.Context, admin *apiclient.Client, fn func() error, settle time.Duration) (time.Duration, error) {
	stop := make(chan struct{})
	var mu sync.Mutex
	last := time.Now()
	var longest time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var wg sync.WaitGroup
		for {
			select {
			case <-stop:
				wg.Wait()
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if admin.Do(wctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil) == nil {
					now := time.Now()
					mu.Lock()
					if g := now.Sub(last); g > longest {
						longest = g
					}
					if now.After(last) {
						last = now
					}
					mu.Unlock()
				}
			}()
		}
	}()
	err := fn()
	time.Sleep(settle) // the measurement window after the event, not a wait for a condition
	close(stop)
	<-done
	return longest, err
}

func leaderFailover(ctx context.Context, dir string) (*Figure, error) {
	c, err := startCluster(ctx, dir, 3)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	admin, err := c.Admin()
	if err != nil {
		return nil, err
	}
	baseline, err := writeGaps(ctx, admin, func() error { return nil }, 3*time.Second)
	if err != nil {
		return nil, err
	}
	const trials = 5
	var gaps []time.Duration
	for range trials {
		leader, err := c.WaitLeader(ctx, 20*time.Second)
		if err != nil {
			return nil, err
		}
		gap, err := writeGaps(ctx, admin, func() error {
			time.Sleep(500 * time.Millisecond) // steady writes before the kill
			leader.Proc.Kill()
			_, err := c.WaitLeader(ctx, 20*time.Second)
			return err
		}, 1500*time.Millisecond)
		if err != nil {
			return nil, err
		}
		gaps = append(gaps, gap)
		if err := c.Start(leader); err != nil {
			return nil, err
		}
		if err := c.WaitReady(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	slices.Sort(gaps)
	med, max := gaps[len(gaps)/2], gaps[len(gaps)-1]
	var ms []float64
	for _, g := range gaps {
		ms = append(ms, float64(g.Milliseconds())/1000)
	}
	return &Figure{
		Value: max.Seconds(), Unit: "s", Target: "<= 1.5 s",
		Baseline: baseline.Seconds(), BaselineWhat: "longest gap with no kill",
		Pass:  max <= 1500*time.Millisecond,
		How:   fmt.Sprintf("token creations every 10 ms against all 3 coordinators (client fails over); SIGKILL the leader; longest gap between acknowledged writes; %d trials, value is the max", trials),
		Extra: map[string]any{"median_s": med.Seconds(), "trials_s": ms},
	}, nil
}

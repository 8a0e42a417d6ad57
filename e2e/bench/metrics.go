package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/pkg/metrics"
)

// Metrics overhead: two flat labs run side by side, the same peers and
// the same coordinators, one with every coordinator and agent serving
// metrics (--metrics-listen) and scraped every second, one without. Both
// are measured over the same window, so whatever else the machine does
// weighs on both alike.
const (
	metricsSettle     = 10 * time.Second
	metricsWindow     = 60 * time.Second
	metricsEvery      = time.Second
	metricsCoordPort  = "9100"
	metricsAgentAddr  = "127.0.0.1:9101"
	clockTicksPerSecs = 100 // USER_HZ on Linux
)

// procUsage is a process's CPU time (seconds) and RSS (KiB) now.
func procUsage(pid int) (cpu float64, rss int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	if len(f) < 13 {
		return 0, 0, errors.New("short /proc/PID/stat")
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	rss, err = rssKiB(pid)
	return (u + sy) / clockTicksPerSecs, rss, err
}

// labUsage is the mean CPU (percent of one core) and mean RSS (MiB) of a
// lab's coordinators and of its agents over a window.
type labUsage struct {
	coordCPU, coordRSS, agentCPU, agentRSS float64
}

// measureLabs samples every process of each lab at the start and the end
// of the window.
func measureLabs(labs []*meshlab.Lab, window time.Duration) ([]labUsage, error) {
	start := make([]map[string]float64, len(labs))
	for i, l := range labs {
		start[i] = map[string]float64{}
		for name, p := range l.Procs {
			cpu, _, err := procUsage(p.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			start[i][name] = cpu
		}
	}
	t0 := time.Now()
	time.Sleep(window) // the measured window
	elapsed := time.Since(t0).Seconds()
	out := make([]labUsage, len(labs))
	for i, l := range labs {
		var nc, na float64
		for name, p := range l.Procs {
			if p.Exited() {
				return nil, fmt.Errorf("%s exited during the window: %v", name, p.Err())
			}
			cpu, rss, err := procUsage(p.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			pct := (cpu - start[i][name]) / elapsed * 100
			mib := float64(rss) / 1024
			if isCoordinator(l, name) {
				out[i].coordCPU += pct
				out[i].coordRSS += mib
				nc++
			} else {
				out[i].agentCPU += pct
				out[i].agentRSS += mib
				na++
			}
		}
		if nc == 0 || na == 0 {
			return nil, errors.New("a lab without coordinators or agents")
		}
		out[i].coordCPU /= nc
		out[i].coordRSS /= nc
		out[i].agentCPU /= na
		out[i].agentRSS /= na
	}
	return out, nil
}

// scrapeLoop scrapes every coordinator and agent of l each second until
// ctx is done, counting scrapes and failures.
func scrapeLoop(ctx context.Context, l *meshlab.Lab) (ok, failed *int) {
	ok, failed = new(int), new(int)
	var mu sync.Mutex
	type target struct{ ns, url string }
	var targets []target
	for _, c := range l.Coordinators {
		targets = append(targets, target{c.Name, "http://" + c.WAN + ":" + metricsCoordPort + metrics.Path})
	}
	for name := range l.Procs {
		if !isCoordinator(l, name) {
			targets = append(targets, target{name, "http://" + metricsAgentAddr + metrics.Path})
		}
	}
	for _, tg := range targets {
		hc := &http.Client{Transport: &http.Transport{DialContext: l.Net.DialContext(tg.ns)}, Timeout: 2 * time.Second}
		go func() {
			defer hc.CloseIdleConnections()
			tick := time.NewTicker(metricsEvery)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				err := scrapeOnce(ctx, hc, tg.url)
				mu.Lock()
				if err != nil {
					*failed++
				} else {
					*ok++
				}
				mu.Unlock()
			}
		}()
	}
	return ok, failed
}

func scrapeOnce(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	fams, err := metrics.Parse(resp.Body)
	if err != nil {
		return err
	}
	if len(fams) == 0 {
		return errors.New("empty scrape")
	}
	return nil
}

// metricsOverhead measures coordinators and agents with metrics on
// (scraped every second) against off, in the same window.
func metricsOverhead(ctx context.Context, dir string) (map[string]*Figure, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the metrics overhead needs root (network namespaces)")
	}
	bin, err := harness.Binary()
	if err != nil {
		return nil, err
	}
	agentArgs := map[string][]string{}
	for _, p := range meshlab.Peers {
		agentArgs[p.Name] = []string{"--metrics-listen", metricsAgentAddr}
	}
	off, err := meshlab.Start(ctx, meshlab.Options{Prefix: "mbo-", IfPrefix: "mbo-", Dir: filepath.Join(dir, "off"), Bin: bin})
	if err != nil {
		return nil, fmt.Errorf("lab without metrics: %w", err)
	}
	defer off.Close()
	on, err := meshlab.Start(ctx, meshlab.Options{Prefix: "mbn-", IfPrefix: "mbn-", Dir: filepath.Join(dir, "on"), Bin: bin,
		CoordinatorArgs: []string{"--metrics-listen", ":" + metricsCoordPort}, PeerArgs: agentArgs})
	if err != nil {
		return nil, fmt.Errorf("lab with metrics: %w", err)
	}
	defer on.Close()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	ok, failed := scrapeLoop(sctx, on)
	time.Sleep(metricsSettle) // both labs settle (joins, handshakes, first scrapes) before the window
	use, err := measureLabs([]*meshlab.Lab{off, on}, metricsWindow)
	stop()
	if err != nil {
		return nil, err
	}
	if *ok == 0 || *failed > *ok/100 {
		return nil, fmt.Errorf("scrapes: %d answered, %d failed", *ok, *failed)
	}
	uOff, uOn := use[0], use[1]
	how := fmt.Sprintf("two flat labs side by side (3 coordinators, 5 agents each), measured over the same %s window after %s to settle; "+
		"one serves metrics on every coordinator and agent (--metrics-listen), each scraped every %s (%d scrapes), the other does not; mean per process, CPU as %% of one core from /proc/PID/stat, VmRSS at the end",
		metricsWindow, metricsSettle, metricsEvery, *ok)
	fig := func(on, off float64, unit string) *Figure {
		f := &Figure{Value: on, Unit: unit, Target: "report", Baseline: off, BaselineWhat: "metrics off", Pass: true, How: how}
		if off > 0 {
			f.Ratio = on / off
		}
		return f
	}
	return map[string]*Figure{
		"metrics_coordinator_cpu": fig(uOn.coordCPU, uOff.coordCPU, "%"),
		"metrics_coordinator_rss": fig(uOn.coordRSS, uOff.coordRSS, "MiB"),
		"metrics_agent_cpu":       fig(uOn.agentCPU, uOff.agentCPU, "%"),
		"metrics_agent_rss":       fig(uOn.agentRSS, uOff.agentRSS, "MiB"),
	}, nil
}

func isCoordinator(l *meshlab.Lab, name string) bool {
	for _, c := range l.Coordinators {
		if c.Name == name {
			return true
		}
	}
	return false
}

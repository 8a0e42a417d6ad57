package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/meshd/meshd/e2e/harness"
)

// fanoutPolicy runs the coordinator's fan-out benchmark at 1,000 peers and
// 1,000 watchers (coordinator/fanout_bench_test.go), without a policy and
// with one that lets each peer see 10% of the others, and reports the map
// sizes and times it prints.
func fanoutPolicy(ctx context.Context, _ string) (*Figure, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkFanout1000$", "-benchtime", "5x", "./coordinator")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %v\n%s", err, out)
	}
	res := map[string]map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkFanout1000/") {
			continue
		}
		name := strings.TrimPrefix(f[0], "BenchmarkFanout1000/")
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i]
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[f[i+1]] = v
			}
		}
		res[name] = m
	}
	open, pol := res["no-policy/full-map"], res["policy-10pct/full-map"]
	if open == nil || pol == nil {
		return nil, fmt.Errorf("no figures in:\n%s", out)
	}
	return &Figure{
		Value: pol["bytes/map"] / 1024, Unit: "KiB (a full map, 1,000 peers, each seeing 10%)", Target: "report",
		Baseline: open["bytes/map"] / 1024, BaselineWhat: "the same map without a policy", Ratio: pol["bytes/map"] / open["bytes/map"], Pass: true,
		How:   "coordinator/fanout_bench_test.go BenchmarkFanout1000 (in process, no TLS or sockets): 1,000 peers and 1,000 watchers, no policy and a policy of 10 tag groups; ns/op of a full map, an endpoint change's round, a join's round and a policy change's round (full maps to every watcher); the full maps carry the policy document",
		Extra: map[string]any{"rounds": res},
	}, nil
}

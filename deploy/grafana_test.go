package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/peer"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// metricName finds what may be a metric name in a PromQL expression: an
// identifier of one of the families meshd serves. Label names and
// functions never start with these prefixes.
var metricName = regexp.MustCompile(`\b(?:meshd|process|go)_[a-zA-Z0-9_]+`)

// TestGrafanaDashboard: deploy/grafana/meshd.json decodes, every panel
// queries something, and every metric name it uses is one a coordinator or
// an agent registers (a renamed metric fails here, not on a dashboard that
// silently goes blank).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/meshd.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("decode grafana/meshd.json: %v", err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard has title %q and uid %q; want both", d.Title, d.UID)
	}
	known := map[string]bool{}
	for _, n := range append(coordinator.MetricNames(), peer.MetricNames()...) {
		known[n] = true
	}
	// A histogram's series carry suffixes.
	registered := func(name string) bool {
		if known[name] {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && known[base] {
				return true
			}
		}
		return false
	}
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, name := range metricName.FindAllString(expr, -1) {
			used[name] = true
			if !registered(name) {
				t.Errorf("%s uses %s, which neither coordinators nor agents register", where, name)
			}
		}
	}
	for _, v := range d.Templating.List {
		check("variable "+v.Name, v.Definition)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			check("panel "+p.Title, tg.Expr)
			queries++
		}
	}
	// The dashboard shows both sides: each family the issue asks for is on it.
	for _, name := range []string{
		"meshd_coordinator_raft_state", "meshd_coordinator_raft_term", "meshd_coordinator_raft_commit_seconds_bucket",
		"meshd_coordinator_raft_apply_seconds_bucket", "meshd_coordinator_raft_log_entries", "meshd_coordinator_watchers",
		"meshd_coordinator_fanout_rounds_total", "meshd_coordinator_fanout_lag_seconds_bucket", "meshd_coordinator_joins_total",
		"meshd_coordinator_tokens", "meshd_coordinator_http_requests_total",
		"meshd_agent_peer_handshake_age_seconds", "meshd_agent_peer_rx_bytes_total", "meshd_agent_peer_path", "meshd_agent_peer_rtt_seconds",
		"meshd_agent_route_active_gateway", "meshd_agent_failovers_total", "meshd_agent_peer_health", "meshd_agent_map_index",
	} {
		if !used[name] {
			t.Errorf("the dashboard does not show %s", name)
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	slices.Sort(names)
	t.Logf("%d queries use %d metric names: %s", queries, len(names), strings.Join(names, " "))
}

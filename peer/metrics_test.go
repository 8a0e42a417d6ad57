package peer

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/pkg/metrics"
)

func TestHealthWord(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	ok := health.State{Alive: true, LANOK: true, Forwarding: true}
	for _, tt := range []struct {
		name  string
		steps []map[string]health.State // observed one second apart
		want  string
	}{
		{name: "never heard of", want: healthUnknown},
		{name: "reported OK", steps: []map[string]health.State{{"a1": ok}}, want: healthHealthy},
		{name: "reported dead", steps: []map[string]health.State{{"a1": ok}, {"a1": {}}}, want: healthUnhealthy},
		{name: "LAN down", steps: []map[string]health.State{{"a1": {Alive: true, Forwarding: true}}}, want: healthUnhealthy},
		{name: "back inside the hold-down", steps: []map[string]health.State{{"a1": ok}, {"a1": {}}, {"a1": ok}}, want: healthHolding},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := newHealthView(holdDown)
			at := now
			for _, s := range tt.steps {
				v.observe(s, at)
				at = at.Add(time.Second)
			}
			if got := v.healthWord("a1", at); got != tt.want {
				t.Errorf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// scrapeAgent GETs the agent's metrics listener and decodes the answer.
func scrapeAgent(t *testing.T, addr string) metrics.Families {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	fams, err := metrics.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func TestAgentMetrics(t *testing.T) {
	s := newSite(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s.mod = func(id string, cfg *Config) {
		if id == "c1" {
			cfg.MetricsListener = ln
		}
	}
	cl := s.start("c1")
	cl.hl.Alive("a1")
	cl.hl.Alive("a2")
	cl.hears(t, "a1", "a2")
	waitFor(t, "the client to send the site to gwa1", func() bool { return s.carrier(cl) == "gwa1" })
	cl.eng.SetStats(s.keys["a1"], s.clk.Now().Add(-5*time.Second), 1000, 2000)

	m := scrapeAgent(t, addr)
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"meshd_agent_info", []string{"name", "cl1", "vnet", "default", "overlay_ip", "100.96.0.9", "role", "client"}, 1},
		{"meshd_agent_map_index", nil, 10},
		{"meshd_agent_peers", nil, 2},
		{"meshd_agent_peer_rx_bytes_total", []string{"peer", "gwa1"}, 1000},
		{"meshd_agent_peer_tx_bytes_total", []string{"peer", "gwa1"}, 2000},
		{"meshd_agent_peer_handshake_age_seconds", []string{"peer", "gwa1"}, 5},
		{"meshd_agent_peer_online", []string{"peer", "gwa1"}, 1},
		{"meshd_agent_peer_online", []string{"peer", "gwa2"}, 0}, // no handshake yet
		{"meshd_agent_peer_health", []string{"peer", "gwa1", "state", "healthy"}, 1},
		{"meshd_agent_peer_health", []string{"peer", "gwa1"}, 1}, // exactly one state
		{"meshd_agent_route_active_gateway", []string{"prefix", "192.168.10.0/24", "gateway", "gwa1"}, 1},
		{"meshd_agent_route_active_gateway", nil, 1},
		{"meshd_agent_failovers_total", nil, 0},
		{"process_resident_memory_bytes", nil, -1}, // present
	} {
		got := m.Sum(tt.name, tt.labels...)
		if tt.want < 0 {
			if len(m.Series(tt.name)) == 0 {
				t.Errorf("%s missing", tt.name)
			}
			continue
		}
		if len(m.Series(tt.name, tt.labels...)) == 0 || got != tt.want {
			t.Errorf("%s%v = %v (%d series); want %v", tt.name, tt.labels, got, len(m.Series(tt.name, tt.labels...)), tt.want)
		}
	}
	if n := len(m.Series("meshd_agent_peer_path", "peer", "gwa1")); n != 2 {
		t.Errorf("path series of gwa1: %d; want 2 (direct, relay)", n)
	}
	if n := len(m.Series("meshd_agent_peer_handshake_age_seconds", "peer", "gwa2")); n != 0 {
		t.Errorf("gwa2 never handshook but has a handshake age")
	}

	// gwa1 dies: the route fails over, which the counter and the route's
	// gateway show, and gwa1 is unhealthy and offline.
	cl.hl.Dead("a1")
	waitFor(t, "the route to move to gwa2", func() bool { return s.carrier(cl) == "gwa2" })
	m = scrapeAgent(t, addr)
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"meshd_agent_failovers_total", nil, 1},
		{"meshd_agent_route_active_gateway", []string{"prefix", "192.168.10.0/24", "gateway", "gwa2"}, 1},
		{"meshd_agent_route_active_gateway", nil, 1},
		{"meshd_agent_peer_health", []string{"peer", "gwa1", "state", "unhealthy"}, 1},
		{"meshd_agent_peer_health", []string{"peer", "gwa1"}, 1},
		{"meshd_agent_peer_online", []string{"peer", "gwa1"}, 0},
	} {
		if got := m.Sum(tt.name, tt.labels...); got != tt.want {
			t.Errorf("after the failover: %s%v = %v; want %v", tt.name, tt.labels, got, tt.want)
		}
	}

	// Back, but held down.
	cl.hl.Alive("a1")
	waitFor(t, "the client to hear gwa1 again", func() bool { st, _ := cl.heard(t, "a1"); return st.OK() })
	m = scrapeAgent(t, addr)
	if got := m.Sum("meshd_agent_peer_health", "peer", "gwa1", "state", "holding"); got != 1 {
		t.Errorf("gwa1 back inside its hold-down: holding = %v; want 1", got)
	}

	// The listener goes with the agent.
	cl.stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the metrics listener still accepts after Run returned")
	}
}

// TestAgentMetricNames checks MetricNames against what the collector
// describes.
func TestAgentMetricNames(t *testing.T) {
	names := map[string]bool{}
	for _, n := range MetricNames() {
		names[n] = true
	}
	for _, n := range []string{"meshd_agent_peer_handshake_age_seconds", "meshd_agent_failovers_total", "meshd_agent_route_active_gateway", "process_cpu_seconds_total"} {
		if !names[n] {
			t.Errorf("MetricNames lacks %s", n)
		}
	}
}

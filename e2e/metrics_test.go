package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/metrics"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// Ports of the lab's metrics listeners.
const (
	labCoordMetricsPort = 9100
	labAgentMetricsAddr = "127.0.0.1:9101"
)

// scrapeIn GETs url from inside namespace ns (with the bearer credential
// auth, when given) and decodes the answer; it returns the status too.
func scrapeIn(l *meshlab.Lab, ns, url, auth string, pin *[32]byte) (metrics.Families, int, error) {
	tr := &http.Transport{DialContext: l.Net.DialContext(ns)}
	if pin != nil {
		tr.TLSClientConfig = tlspin.ClientConfig(*pin)
	}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode, nil
	}
	fams, err := metrics.Parse(resp.Body)
	return fams, resp.StatusCode, err
}

// TestMetricsLab scrapes a running lab: every coordinator on its plain
// metrics listener and on the API (admin credential), and the client's
// agent, and follows a gateway failover in the client's metrics.
func TestMetricsLab(t *testing.T) {
	o := labOptions(t, meshlab.Options{
		Peers:           []string{"gwa1", "gwa2", "cl1"},
		CoordinatorArgs: []string{"--metrics-listen", fmt.Sprintf(":%d", labCoordMetricsPort)},
		PeerArgs: map[string][]string{
			"gwa1": {"--metrics-listen", labAgentMetricsAddr},
			"gwa2": {"--metrics-listen", labAgentMetricsAddr},
			"cl1":  {"--metrics-listen", labAgentMetricsAddr},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := meshlab.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	closeLabAtEnd(t, l)

	// Coordinators: one leader in the cluster, each node in exactly one
	// state, the three agents' streams open somewhere.
	poll(t, 20*time.Second, "the coordinators' metrics to show one leader, three watchers and the joins", func() error {
		var leaders, watchers, joins float64
		for _, c := range l.Coordinators {
			m, code, err := scrapeIn(l, c.Name, fmt.Sprintf("http://%s:%d/metrics", c.WAN, labCoordMetricsPort), "", nil)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%s: %d %v", c.Name, code, err)
			}
			if n := m.Sum("meshd_coordinator_raft_state"); n != 1 {
				return fmt.Errorf("%s: %v raft states at 1; want 1", c.Name, n)
			}
			if idx := m.Sum("meshd_coordinator_raft_applied_index"); idx < 1 {
				return fmt.Errorf("%s: applied index %v", c.Name, idx)
			}
			leaders += m.Sum("meshd_coordinator_raft_state", "state", "leader")
			watchers += m.Sum("meshd_coordinator_watchers")
			joins += m.Sum("meshd_coordinator_joins_total", "result", "ok")
		}
		if leaders != 1 || watchers != 3 || joins < 3 {
			return fmt.Errorf("%v leaders, %v watchers, %v joins; want 1, 3 and at least 3", leaders, watchers, joins)
		}
		return nil
	})

	// The API's /metrics: refused without a credential, served with the
	// admin one.
	admin, err := l.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.ParseKind(admin, token.KindAdmin)
	if err != nil {
		t.Fatal(err)
	}
	c1 := l.Coordinators[0]
	api := "https://" + c1.WAN + ":8443/metrics"
	if _, code, err := scrapeIn(l, c1.Name, api, "", &tok.Pin); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("API /metrics without a credential: %d %v; want 401", code, err)
	}
	m, code, err := scrapeIn(l, c1.Name, api, admin, &tok.Pin)
	if err != nil || code != http.StatusOK {
		t.Fatalf("API /metrics with the admin credential: %d %v; want 200", code, err)
	}
	if got := m.Sum("meshd_coordinator_peers", "vnet", "default", "online", "true"); got != 3 {
		t.Errorf("online peers %v; want 3", got)
	}

	// The client's agent: both gateways handshaken, the site through gwa1.
	agent := "http://" + labAgentMetricsAddr + "/metrics"
	poll(t, 20*time.Second, "cl1's metrics to show both gateways and the site through gwa1", func() error {
		m, code, err := scrapeIn(l, "cl1", agent, "", nil)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("%d %v", code, err)
		}
		if got := m.Sum("meshd_agent_peers"); got != 2 {
			return fmt.Errorf("peers %v; want 2", got)
		}
		for _, gw := range []string{"gwa1", "gwa2"} {
			if len(m.Series("meshd_agent_peer_handshake_age_seconds", "peer", gw)) != 1 {
				return fmt.Errorf("no handshake with %s yet", gw)
			}
			if m.Sum("meshd_agent_peer_path", "peer", gw, "path", "direct") != 1 {
				return fmt.Errorf("%s not on a direct path", gw)
			}
			if m.Sum("meshd_agent_peer_health", "peer", gw, "state", "healthy") != 1 {
				return fmt.Errorf("%s not healthy", gw)
			}
			if m.Sum("meshd_agent_peer_rx_bytes_total", "peer", gw) <= 0 {
				return fmt.Errorf("nothing received from %s", gw)
			}
		}
		if m.Sum("meshd_agent_route_active_gateway", "prefix", netlab.SiteA, "gateway", "gwa1") != 1 {
			return fmt.Errorf("site A not through gwa1")
		}
		if m.Sum("meshd_agent_map_index") < 1 || m.Sum("meshd_agent_coordinator_connected") != 1 {
			return fmt.Errorf("map index %v, connected %v", m.Sum("meshd_agent_map_index"), m.Sum("meshd_agent_coordinator_connected"))
		}
		return nil
	})
	// A gateway's own metrics: its checks pass.
	if m, code, err := scrapeIn(l, "gwa1", agent, "", nil); err != nil || code != http.StatusOK || m.Sum("meshd_agent_gateway_healthy") != 1 {
		t.Fatalf("gwa1's metrics: %d %v; want 200 with gateway_healthy 1", code, err)
	}

	// gwa1 dies: cl1 counts a failover and sends the site to gwa2.
	l.Procs["gwa1"].Kill()
	poll(t, 10*time.Second, "cl1's metrics to show the failover to gwa2", func() error {
		m, _, err := scrapeIn(l, "cl1", agent, "", nil)
		if err != nil {
			return err
		}
		if m.Sum("meshd_agent_failovers_total") < 1 || m.Sum("meshd_agent_route_active_gateway", "prefix", netlab.SiteA, "gateway", "gwa2") != 1 {
			return fmt.Errorf("failovers %v, site A via gwa2 %v", m.Sum("meshd_agent_failovers_total"),
				m.Sum("meshd_agent_route_active_gateway", "prefix", netlab.SiteA, "gateway", "gwa2"))
		}
		if m.Sum("meshd_agent_peer_health", "peer", "gwa1", "state", "unhealthy") != 1 {
			return fmt.Errorf("gwa1 not unhealthy")
		}
		return nil
	})
}

// poll calls f until it returns nil, failing with its last error after d.
func poll(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

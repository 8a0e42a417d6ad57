package coordinator

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/metrics"
	"github.com/meshd/meshd/pkg/tlspin"
)

// scrape GETs url with the bearer credential auth (none when empty) and
// decodes the answer; it returns the status code too.
func scrape(t *testing.T, hc *http.Client, url, auth string) (metrics.Families, int) {
	t.Helper()
	resp := send(t, hc, http.MethodGet, url, nil, auth, nil)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode
	}
	fams, err := metrics.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams, resp.StatusCode
}

func TestMetricsEndpoint(t *testing.T) {
	srv, admin, _ := startSingleWith(t, func(c *Config) { c.MetricsListen = "127.0.0.1:0" })
	ctx := context.Background()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspin.ClientConfig(srv.Pin())}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	url := srv.APIURL() + "/metrics"

	// No credential, or a join token in its place: refused.
	if _, code := scrape(t, hc, url, ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without a credential: got %d; want 401", code)
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1}, &tok); err != nil {
		t.Fatal(err)
	}
	if _, code := scrape(t, hc, url, tok.Token); code != http.StatusUnauthorized {
		t.Fatalf("GET /metrics with a join token: got %d; want 401", code)
	}

	before, code := scrape(t, hc, url, admin.Auth())
	if code != http.StatusOK {
		t.Fatalf("GET /metrics with the admin credential: got %d; want 200", code)
	}
	for _, name := range []string{"meshd_coordinator_raft_state", "meshd_coordinator_raft_term", "meshd_coordinator_raft_commit_index",
		"meshd_coordinator_raft_applied_index", "meshd_coordinator_raft_last_contact_seconds", "meshd_coordinator_raft_log_entries",
		"meshd_coordinator_raft_snapshots", "meshd_coordinator_watchers", "meshd_coordinator_tokens", "meshd_coordinator_peers",
		"meshd_coordinator_raft_commit_seconds", "meshd_coordinator_raft_apply_seconds", "meshd_coordinator_fanout_rounds_total",
		"meshd_coordinator_fanout_lag_seconds", "meshd_coordinator_http_requests_total", "meshd_coordinator_http_request_duration_seconds",
		"meshd_coordinator_info", "process_resident_memory_bytes", "go_goroutines"} {
		if _, ok := before[name]; !ok {
			t.Errorf("family %s missing from the scrape", name)
		}
	}
	// Exactly one Raft state is 1: a single node leads.
	var ones []string
	for _, m := range before.Series("meshd_coordinator_raft_state") {
		if m.GetGauge().GetValue() == 1 {
			ones = append(ones, m.GetLabel()[0].GetValue())
		}
	}
	if len(ones) != 1 || ones[0] != "leader" {
		t.Errorf("raft states at 1: %v; want exactly [leader]", ones)
	}
	applied, commit := before.Sum("meshd_coordinator_raft_applied_index"), before.Sum("meshd_coordinator_raft_commit_index")
	if applied < 1 || commit < applied {
		t.Errorf("applied index %v, commit index %v; want applied > 0 and commit >= applied", applied, commit)
	}
	if got := before.Sum("meshd_coordinator_raft_term"); got < 1 {
		t.Errorf("term %v; want >= 1", got)
	}
	if got := before.Sum("meshd_coordinator_raft_log_entries"); got < 1 || got > applied {
		t.Errorf("log entries %v; want 1..%v", got, applied)
	}
	if got := before.Sum("meshd_coordinator_raft_last_contact_seconds"); got != 0 {
		t.Errorf("last contact on the leader %v; want 0", got)
	}
	if got := before.Sum("meshd_coordinator_tokens", "state", "active"); got != 1 {
		t.Errorf("active tokens %v; want 1", got)
	}
	if got := before.Sum("meshd_coordinator_raft_commit_seconds"); got < 1 {
		t.Errorf("commit latency observations %v; want some (bootstrap, registration, the token)", got)
	}
	if got := before.Sum("meshd_coordinator_raft_apply_seconds"); got < 1 {
		t.Errorf("apply latency observations %v; want some", got)
	}
	if got := before.Sum("meshd_coordinator_http_requests_total", "route", "GET /metrics", "code", "401"); got != 2 {
		t.Errorf("refused scrapes counted %v; want 2", got)
	}

	// A join, a refused join (the token is used up), a watch, and a path
	// nobody serves.
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "cl1", PublicKey: wgKey()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "cl2", PublicKey: wgKey()}); !api.IsCode(err, api.CodeTokenUsedUp) {
		t.Fatalf("second join: %v; want %s", err, api.CodeTokenUsedUp)
	}
	watchMap(t, srv, admin, j.Credential)
	if err := admin.Do(ctx, http.MethodGet, "/v1/no/such/path/12345", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("unknown path: %v; want %s", err, api.CodeNotFound)
	}
	var after metrics.Families
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, _ = scrape(t, hc, url, admin.Auth())
		if after.Sum("meshd_coordinator_watchers") == 1 && after.Sum("meshd_coordinator_fanout_rounds_total") > before.Sum("meshd_coordinator_fanout_rounds_total") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watchers %v, fan-out rounds %v (before %v); want 1 watcher and a round after the join",
				after.Sum("meshd_coordinator_watchers"), after.Sum("meshd_coordinator_fanout_rounds_total"), before.Sum("meshd_coordinator_fanout_rounds_total"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := after.Sum("meshd_coordinator_joins_total", "result", "ok"); got != 1 {
		t.Errorf("joins ok %v; want 1", got)
	}
	if got := after.Sum("meshd_coordinator_joins_total", "result", api.CodeTokenUsedUp); got != 1 {
		t.Errorf("joins refused as %s: %v; want 1", api.CodeTokenUsedUp, got)
	}
	if got := after.Sum("meshd_coordinator_tokens", "state", "used"); got != 1 {
		t.Errorf("used tokens %v; want 1", got)
	}
	if got := after.Sum("meshd_coordinator_peers", "vnet", api.DefaultVNet, "online", "true"); got != 1 {
		t.Errorf("online peers in %s: %v; want 1 (its watch is open)", api.DefaultVNet, got)
	}
	if got := after.Sum("meshd_coordinator_fanout_lag_seconds"); got < 1 {
		t.Errorf("fan-out lag observations %v; want some", got)
	}
	// The request counter moved for the scrape before: one more 200 on
	// the route pattern.
	if b, a := before.Sum("meshd_coordinator_http_requests_total", "route", "GET /metrics", "code", "200"),
		after.Sum("meshd_coordinator_http_requests_total", "route", "GET /metrics", "code", "200"); a <= b {
		t.Errorf("scrapes counted %v then %v; want an increase", b, a)
	}
	if got := after.Sum("meshd_coordinator_http_request_duration_seconds", "route", "POST /v1/tokens"); got != 1 {
		t.Errorf("POST /v1/tokens latency observations %v; want 1", got)
	}
	// An unknown path is counted under the catch-all pattern, never by
	// its own path.
	if got := after.Sum("meshd_coordinator_http_requests_total", "route", "/", "code", "404"); got != 1 {
		t.Errorf("unknown path counted %v under route \"/\"; want 1", got)
	}
	for _, m := range after.Series("meshd_coordinator_http_requests_total") {
		for _, l := range m.GetLabel() {
			if strings.Contains(l.GetValue(), "12345") {
				t.Errorf("a label holds the raw path: %v", m.GetLabel())
			}
		}
	}

	// A read-only admin credential may scrape.
	var ro api.CreateAdminTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/admin/tokens", api.CreateAdminTokenRequest{Name: "grafana", ReadOnly: true}, &ro); err != nil {
		t.Fatal(err)
	}
	// ... verifying the coordinator with the API CA alone, as Prometheus
	// does with the PEM of `meshd coordinator api-ca` as its ca_file.
	caClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.cfg.ClusterKey.APICA().Pool()}}}
	defer caClient.CloseIdleConnections()
	if _, code := scrape(t, caClient, url, ro.Token); code != http.StatusOK {
		t.Errorf("GET /metrics with a read-only admin credential: got %d; want 200", code)
	}

	// The plain-HTTP listener needs no credential and serves the same.
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}
	defer plain.CloseIdleConnections()
	fams, code := scrape(t, plain, "http://"+srv.metricsLn.Addr().String()+"/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("plain listener: got %d; want 200", code)
	}
	if got := fams.Sum("meshd_coordinator_raft_state", "state", "leader"); got != 1 {
		t.Errorf("plain listener: leader state %v; want 1", got)
	}
	if got := fams.Sum("meshd_coordinator_raft_applied_index"); got < applied {
		t.Errorf("plain listener: applied index %v; want >= %v", got, applied)
	}
}

// TestMetricNames checks that MetricNames lists the families a scrape
// serves (the dashboard test relies on it).
func TestMetricNames(t *testing.T) {
	names := map[string]bool{}
	for _, n := range MetricNames() {
		names[n] = true
	}
	for _, n := range []string{"meshd_coordinator_raft_state", "meshd_coordinator_http_requests_total", "meshd_coordinator_fanout_lag_seconds",
		"meshd_coordinator_tokens", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if !names[n] {
			t.Errorf("MetricNames lacks %s", n)
		}
	}
}

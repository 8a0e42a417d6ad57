package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/ui"
	"github.com/meshd/meshd/pkg/api"
)

// serve runs one request through the coordinator's API handler.
func serve(h http.Handler, method, path, auth string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestDashboardServed: /ui/ serves the page and its assets with the
// Content-Security-Policy, the page loads no inline script and nothing from
// elsewhere, and the API it reads refuses calls without an admin credential.
func TestDashboardServed(t *testing.T) {
	srv, _ := startSingle(t)
	h := srv.routes()

	rec := serve(h, http.MethodGet, "/ui/", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /ui/: %d %s; want 200", rec.Code, rec.Body)
	}
	page := rec.Body.String()
	if got := rec.Header().Get("Content-Security-Policy"); got != ui.CSP {
		t.Fatalf("GET /ui/ Content-Security-Policy %q; want %q", got, ui.CSP)
	}
	for _, want := range []string{"script-src 'self'", "default-src 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(ui.CSP, want) {
			t.Fatalf("CSP %q lacks %q", ui.CSP, want)
		}
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("GET /ui/ Content-Type %q; want text/html", ct)
	}
	if !strings.Contains(page, `<script src="app.js"`) || !strings.Contains(page, `href="app.css"`) {
		t.Fatalf("GET /ui/ does not load app.js and app.css:\n%s", page)
	}
	if m := regexp.MustCompile(`<script(?:\s[^>]*)?>[^<]+</script>|<script(?:\s(?:[^s>]|s[^r])*)?>`).FindString(page); m != "" {
		t.Fatalf("page has an inline script: %q", m)
	}
	if m := regexp.MustCompile(`(?i)(src|href)="(https?:)?//`).FindString(page); m != "" {
		t.Fatalf("page loads a third-party asset: %q", m)
	}

	for _, tt := range []struct{ path, ctype, has string }{
		{"/ui/app.js", "text/javascript", "/v1/changes"},
		{"/ui/app.css", "text/css", "table"},
	} {
		rec := serve(h, http.MethodGet, tt.path, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d; want 200", tt.path, rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tt.ctype) {
			t.Fatalf("GET %s Content-Type %q; want %s", tt.path, ct, tt.ctype)
		}
		if rec.Header().Get("Content-Security-Policy") != ui.CSP || rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("GET %s headers %v; want the CSP and nosniff", tt.path, rec.Header())
		}
		if !strings.Contains(rec.Body.String(), tt.has) {
			t.Fatalf("GET %s does not contain %q", tt.path, tt.has)
		}
	}
	if rec := serve(h, http.MethodGet, "/ui", ""); rec.Code/100 != 3 || rec.Header().Get("Location") != "/ui/" {
		t.Fatalf("GET /ui: %d to %q; want a redirect to /ui/", rec.Code, rec.Header().Get("Location"))
	}
	if rec := serve(h, http.MethodGet, "/ui/nothing.js", ""); rec.Code != http.StatusNotFound {
		t.Fatalf("GET /ui/nothing.js: %d; want 404", rec.Code)
	}

	// The API the page reads: nothing without a credential, nor with a
	// malformed one.
	for _, path := range []string{"/v1/vnets", "/v1/peers", "/v1/routes", "/v1/routes/overlaps", "/v1/tokens",
		"/v1/admin/tokens", "/v1/routes/lookup?ip=10.0.0.1", "/v1/changes?after=0", "/v1/cluster/status"} {
		for _, auth := range []string{"", "not-a-token"} {
			rec := serve(h, http.MethodGet, path, auth)
			var body api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusUnauthorized || body.Error == nil || body.Error.Code != api.CodeUnauthorized {
				t.Fatalf("GET %s with credential %q: %d %s; want 401 %s", path, auth, rec.Code, rec.Body, api.CodeUnauthorized)
			}
		}
	}
}

// TestDashboardChanges: with a read-only admin credential, GET /v1/changes
// answers at once when the state is past the given index, and a long poll
// wakes as soon as a write lands (not when its wait runs out).
func TestDashboardChanges(t *testing.T) {
	srv, admin := startSingle(t)
	ro := createAdmin(t, admin, "dashboard", true)
	h := srv.routes()

	changes := func(query string) (api.Changes, time.Duration) {
		t.Helper()
		start := time.Now()
		rec := serve(h, http.MethodGet, "/v1/changes?"+query, ro)
		var c api.Changes
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &c) != nil {
			t.Fatalf("GET /v1/changes?%s: %d %s; want 200 with an index", query, rec.Code, rec.Body)
		}
		return c, time.Since(start)
	}
	now, took := changes("after=0")
	if now.Index == 0 || took > 2*time.Second {
		t.Fatalf("after=0: index %d in %s; want the current index at once", now.Index, took)
	}
	if same, took := changes(fmt.Sprintf("after=%d&wait=1", now.Index)); same.Index != now.Index || took < time.Second {
		t.Fatalf("no change, wait=1: index %d after %s; want %d after 1s", same.Index, took, now.Index)
	}

	type answer struct {
		c    api.Changes
		took time.Duration
	}
	done := make(chan answer, 1)
	go func() {
		start := time.Now()
		rec := serve(h, http.MethodGet, fmt.Sprintf("/v1/changes?after=%d", now.Index), ro)
		var c api.Changes
		json.Unmarshal(rec.Body.Bytes(), &c)
		done <- answer{c, time.Since(start)}
	}()
	wrote := time.Now()
	if err := admin.Do(context.Background(), http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "lab", Overlay: "100.80.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-done: // woken by the write: the wait (20 s) had not run out
		if a.c.Index <= now.Index {
			t.Fatalf("after a write: index %d; want past %d", a.c.Index, now.Index)
		}
		if since := time.Since(wrote); since > 2*time.Second {
			t.Fatalf("the long poll answered %s after the write; want well under 2s", since)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not wake on a write")
	}

	for _, q := range []string{"after=x", "after=1&wait=61", "after=1&wait=-1"} {
		if rec := serve(h, http.MethodGet, "/v1/changes?"+q, ro); rec.Code != http.StatusBadRequest {
			t.Fatalf("GET /v1/changes?%s: %d; want 400", q, rec.Code)
		}
	}
}

// TestDashboardChangesShutdown: an open long poll does not hold up a
// coordinator's exit; it is answered 503 at once, so the page retries
// elsewhere.
func TestDashboardChangesShutdown(t *testing.T) {
	srv, admin, stop := startSingleWith(t, nil)
	h := srv.routes()
	var now api.Changes
	if err := admin.Do(context.Background(), http.MethodGet, "/v1/changes", nil, &now); err != nil {
		t.Fatal(err)
	}
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- serve(h, http.MethodGet, fmt.Sprintf("/v1/changes?after=%d", now.Index), admin.Auth()) }()
	// The poll is open once the coordinator counts it; poll for that
	// rather than guess.
	waitFor := time.Now().Add(5 * time.Second)
	for srv.changeWaits.open() == 0 {
		if time.Now().After(waitFor) {
			t.Fatal("the long poll did not start")
		}
		time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
	}
	start := time.Now()
	stop()
	select {
	case rec := <-done:
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("long poll at shutdown: %d %s; want 503", rec.Code, rec.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll was still open 5s after the coordinator stopped")
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("the coordinator took %s to stop with a long poll open; want well under its 2s shutdown grace", took)
	}
}

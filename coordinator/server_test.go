package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/meshd/meshd/pkg/tlspin"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/token"
)

// startSingle runs a one-node cluster on loopback and returns an admin
// client once DATA_DIR/admin.token exists.
func startSingle(t testing.TB) (*Server, *apiclient.Client) {
	t.Helper()
	srv, admin, _ := startSingleWith(t, nil)
	return srv, admin
}

// startSingleWith is startSingle with mod applied to the configuration; stop
// stops the coordinator (and is called again, harmlessly, at cleanup).
func startSingleWith(t testing.TB, mod func(*Config)) (_ *Server, _ *apiclient.Client, stop func()) {
	t.Helper()
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := Config{
		Name: "c1", DataDir: dir, ClusterKey: key,
		APIListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0",
		Logger: logging.New(testWriter{t}, testLogLevel(t)),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	path := filepath.Join(dir, "admin.token")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 {
			fi, _ := os.Stat(path)
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("admin.token mode %v; want 0600", fi.Mode().Perm())
			}
			tok, err := token.ParseKind(string(b), token.KindAdmin)
			if err != nil {
				t.Fatal(err)
			}
			// The same credential follows from the key and the URLs alone
			// (meshd coordinator admin-token).
			if offline := AdminToken(key, tok.URLs); offline != strings.TrimSpace(string(b)) {
				t.Fatalf("AdminToken(key, %v) = %q; admin.token holds %q", tok.URLs, offline, b)
			}
			return srv, apiclient.New(tok.URLs, tok.Pin, strings.TrimSpace(string(b))), stop
		}
		if time.Now().After(deadline) {
			t.Fatal("admin.token not written within 10s")
		}
		select { // the token file is written after the last state change
		case <-srv.Store().WatchCh():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func wgKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func TestJoinThroughAPI(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1, AllowRoutes: []string{"10.1.0.0/16"}}, &tok); err != nil {
		t.Fatal(err)
	}
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "gw1", PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: 100}}})
	if err != nil {
		t.Fatal(err)
	}
	if j.OverlayIP != "100.96.0.1" || j.Map == nil || !j.Map.Full || len(j.GossipKeys) != 1 {
		t.Fatalf("got %+v; want overlay 100.96.0.1, a full map and a gossip key", j)
	}
	// Reusing a single-use token is refused and changes nothing.
	before := srv.Store().Dump()
	_, err = apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "gw2", PublicKey: wgKey()})
	if !api.IsCode(err, api.CodeTokenUsedUp) {
		t.Fatalf("got %v; want %s", err, api.CodeTokenUsedUp)
	}
	if string(srv.Store().Dump()) != string(before) {
		t.Fatal("a refused join changed the state")
	}
	var res api.LookupResult
	if err := admin.Do(ctx, http.MethodGet, "/v1/routes/lookup?ip=10.1.0.7", nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.Prefix == nil || *res.Prefix != "10.1.0.0/24" || res.ActiveGateway != "gw1" {
		t.Fatalf("got %+v; want 10.1.0.0/24 via gw1", res)
	}
	// The peer's credential opens its network-map stream.
	pc := apiclient.New(admin.URLs(), srv.Pin(), j.Credential)
	resp, err := pc.Stream(ctx, "/v1/netmap")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// A wrong admin credential is refused.
	bad := apiclient.New(admin.URLs(), srv.Pin(), "nonsense")
	if err := bad.Do(ctx, http.MethodGet, "/v1/peers", nil, nil); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("got %v; want %s", err, api.CodeUnauthorized)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	mustDo := func(method, path string, in, out any) {
		t.Helper()
		if err := admin.Do(ctx, method, path, in, out); err != nil {
			t.Fatalf("setup %s %s: %v", method, path, err)
		}
	}
	newToken := func(req api.CreateTokenRequest) api.CreateTokenResponse {
		t.Helper()
		var tok api.CreateTokenResponse
		mustDo(http.MethodPost, "/v1/tokens", req, &tok)
		return tok
	}
	mustDo(http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "site", Overlay: "100.112.0.0/16"}, nil)
	// Tokens in every state a join can be refused for.
	mustDo(http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "gone", Overlay: "100.113.0.0/16"}, nil)
	gone := newToken(api.CreateTokenRequest{VNet: "gone"})
	mustDo(http.MethodDelete, "/v1/vnets/gone", nil, nil)
	revoked := newToken(api.CreateTokenRequest{})
	mustDo(http.MethodPost, "/v1/tokens/"+revoked.ID+"/revoke", nil, nil)
	expired := newToken(api.CreateTokenRequest{TTL: "1ms"})
	used := newToken(api.CreateTokenRequest{})
	multi := newToken(api.CreateTokenRequest{Uses: 10, AllowRoutes: []string{"10.1.0.0/16"}})
	first, err := apiclient.Join(ctx, used.Token, api.JoinRequest{Name: "first", PublicKey: wgKey()})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Until(expired.Expires) > 0 { // a 1 ms token; poll past its expiry
		if time.Now().After(deadline) {
			t.Fatal("token did not expire")
		}
		time.Sleep(time.Millisecond)
	}
	join := func(tok, name, key string, routes ...api.Route) api.JoinRequest {
		return api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok, Name: name, PublicKey: key, Routes: routes}
	}
	peerCred := first.Credential
	otherKey, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	foreignAdmin := (&token.Token{Kind: token.KindAdmin, Pin: srv.Pin(), ID: "admin", Secret: otherKey.AdminSecret()}).String()

	for _, tt := range []struct {
		name, method, path string
		body               any    // marshalled as JSON
		raw                []byte // sent as is when set
		auth               string // "" admin, "-" none, else this credential
		code               string
	}{
		{name: "bad cidr", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "x", Overlay: "300.1.0.0/16"}, code: api.CodeInvalidCIDR},
		{name: "host bits", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "x", Overlay: "100.114.0.1/16"}, code: api.CodeInvalidCIDR},
		{name: "overlapping overlay", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "x", Overlay: "100.112.8.0/24"}, code: api.CodeOverlap},
		{name: "duplicate vnet", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "site", Overlay: "100.120.0.0/16"}, code: api.CodeConflict},
		{name: "bad vnet name", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "Bad_Name", Overlay: "100.120.0.0/16"}, code: api.CodeInvalidName},
		{name: "unknown field", method: "POST", path: "/v1/vnets", body: map[string]string{"nam": "x"}, code: api.CodeInvalidJSON},
		{name: "syntax error", method: "POST", path: "/v1/vnets", raw: []byte(`{"name":`), code: api.CodeInvalidJSON},
		{name: "trailing garbage", method: "POST", path: "/v1/vnets", raw: []byte(`{"name":"x","overlay":"100.120.0.0/16"} x`), code: api.CodeInvalidJSON},
		{name: "wrong type", method: "POST", path: "/v1/vnets", raw: []byte(`{"name":5,"overlay":"100.120.0.0/16"}`), code: api.CodeInvalidJSON},
		{name: "empty body", method: "POST", path: "/v1/vnets", raw: []byte{}, code: api.CodeInvalidJSON},
		{name: "oversized body", method: "POST", path: "/v1/vnets", body: map[string]string{"name": strings.Repeat("a", api.MaxBodyBytes)}, code: api.CodeBodyTooLarge},
		{name: "no credential", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "x", Overlay: "100.120.0.0/16"}, auth: "-", code: api.CodeUnauthorized},
		{name: "another cluster's admin token", method: "POST", path: "/v1/vnets", body: api.CreateVNetRequest{Name: "x", Overlay: "100.120.0.0/16"}, auth: foreignAdmin, code: api.CodeUnauthorized},
		{name: "peer credential on an admin call", method: "DELETE", path: "/v1/peers/default/first", auth: peerCred, code: api.CodeUnauthorized},
		{name: "token for unknown vnet", method: "POST", path: "/v1/tokens", body: api.CreateTokenRequest{VNet: "nope"}, code: api.CodeNotFound},
		{name: "token bad ttl", method: "POST", path: "/v1/tokens", body: api.CreateTokenRequest{TTL: "forever"}, code: api.CodeInvalidArgument},
		{name: "token bad route", method: "POST", path: "/v1/tokens", body: api.CreateTokenRequest{AllowRoutes: []string{"10.0.0.0/33"}}, code: api.CodeInvalidCIDR},
		{name: "token negative uses", method: "POST", path: "/v1/tokens", body: api.CreateTokenRequest{Uses: -1}, code: api.CodeInvalidArgument},
		{name: "revoke unknown token", method: "POST", path: "/v1/tokens/nope/revoke", code: api.CodeNotFound},
		{name: "remove unknown peer", method: "DELETE", path: "/v1/peers/default/ghost", code: api.CodeNotFound},
		{name: "lookup bad ip", method: "GET", path: "/v1/routes/lookup?ip=banana", code: api.CodeInvalidArgument},
		{name: "delete unknown vnet", method: "DELETE", path: "/v1/vnets/nope", code: api.CodeNotFound},
		{name: "delete vnet with peers", method: "DELETE", path: "/v1/vnets/default", code: api.CodeConflict},
		{name: "join malformed token", method: "POST", path: "/v1/join", body: join("x", "a", wgKey()), auth: "-", code: api.CodeTokenUnknown},
		{name: "join old protocol", method: "POST", path: "/v1/join", body: api.JoinRequest{ProtocolVersion: 0, Name: "a"}, auth: "-", code: api.CodeVersion},
		{name: "join reused token", method: "POST", path: "/v1/join", body: join(used.Token, "second", wgKey()), auth: "-", code: api.CodeTokenUsedUp},
		{name: "join expired token", method: "POST", path: "/v1/join", body: join(expired.Token, "late", wgKey()), auth: "-", code: api.CodeTokenExpired},
		{name: "join revoked token", method: "POST", path: "/v1/join", body: join(revoked.Token, "nope", wgKey()), auth: "-", code: api.CodeTokenRevoked},
		{name: "join token of a deleted vnet", method: "POST", path: "/v1/join", body: join(gone.Token, "orphan", wgKey()), auth: "-", code: api.CodeVNetDeleted},
		{name: "join duplicate name", method: "POST", path: "/v1/join", body: join(multi.Token, "first", wgKey()), auth: "-", code: api.CodeConflict},
		{name: "join key not base64", method: "POST", path: "/v1/join", body: join(multi.Token, "k1", "not base64!"), auth: "-", code: api.CodeInvalidKey},
		{name: "join key wrong length", method: "POST", path: "/v1/join", body: join(multi.Token, "k2", "AAAA"), auth: "-", code: api.CodeInvalidKey},
		{name: "join bad peer name", method: "POST", path: "/v1/join", body: join(multi.Token, "Bad Name", wgKey()), auth: "-", code: api.CodeInvalidName},
		{name: "join route not allowed", method: "POST", path: "/v1/join", body: join(multi.Token, "gw", wgKey(), api.Route{Prefix: "10.2.0.0/24", Priority: 100}), auth: "-", code: api.CodeRouteNotAllowed},
		{name: "join bad route cidr", method: "POST", path: "/v1/join", body: join(multi.Token, "gw", wgKey(), api.Route{Prefix: "10.1.0.0/33", Priority: 100}), auth: "-", code: api.CodeInvalidCIDR},
		{name: "join negative priority", method: "POST", path: "/v1/join", body: join(multi.Token, "gw", wgKey(), api.Route{Prefix: "10.1.0.0/24", Priority: -1}), auth: "-", code: api.CodeInvalidArgument},
		{name: "netmap bad since", method: "GET", path: "/v1/netmap?since=yesterday", auth: peerCred, code: api.CodeInvalidArgument},
		{name: "heartbeat bad endpoint", method: "POST", path: "/v1/heartbeat", body: api.HeartbeatRequest{Endpoints: []string{"10.0.0.1"}}, auth: peerCred, code: api.CodeInvalidArgument},
		{name: "heartbeat wrong type", method: "POST", path: "/v1/heartbeat", raw: []byte(`{"endpoints":"10.0.0.1:1"}`), auth: peerCred, code: api.CodeInvalidJSON},
		{name: "heartbeat without credential", method: "POST", path: "/v1/heartbeat", body: api.HeartbeatRequest{}, auth: "-", code: api.CodeUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.Store().Dump()
			auth := tt.auth
			switch auth {
			case "":
				auth = admin.Auth()
			case "-":
				auth = ""
			}
			body := tt.raw
			if body == nil && tt.body != nil {
				body, _ = json.Marshal(tt.body)
			}
			status, e := rawCall(t, srv, tt.method, tt.path, body, auth)
			if status < 400 || status >= 500 {
				t.Fatalf("status %d; want 4xx", status)
			}
			if e == nil || e.Code != tt.code || e.Message == "" {
				t.Fatalf("got %+v; want code %s with a message", e, tt.code)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("state changed")
			}
		})
	}
}

// rawCall sends body as is, so that malformed requests can be tested.
func rawCall(t *testing.T, srv *Server, method, path string, body []byte, auth string) (int, *api.Error) {
	t.Helper()
	return apiCall(t, srv, method, path, body, auth, nil)
}

// apiCall sends body as is to srv's API with the bearer credential auth
// (none when empty) and header, and answers the status and the decoded
// error, if any.
func apiCall(t *testing.T, srv *Server, method, path string, body []byte, auth string, header http.Header) (int, *api.Error) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlspin.ClientConfig(srv.Pin())}}
	defer hc.CloseIdleConnections()
	resp := send(t, hc, method, srv.APIURL()+path, body, auth, header)
	defer resp.Body.Close()
	if resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	var eb api.ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	return resp.StatusCode, eb.Error
}

// send sends body (none when nil) to url over hc with the bearer
// credential auth (none when empty) and header, and fails t when there is
// no answer.
func send(t *testing.T, hc *http.Client, method, url string, body []byte, auth string, header http.Header) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// testLogLevel logs everything in tests, and only warnings in benchmarks.
func testLogLevel(t testing.TB) slog.Level {
	if _, ok := t.(*testing.B); ok {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// TestWatchCompressedDelta: a watch opened with ?compress=1 gets a large
// delta as one deflated line that expands to the same update a plain
// watch gets.
func TestWatchCompressedDelta(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 3, AllowRoutes: []string{"10.0.0.0/8"}}, &tok); err != nil {
		t.Fatal(err)
	}
	open := func(name, query string) *bufio.Reader {
		j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), OmitMap: true})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := apiclient.New(admin.URLs(), srv.Pin(), j.Credential).Stream(ctx, "/v1/netmap"+query)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		rd := bufio.NewReaderSize(resp.Body, 1<<16)
		if _, err := rd.ReadBytes('\n'); err != nil { // the full map
			t.Fatal(err)
		}
		return rd
	}
	zw := open("zipped", "?compress=1")
	pw := open("plain", "")
	var routes []api.Route
	for i := range 200 {
		routes = append(routes, api.Route{Prefix: fmt.Sprintf("10.%d.%d.0/24", i/100, i%100), Priority: 100})
	}
	if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "biggw", PublicKey: wgKey(), Routes: routes, OmitMap: true}); err != nil {
		t.Fatal(err)
	}
	// next reads lines until one carries biggw.
	next := func(rd *bufio.Reader) (raw, expanded []byte) {
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				t.Fatal(err)
			}
			exp, err := api.ExpandLine(bytes.TrimSpace(line))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(exp, []byte(`"biggw"`)) {
				return line, exp
			}
		}
	}
	zraw, zexp := next(zw)
	praw, pexp := next(pw)
	if !api.IsCompressedLine(zraw) || api.IsCompressedLine(praw) {
		t.Fatalf("compressed watch got %.40q, plain watch %.40q; want a {\"z\":...} line only on the first", zraw, praw)
	}
	if !bytes.Equal(zexp, bytes.TrimSpace(pexp)) {
		t.Fatal("the compressed line does not expand to the update the plain watch got")
	}
	if len(zraw)*2 > len(praw) {
		t.Errorf("compressed line %d bytes, plain %d; want less than half", len(zraw), len(praw))
	}
	var upd api.MapUpdate
	if err := json.Unmarshal(zexp, &upd); err != nil {
		t.Fatal(err)
	}
	for _, p := range upd.Peers {
		if p.Name == "biggw" && len(p.Routes) == 200 {
			return
		}
	}
	t.Fatalf("expanded update (%d peers) lacks biggw with 200 routes", len(upd.Peers))
}

package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
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
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := New(Config{
		Name: "c1", DataDir: dir, ClusterKey: key,
		APIListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0",
		Logger: logging.New(testWriter{t}, testLogLevel(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
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
			return srv, apiclient.New(tok.URLs, tok.Pin, strings.TrimSpace(string(b)))
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
	if err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "site", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, method, path string
		body               any
		code               string
	}{
		{"bad cidr", "POST", "/v1/vnets", api.CreateVNetRequest{Name: "x", Overlay: "300.1.0.0/16"}, api.CodeInvalidCIDR},
		{"host bits", "POST", "/v1/vnets", api.CreateVNetRequest{Name: "x", Overlay: "100.113.0.1/16"}, api.CodeInvalidCIDR},
		{"overlapping overlay", "POST", "/v1/vnets", api.CreateVNetRequest{Name: "x", Overlay: "100.112.8.0/24"}, api.CodeOverlap},
		{"duplicate vnet", "POST", "/v1/vnets", api.CreateVNetRequest{Name: "site", Overlay: "100.120.0.0/16"}, api.CodeConflict},
		{"bad vnet name", "POST", "/v1/vnets", api.CreateVNetRequest{Name: "Bad_Name", Overlay: "100.120.0.0/16"}, api.CodeInvalidName},
		{"unknown field", "POST", "/v1/vnets", map[string]string{"nam": "x"}, api.CodeInvalidJSON},
		{"oversized body", "POST", "/v1/vnets", map[string]string{"name": strings.Repeat("a", api.MaxBodyBytes)}, api.CodeBodyTooLarge},
		{"token for unknown vnet", "POST", "/v1/tokens", api.CreateTokenRequest{VNet: "nope"}, api.CodeNotFound},
		{"token bad ttl", "POST", "/v1/tokens", api.CreateTokenRequest{TTL: "forever"}, api.CodeInvalidArgument},
		{"token bad route", "POST", "/v1/tokens", api.CreateTokenRequest{AllowRoutes: []string{"10.0.0.0/33"}}, api.CodeInvalidCIDR},
		{"token zero uses", "POST", "/v1/tokens", api.CreateTokenRequest{Uses: -1}, api.CodeInvalidArgument},
		{"revoke unknown token", "POST", "/v1/tokens/nope/revoke", nil, api.CodeNotFound},
		{"remove unknown peer", "DELETE", "/v1/peers/default/ghost", nil, api.CodeNotFound},
		{"lookup bad ip", "GET", "/v1/routes/lookup?ip=banana", nil, api.CodeInvalidArgument},
		{"delete unknown vnet", "DELETE", "/v1/vnets/nope", nil, api.CodeNotFound},
		{"join malformed token", "POST", "/v1/join", api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: "x", Name: "a", PublicKey: wgKey()}, api.CodeTokenUnknown},
		{"join old protocol", "POST", "/v1/join", api.JoinRequest{ProtocolVersion: 0, Name: "a"}, api.CodeVersion},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.Store().Dump()
			err := admin.Do(ctx, tt.method, tt.path, tt.body, nil)
			if !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want code %s", err, tt.code)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("state changed")
			}
		})
	}
}

// testLogLevel logs everything in tests, and only warnings in benchmarks.
func testLogLevel(t testing.TB) slog.Level {
	if _, ok := t.(*testing.B); ok {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

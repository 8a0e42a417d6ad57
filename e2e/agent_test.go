package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/peer"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/token"
)

// These tests run real agents against a real coordinator in one process,
// with the WireGuard engine and the OS router replaced by recorders, so they
// need no root: they check the control path (join, watch, deltas, removal,
// restart, coordinators down) end to end.

type coord struct {
	srv    *coordinator.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *coord) stop() {
	c.cancel()
	<-c.done
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startCoordinator runs a single-node cluster in dir and returns it with an
// admin client once the cluster is up.
func startCoordinator(t *testing.T, dir string, key clusterkey.Key, apiAddr, raftAddr string) (*coord, *apiclient.Client) {
	t.Helper()
	srv, err := coordinator.New(coordinator.Config{
		Name: "c1", DataDir: dir, ClusterKey: key, APIListen: apiAddr, RaftListen: raftAddr,
		Logger: logging.New(testLog{t}, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &coord{srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() { srv.Run(ctx); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			c.stop()
		}
	})
	var admin *apiclient.Client
	waitUntil(t, 15*time.Second, "the coordinator to write admin.token", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
		if err != nil {
			return false
		}
		tok, err := token.ParseKind(strings.TrimSpace(string(b)), token.KindAdmin)
		if err != nil {
			return false
		}
		admin = apiclient.New(tok.URLs, tok.Pin, strings.TrimSpace(string(b)))
		return admin.Do(context.Background(), http.MethodGet, "/v1/health", nil, nil) == nil
	})
	return c, admin
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// fakeRouter records the last configuration it was given.
type fakeRouter struct {
	mu  sync.Mutex
	cfg *router.Config
}

func (r *fakeRouter) Up() error { return nil }
func (r *fakeRouter) Set(c *router.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg = c
	return nil
}
func (r *fakeRouter) Close() error { return r.Set(nil) }

type testAgent struct {
	name  string
	dir   string
	eng   *engine.Fake
	rtr   *fakeRouter
	agent *peer.Agent
	stop  context.CancelFunc
	done  chan struct{} // closed when Run returns
	err   error         // Run's result, once done is closed
}

func startAgent(t *testing.T, dir, name, joinToken string, routes []api.Route, endpoint string) *testAgent {
	t.Helper()
	ta := &testAgent{name: name, dir: dir, eng: &engine.Fake{IfName: "meshd0"}, rtr: &fakeRouter{}, done: make(chan struct{})}
	a, err := peer.New(peer.Config{
		StateDir: dir, Token: joinToken, Name: name, Routes: routes,
		Logger:    logging.New(testLog{t}, 0).With("agent", name),
		NewEngine: func(string) (engine.Engine, error) { return ta.eng, nil },
		NewRouter: func(string) (router.Router, error) { return ta.rtr, nil },
		Endpoints: func(context.Context, []string) []string { return []string{endpoint} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ta.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	ta.stop = cancel
	go func() { ta.err = a.Run(ctx); close(ta.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ta.done:
		case <-time.After(10 * time.Second):
			t.Errorf("agent %s did not stop", name)
		}
	})
	return ta
}

// peers returns the public keys the agent's WireGuard has configured.
func (ta *testAgent) peers() map[wgcfg.Key][]string {
	cfg, _ := ta.eng.Applied()
	out := map[wgcfg.Key][]string{}
	if cfg == nil {
		return out
	}
	for _, p := range cfg.Peers {
		for _, a := range p.AllowedIPs {
			out[p.PublicKey] = append(out[p.PublicKey], a.String())
		}
	}
	return out
}

func TestAgentsFollowTheNetworkMap(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cdir := t.TempDir()
	apiAddr, raftAddr := freePort(t), freePort(t)
	c, admin := startCoordinator(t, cdir, key, apiAddr, raftAddr)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 4, AllowRoutes: []string{"198.19.10.0/24"}}, &tok); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	gw := startAgent(t, filepath.Join(root, "gw"), "gw", tok.Token, []api.Route{{Prefix: "198.19.10.0/24", Priority: 100}}, "198.18.99.21:51820")
	cl := startAgent(t, filepath.Join(root, "cl"), "cl", tok.Token, nil, "198.18.99.41:51820")
	waitUntil(t, 10*time.Second, "gw and cl to configure each other", func() bool {
		return len(gw.peers()) == 1 && len(cl.peers()) == 1
	})
	if got := cl.peers()[gw.agent.PublicKey()]; len(got) != 2 || got[1] != "198.19.10.0/24" {
		t.Fatalf("client's WireGuard peer for gw: allowed %v; want gw's overlay /32 and 198.19.10.0/24", got)
	}
	cl.rtr.mu.Lock()
	routes := fmt.Sprint(cl.rtr.cfg.Routes)
	cl.rtr.mu.Unlock()
	if routes != "[100.96.0.0/12 198.19.10.0/24]" {
		t.Fatalf("client routes %s; want the overlay and the gateway's LAN", routes)
	}
	for _, mode := range []os.FileMode{mustMode(t, filepath.Join(cl.dir, controlclient.KeyFile)), mustMode(t, filepath.Join(cl.dir, controlclient.IdentityFile))} {
		if mode != 0o600 {
			t.Fatalf("state file mode %v; want 0600", mode)
		}
	}

	// A new peer reaches everyone's configuration within a second of its join.
	joined := time.Now()
	p3 := startAgent(t, filepath.Join(root, "p3"), "p3", tok.Token, nil, "198.18.99.42:51820")
	waitUntil(t, 10*time.Second, "p3 to join", func() bool { return len(p3.peers()) == 2 })
	took := waitUntil(t, 10*time.Second, "gw and cl to configure p3", func() bool {
		_, a := gw.peers()[p3.agent.PublicKey()]
		_, b := cl.peers()[p3.agent.PublicKey()]
		return a && b
	})
	t.Logf("new peer configured everywhere %s after its agent started (%s after it saw its own map)", time.Since(joined), took)
	if took > time.Second {
		t.Errorf("new peer took %s to reach the others; want within 1s", took)
	}

	// status over the local socket.
	st, err := peer.QueryStatus(ctx, cl.dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Self.Name != "cl" || len(st.Peers) != 2 || len(st.Routes) != 1 || st.Routes[0].ActiveGateway != "gw" {
		t.Fatalf("status %+v; want cl with 2 peers and 198.19.10.0/24 via gw", st)
	}

	// Removing a peer takes it out of every configuration within 2 s and
	// stops its agent with a clear error.
	removed := time.Now()
	if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/p3", nil, nil); err != nil {
		t.Fatal(err)
	}
	took = waitUntil(t, 10*time.Second, "p3 to disappear", func() bool {
		_, a := gw.peers()[p3.agent.PublicKey()]
		_, b := cl.peers()[p3.agent.PublicKey()]
		return !a && !b
	})
	if took > 2*time.Second {
		t.Errorf("removed peer lingered %s; want within 2s", took)
	}
	select {
	case <-p3.done:
		if !errors.Is(p3.err, controlclient.ErrRemoved) {
			t.Fatalf("removed agent ended with %v; want ErrRemoved", p3.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("removed agent kept running")
	}
	t.Logf("removal propagated in %s", time.Since(removed))

	// Restart the client: same key, same address, no token needed.
	beforeKey, beforeIP := cl.agent.PublicKey(), st.Self.OverlayIP
	cl.stop()
	<-cl.done
	cl2 := startAgent(t, cl.dir, "cl", "", nil, "198.18.99.41:51820")
	waitUntil(t, 10*time.Second, "the restarted client to configure gw", func() bool { return len(cl2.peers()) == 1 })
	st2, err := peer.QueryStatus(ctx, cl.dir)
	if err != nil {
		t.Fatal(err)
	}
	if cl2.agent.PublicKey() != beforeKey || st2.Self.OverlayIP != beforeIP {
		t.Fatalf("restart changed identity: key %v ip %s; want %v %s", cl2.agent.PublicKey(), st2.Self.OverlayIP, beforeKey, beforeIP)
	}

	// Coordinator down: the agents keep their configuration; when it comes
	// back they resume and follow changes again.
	c.stop()
	if len(gw.peers()) != 1 || len(cl2.peers()) != 1 {
		t.Fatal("agents dropped their configuration when the coordinator went away")
	}
	c2, admin2 := startCoordinator(t, cdir, key, apiAddr, raftAddr)
	defer c2.stop()
	if err := admin2.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	p4 := startAgent(t, filepath.Join(root, "p4"), "p4", tok.Token, nil, "198.18.99.43:51820")
	waitUntil(t, 15*time.Second, "agents to resume their watch and see p4", func() bool {
		_, a := gw.peers()[p4.agent.PublicKey()]
		_, b := cl2.peers()[p4.agent.PublicKey()]
		return a && b
	})
}

func mustMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

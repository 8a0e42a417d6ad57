package e2e

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/peer"
	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/logging"
)

func listPeers(t *testing.T, admin *apiclient.Client) []api.Peer {
	t.Helper()
	var ps []api.Peer
	if err := admin.Do(context.Background(), http.MethodGet, "/v1/peers", nil, &ps); err != nil {
		t.Fatal(err)
	}
	return ps
}

func usesLeft(t *testing.T, admin *apiclient.Client, id string) int {
	t.Helper()
	var toks []api.Token
	if err := admin.Do(context.Background(), http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.ID == id {
			return tok.UsesLeft
		}
	}
	t.Fatalf("token %s not listed", id)
	return -1
}

// TestFailedFirstStartRollsBackJoin: an agent whose engine cannot be set
// up after it joined removes itself again: no peer stays registered, the
// single-use token keeps its use and the state dir its key only, so a
// retry with the same token and another --name joins under that name. A
// later start under a third name is refused with the name the state dir
// belongs to.
func TestFailedFirstStartRollsBackJoin(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, admin := startCoordinator(t, t.TempDir(), key, freePort(t), freePort(t))
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1}, &tok); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	errEngine := errors.New("no such device: /dev/net/tun")
	a, err := peer.New(peer.Config{
		StateDir: dir, Token: tok.Token, Name: "first",
		Logger:    logging.New(testLog{t}, 0),
		NewEngine: func(string) (engine.Engine, error) { return nil, errEngine },
		NewRouter: func(string) (router.Router, error) { return &fakeRouter{}, nil },
		Endpoints: func(context.Context, []string) []string { return []string{"198.18.99.41:51820"} },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(ctx); !errors.Is(err, errEngine) {
		t.Fatalf("first start: %v; want the engine's error", err)
	}
	if ps := listPeers(t, admin); len(ps) != 0 {
		t.Fatalf("peers registered after the failed start: %+v; want none", ps)
	}
	if got := usesLeft(t, admin, tok.ID); got != 1 {
		t.Fatalf("token uses left %d after the failed start; want 1", got)
	}
	if _, err := controlclient.LoadIdentity(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("identity after the rollback: %v; want none", err)
	}

	// The retry works with the same token, under the name it is given.
	second := startAgent(t, dir, "second", tok.Token, nil, "198.18.99.41:51820")
	waitUntil(t, 10*time.Second, "the retry to register", func() bool {
		ps := listPeers(t, admin)
		return len(ps) == 1 && ps[0].Name == "second"
	})
	if got := usesLeft(t, admin, tok.ID); got != 0 {
		t.Fatalf("token uses left %d after the retry joined; want 0", got)
	}
	second.stop()
	<-second.done

	// The state dir is peer "second" now: another name is refused before
	// anything is sent, and names the peer it belongs to.
	third, err := peer.New(peer.Config{StateDir: dir, Name: "third", Logger: logging.New(testLog{t}, 0),
		NewEngine: func(string) (engine.Engine, error) { return &engine.Fake{IfName: "meshd0"}, nil },
		NewRouter: func(string) (router.Router, error) { return &fakeRouter{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	var ie *peer.IdentityError
	if err := third.Run(ctx); !errors.As(err, &ie) || ie.Joined != "second" || ie.Asked != "third" {
		t.Fatalf("start as third: %v; want an identity error naming second", err)
	}
	if ps := listPeers(t, admin); len(ps) != 1 || ps[0].Name != "second" {
		t.Fatalf("peers %+v; want second alone", ps)
	}
}

// TestAgentsTakeDevices: a device exported through the API reaches the
// agents' WireGuard as a peer with its overlay address and no configured
// endpoint (WireGuard learns it from the device's packets), and leaves it
// when removed.
func TestAgentsTakeDevices(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, admin := startCoordinator(t, t.TempDir(), key, freePort(t), freePort(t))
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1}, &tok); err != nil {
		t.Fatal(err)
	}
	cl := startAgent(t, filepath.Join(t.TempDir(), "cl"), "cl", tok.Token, nil, "198.18.99.41:51820")
	waitUntil(t, 10*time.Second, "cl to join", func() bool { return len(listPeers(t, admin)) == 1 })
	priv, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	var dc api.DeviceConfig
	if err := admin.Do(ctx, http.MethodPost, "/v1/devices", api.ExportDeviceRequest{Name: "phone", PublicKey: priv.Public().String()}, &dc); err != nil {
		t.Fatal(err)
	}
	if len(dc.Peers) != 1 || dc.Peers[0].Name != "cl" || dc.Peers[0].Endpoint != "198.18.99.41:51820" {
		t.Fatalf("device config peers %+v; want cl at its endpoint", dc.Peers)
	}
	device := func() *wgcfg.Peer {
		cfg, _ := cl.eng.Applied()
		if cfg == nil {
			return nil
		}
		return cfg.Peer(priv.Public())
	}
	waitUntil(t, 10*time.Second, "the agent to configure the device", func() bool { return device() != nil })
	if p := device(); !p.Roaming || p.Endpoint.IsValid() || !slices.ContainsFunc(p.AllowedIPs, func(a netip.Prefix) bool { return a.String() == dc.Peer.OverlayIP+"/32" }) {
		t.Fatalf("device as the agent configures it: %+v; want roaming, no endpoint, its overlay /32", p)
	}
	if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/phone", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the agent to drop the device", func() bool { return device() == nil })
}

package coordinator

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

func tokenUsesLeft(t *testing.T, admin *apiclient.Client, id string) int {
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
	return 0
}

func peerNames(t *testing.T, admin *apiclient.Client) []string {
	t.Helper()
	var ps []api.Peer
	if err := admin.Do(context.Background(), http.MethodGet, "/v1/peers", nil, &ps); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.Name+":"+p.Role)
	}
	return out
}

// TestLeaveSelf: a peer's credential removes that peer and no other; a peer
// that leaves before it ever came up gives its token the use back, one
// that had come up does not; a peer credential cannot call the admin
// removal.
func TestLeaveSelf(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 3}, &tok); err != nil {
		t.Fatal(err)
	}
	join := func(name string) (*api.JoinResponse, *apiclient.Client) {
		j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), OmitMap: true})
		if err != nil {
			t.Fatal(err)
		}
		return j, apiclient.New(admin.URLs(), srv.Pin(), j.Credential)
	}
	_, a := join("a")
	_, b := join("b")
	if got := tokenUsesLeft(t, admin, tok.ID); got != 1 {
		t.Fatalf("uses left %d after two joins; want 1", got)
	}

	// The attack: b's credential cannot remove a, through either route.
	if err := b.Do(ctx, http.MethodDelete, "/v1/peers/default/a", nil, nil); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("peer credential on the admin removal: got %v; want %s", err, api.CodeUnauthorized)
	}
	if err := b.Do(ctx, http.MethodDelete, "/v1/self?name=a", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := peerNames(t, admin); !slices.Equal(got, []string{"a:client"}) {
		t.Fatalf("peers after b left: %v; want only a", got)
	}
	if got := tokenUsesLeft(t, admin, tok.ID); got != 2 {
		t.Fatalf("uses left %d after b, which never came up, left; want 2", got)
	}
	// b's credential is dead now.
	if err := b.Do(ctx, http.MethodDelete, "/v1/self", nil, nil); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("second leave: got %v; want %s", err, api.CodeUnauthorized)
	}

	// a comes up (holds its watch) and then leaves: no use back.
	_ = watchMap(t, srv, admin, a.Auth())
	waitFor(t, 10*time.Second, "a's watch is marked", func() bool {
		var watcher bool
		srv.Store().Read(func(tb *state.Tables, _ uint64) {
			for _, p := range tb.Peers {
				watcher = p.Name == "a" && p.Watcher
			}
		})
		return watcher
	})
	if err := a.Do(ctx, http.MethodDelete, "/v1/self", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := peerNames(t, admin); len(got) != 0 {
		t.Fatalf("peers after a left: %v; want none", got)
	}
	if got := tokenUsesLeft(t, admin, tok.ID); got != 2 {
		t.Fatalf("uses left %d after a, which had come up, left; want still 2", got)
	}
}

// TestExportDevice: an admin registers a device; it is listed with role
// device, the agents' maps carry it, its config lists the agents with the
// route at its active gateway, bad requests change nothing, a peer
// credential cannot register one, and removing it drops it from the maps.
func TestExportDevice(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	var gwTok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1, AllowRoutes: []string{"10.1.0.0/16"}}, &gwTok); err != nil {
		t.Fatal(err)
	}
	gw, err := apiclient.Join(ctx, gwTok.Token, api.JoinRequest{Name: "gw1", PublicKey: wgKey(), OmitMap: true,
		Endpoints: []string{"10.99.0.31:51820", "198.18.0.31:51820"}, Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: 100}}})
	if err != nil {
		t.Fatal(err)
	}
	gwWatch := watchMap(t, srv, admin, gw.Credential) // gw1 online: its route has an active gateway
	_, cl := joinPeer(t, srv, admin, "cl1")
	waitMap(t, gwWatch, 5*time.Second, "gw1", "cl1")
	waitFor(t, 10*time.Second, "gw1 is online", func() bool {
		var ps []api.Peer
		admin.Do(ctx, http.MethodGet, "/v1/peers", nil, &ps)
		return slices.ContainsFunc(ps, func(p api.Peer) bool { return p.Name == "gw1" && p.Online })
	})
	// The peer list counts a watch this coordinator holds at once; its
	// mark reaches the replicated state in the next batch. The state must
	// hold still before it is compared.
	waitFor(t, 10*time.Second, "gw1's watch is marked in the state", func() bool {
		marked := false
		srv.Store().Read(func(tb *state.Tables, _ uint64) {
			for _, p := range tb.Peers {
				if p.Name == "gw1" && p.WatchedBy != "" {
					marked = true
				}
			}
		})
		return marked
	})

	before := srv.Store().Dump()
	for _, bad := range []struct {
		name string
		req  api.ExportDeviceRequest
		code string
	}{
		{"bad name", api.ExportDeviceRequest{Name: "Phone", PublicKey: wgKey()}, api.CodeInvalidName},
		{"bad key", api.ExportDeviceRequest{Name: "phone", PublicKey: "abc"}, api.CodeInvalidKey},
		{"no such vnet", api.ExportDeviceRequest{Name: "phone", VNet: "nope", PublicKey: wgKey()}, api.CodeNotFound},
		{"route nobody announces", api.ExportDeviceRequest{Name: "phone", PublicKey: wgKey(), Routes: []string{"10.2.0.0/24"}}, api.CodeNotFound},
		{"name taken", api.ExportDeviceRequest{Name: "cl1", PublicKey: wgKey()}, api.CodeConflict},
	} {
		if err := admin.Do(ctx, http.MethodPost, "/v1/devices", bad.req, nil); !api.IsCode(err, bad.code) {
			t.Errorf("%s: got %v; want %s", bad.name, err, bad.code)
		}
	}
	if after := srv.Store().Dump(); string(after) != string(before) {
		t.Fatal("a refused export changed the state")
	}
	if err := cl.Do(ctx, http.MethodPost, "/v1/devices", api.ExportDeviceRequest{Name: "phone", PublicKey: wgKey()}, nil); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("peer credential exporting a device: got %v; want %s", err, api.CodeUnauthorized)
	}

	key := wgKey()
	var dc api.DeviceConfig
	if err := admin.Do(ctx, http.MethodPost, "/v1/devices", api.ExportDeviceRequest{Name: "phone", PublicKey: key, Routes: []string{"10.1.0.128/25"}}, &dc); err != nil {
		t.Fatal(err)
	}
	if dc.Peer.Role != api.RoleDevice || dc.Peer.PublicKey != key || dc.Peer.OverlayIP == "" || dc.Overlay != api.DefaultOverlay {
		t.Fatalf("device %+v overlay %s", dc.Peer, dc.Overlay)
	}
	if len(dc.Peers) != 2 || dc.Peers[0].Name != "cl1" || dc.Peers[1].Name != "gw1" {
		t.Fatalf("device config peers %+v; want cl1 and gw1", dc.Peers)
	}
	if g := dc.Peers[1]; g.Endpoint != "198.18.0.31:51820" || !slices.Equal(g.AllowedIPs, []string{gw.OverlayIP + "/32", "10.1.0.128/25"}) {
		t.Fatalf("gw1 in the device config: %+v; want the public endpoint and the asked route", g)
	}
	if !slices.Equal(dc.Routes, []api.DeviceRoute{{Prefix: "10.1.0.128/25", Gateway: "gw1"}}) {
		t.Fatalf("routes %+v", dc.Routes)
	}
	if got := peerNames(t, admin); !slices.Equal(got, []string{"cl1:client", "gw1:gateway", "phone:device"}) {
		t.Fatalf("peer list %v", got)
	}
	var listed []api.Peer
	if err := admin.Do(ctx, http.MethodGet, "/v1/peers", nil, &listed); err != nil {
		t.Fatal(err)
	}
	for _, p := range listed {
		if p.Name == "phone" && p.Online {
			t.Fatal("a device is listed online: the coordinators cannot know")
		}
	}
	waitMap(t, gwWatch, 5*time.Second, "gw1", "cl1,phone")
	if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/phone", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitMap(t, gwWatch, 5*time.Second, "gw1", "cl1")
}

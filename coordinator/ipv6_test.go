package coordinator

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// TestIPv6VNetGate: a vnet with an IPv6 overlay is refused with
// upgrade_required while a member of the cluster records feature level 2
// (a version that would drop the IPv6 overlay), IPv4 vnets are created as
// before meanwhile, and once that member is gone the dual-stack vnet is
// created and listed with both overlays.
func TestIPv6VNetGate(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	admin := c.admin(c.followers()[0])
	dual := api.CreateVNetRequest{Name: "ds", Overlay: "100.70.0.0/16,fd7a:115c:a1e0::/48"}

	if err := leader.srv.Raft().AddNonvoter("c4", "c4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.srv.raftApply(ctx, fsm.RegisterCoordinatorType, &fsm.RegisterCoordinator{Coordinator: state.Coordinator{
		Name: "c4", RaftAddr: "c4", APIURL: "https://127.0.0.1:1", FeatureLevel: 2, Version: "v1"}}); err != nil {
		t.Fatal(err)
	}
	for _, req := range []api.CreateVNetRequest{dual, {Name: "v6", Overlay: "fd7b::/48"}} {
		err := admin.Do(ctx, http.MethodPost, "/v1/vnets", req, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeUpgradeRequired || !slices.Equal(ae.Coordinators, []string{"c4"}) {
			t.Fatalf("vnet %s with a level-2 member: %v; want %s naming c4", req.Overlay, err, api.CodeUpgradeRequired)
		}
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "v4", Overlay: "100.80.0.0/16"}, nil); err != nil {
		t.Fatalf("ipv4 vnet with a level-2 member: %v", err)
	}

	if err := admin.Do(ctx, http.MethodDelete, "/v1/cluster/members/c4", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dual-stack vnet to be created once c4 is gone", func() bool {
		return admin.Do(ctx, http.MethodPost, "/v1/vnets", dual, nil) == nil
	})
	var vnets []api.VNet
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets", nil, &vnets); err != nil {
		t.Fatal(err)
	}
	got := map[string]api.VNet{}
	for _, v := range vnets {
		got[v.Name] = v
	}
	if v := got["ds"]; v.Overlay != "100.70.0.0/16" || v.Overlay6 != "fd7a:115c:a1e0::/48" {
		t.Fatalf("ds listed as %+v; want 100.70.0.0/16 and fd7a:115c:a1e0::/48", v)
	}
	if v := got["v4"]; v.Overlay != "100.80.0.0/16" || v.Overlay6 != "" {
		t.Fatalf("v4 listed as %+v; want 100.80.0.0/16 alone", v)
	}
	err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "bad", Overlay: "fd7c::/48,fd7d::/48"}, nil)
	if !api.IsCode(err, api.CodeInvalidCIDR) {
		t.Fatalf("two ipv6 overlays: %v; want %s", err, api.CodeInvalidCIDR)
	}

	// A peer joining the dual-stack vnet gets both addresses.
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: "ds", Uses: 2}, &tok); err != nil {
		t.Fatal(err)
	}
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "cl1", PublicKey: wgKey()})
	if err != nil {
		t.Fatal(err)
	}
	if j.OverlayIP != "100.70.0.1" || j.OverlayIP6 != "fd7a:115c:a1e0::1" || j.Overlay6 != "fd7a:115c:a1e0::/48" || j.Map == nil || j.Map.Self.OverlayIP6 != j.OverlayIP6 {
		t.Fatalf("joined as %s %s in %s %s; want 100.70.0.1 and fd7a:115c:a1e0::1 in both overlays", j.OverlayIP, j.OverlayIP6, j.Overlay, j.Overlay6)
	}
	// A coordinator at level 2 added now would give the next peer no IPv6
	// address: joins into the vnet wait for it to be upgraded (or gone).
	if err := leader.srv.Raft().AddNonvoter("c5", "c5", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.srv.raftApply(ctx, fsm.RegisterCoordinatorType, &fsm.RegisterCoordinator{Coordinator: state.Coordinator{
		Name: "c5", RaftAddr: "c5", APIURL: "https://127.0.0.1:1", FeatureLevel: 2, Version: "v1"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the join into the dual-stack vnet to be refused with upgrade_required", func() bool {
		_, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "cl2", PublicKey: wgKey()})
		return api.IsCode(err, api.CodeUpgradeRequired)
	})
	if _, err := apiclient.Join(ctx, mustToken(t, admin, "v4"), api.JoinRequest{Name: "cl3", PublicKey: wgKey()}); err != nil {
		t.Fatalf("join into the ipv4 vnet with a level-2 member: %v", err)
	}
}

func mustToken(t *testing.T, admin *apiclient.Client, vnet string) string {
	t.Helper()
	var tok api.CreateTokenResponse
	if err := admin.Do(context.Background(), http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: vnet}, &tok); err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// TestCreateVNetCommand: one IPv4 overlay is written as the command every
// version applies; anything with IPv6 (or a list) as the gated one.
func TestCreateVNetCommand(t *testing.T) {
	now := time.Unix(0, 0)
	for _, tt := range []struct {
		overlay         string
		want            fsm.MessageType
		shown, shown6   string
		overlaysWritten []string
	}{
		{"100.80.0.0/16", fsm.CreateVNetType, "100.80.0.0/16", "", nil},
		{"not a cidr", fsm.CreateVNetType, "not a cidr", "", nil},
		{"100.70.0.0/16,fd7a::/48", fsm.CreateVNetIPv6Type, "100.70.0.0/16", "fd7a::/48", []string{"100.70.0.0/16", "fd7a::/48"}},
		{"fd7a::/48, 100.70.0.0/16", fsm.CreateVNetIPv6Type, "100.70.0.0/16", "fd7a::/48", []string{"fd7a::/48", "100.70.0.0/16"}},
		{"fd7a::/48", fsm.CreateVNetIPv6Type, "fd7a::/48", "", []string{"fd7a::/48"}},
	} {
		t.Run(tt.overlay, func(t *testing.T) {
			typ, body, shown := createVNetCommand(api.CreateVNetRequest{Name: "n", Overlay: tt.overlay}, now, nil)
			if typ != tt.want || shown.Overlay != tt.shown || shown.Overlay6 != tt.shown6 {
				t.Fatalf("got type %d showing %q %q; want %d showing %q %q", typ, shown.Overlay, shown.Overlay6, tt.want, tt.shown, tt.shown6)
			}
			if c, ok := body.(*fsm.CreateVNetIPv6); ok && !slices.Equal(c.Overlays, tt.overlaysWritten) {
				t.Fatalf("wrote overlays %q; want %q", c.Overlays, tt.overlaysWritten)
			}
		})
	}
}

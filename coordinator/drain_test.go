package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// TestLookupDrainedLastResort checks that `meshd route lookup` answers what
// the peers do: a drained gateway still carries its route while no
// undrained healthy gateway can, and gives it up as soon as one can.
func TestLookupDrainedLastResort(t *testing.T) {
	_, admin := startSingle(t)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 2, AllowRoutes: []string{"10.1.0.0/16"}}, &tok); err != nil {
		t.Fatal(err)
	}
	join := func(name string, prio int) {
		t.Helper()
		if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: prio}}}); err != nil {
			t.Fatalf("join %s: %v", name, err)
		}
	}
	lookup := func() api.LookupResult {
		t.Helper()
		var res api.LookupResult
		if err := admin.Do(ctx, http.MethodGet, "/v1/routes/lookup?ip=10.1.0.7", nil, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	join("gw1", 200)
	if err := admin.Do(ctx, http.MethodPost, "/v1/peers/default/gw1/drain", nil, nil); err != nil {
		t.Fatal(err)
	}

	res := lookup()
	if res.ActiveGateway != "gw1" || len(res.Gateways) != 1 || !res.Gateways[0].Healthy || !res.Gateways[0].Drained {
		t.Fatalf("got %+v; want gw1 active (healthy, drained): no other gateway can carry the route", res)
	}
	var routes []api.RouteInfo
	if err := admin.Do(ctx, http.MethodGet, "/v1/routes", nil, &routes); err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].ActiveGateway != "gw1" {
		t.Fatalf("route list %+v; want 10.1.0.0/24 via gw1, as lookup says", routes)
	}

	join("gw2", 100)
	res = lookup()
	if res.ActiveGateway != "gw2" || len(res.Gateways) != 2 || res.Gateways[0].Name != "gw2" || !res.Gateways[1].Drained {
		t.Fatalf("got %+v; want gw2 active and listed first, drained gw1 after it", res)
	}

	if err := admin.Do(ctx, http.MethodPost, "/v1/peers/default/gw1/undrain", nil, nil); err != nil {
		t.Fatal(err)
	}
	if res = lookup(); res.ActiveGateway != "gw1" || res.Gateways[0].Drained {
		t.Fatalf("got %+v; want gw1 active again once undrained", res)
	}
}

// TestDrainRacesRemoval: a gateway removed while it is being drained gives
// the drain a clean "not found" (or the drain wins), never a failed request:
// the handler once looked the peer up by name and read it in a second step,
// and dereferenced nothing when a removal fell between the two.
func TestDrainRacesRemoval(t *testing.T) {
	_, admin := startSingle(t)
	ctx := context.Background()
	rounds := 30
	if testing.Short() {
		rounds = 10
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: rounds, AllowRoutes: []string{"10.1.0.0/16"}}, &tok); err != nil {
		t.Fatal(err)
	}
	for i := range rounds {
		name := fmt.Sprintf("gw%d", i)
		if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: 100}}, OmitMap: true}); err != nil {
			t.Fatal(err)
		}
		drained := make(chan error, 4)
		for range cap(drained) {
			go func() { drained <- admin.Do(ctx, http.MethodPost, "/v1/peers/default/"+name+"/drain", nil, nil) }()
		}
		if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/"+name, nil, nil); err != nil {
			t.Fatal(err)
		}
		for range cap(drained) {
			if err := <-drained; err != nil && !api.IsCode(err, api.CodeNotFound) {
				t.Fatalf("round %d: drain racing a removal: %v; want success or not found", i, err)
			}
		}
	}
}

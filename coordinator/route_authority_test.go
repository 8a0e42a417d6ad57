package coordinator

import (
	"context"
	"net/http"
	"testing"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// TestRouteTakeoverRefused is the attack of finding 7: a token that allows
// a /16 must not let its holder win a /24 inside it from the gateway that
// announces the /16, neither by a more specific prefix nor by a priority
// above what its token allows.
func TestRouteTakeoverRefused(t *testing.T) {
	_, admin := startSingle(t)
	ctx := context.Background()
	newToken := func(req api.CreateTokenRequest) string {
		t.Helper()
		var tok api.CreateTokenResponse
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", req, &tok); err != nil {
			t.Fatal(err)
		}
		return tok.Token
	}
	lookup := func(t *testing.T, ip string) api.LookupResult {
		t.Helper()
		var res api.LookupResult
		if err := admin.Do(ctx, http.MethodGet, "/v1/routes/lookup?ip="+ip, nil, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	site := newToken(api.CreateTokenRequest{Uses: 1, AllowRoutes: []string{"10.1.0.0/16"}})
	if _, err := apiclient.Join(ctx, site, api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Name: "real", PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.0.0/16", Priority: 500}}}); err != nil {
		t.Fatal(err)
	}
	hundred := 100
	other := newToken(api.CreateTokenRequest{Uses: 5, AllowRoutes: []string{"10.1.0.0/16"}, MaxPriority: &hundred})
	for _, tt := range []struct {
		name  string
		route api.Route
	}{
		{"more specific prefix", api.Route{Prefix: "10.1.2.0/24", Priority: 10}},
		{"priority above the cap", api.Route{Prefix: "10.1.0.0/16", Priority: 1000}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := apiclient.Join(ctx, other, api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Name: "thief", PublicKey: wgKey(), Routes: []api.Route{tt.route}})
			if !api.IsCode(err, api.CodeRouteNotAllowed) {
				t.Fatalf("got %v; want %s", err, api.CodeRouteNotAllowed)
			}
			if res := lookup(t, "10.1.2.7"); res.ActiveGateway != "real" || res.Prefix == nil || *res.Prefix != "10.1.0.0/16" {
				t.Fatalf("lookup %+v; want 10.1.0.0/16 via real", res)
			}
		})
	}
	// A standby within the cap is an HA partner, not a thief.
	if _, err := apiclient.Join(ctx, other, api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Name: "standby", PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.0.0/16", Priority: 100}}}); err != nil {
		t.Fatal(err)
	}
	// A token that lists the /24 exactly may carve it out; route overlaps
	// says so.
	exact := newToken(api.CreateTokenRequest{Uses: 1, AllowRoutes: []string{"10.1.2.0/24"}})
	if _, err := apiclient.Join(ctx, exact, api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Name: "lab", PublicKey: wgKey(), Routes: []api.Route{{Prefix: "10.1.2.0/24", Priority: 10}}}); err != nil {
		t.Fatal(err)
	}
	if res := lookup(t, "10.1.2.7"); res.ActiveGateway != "lab" {
		t.Fatalf("lookup %+v; want the /24 via lab", res)
	}
	var ov []api.Overlap
	if err := admin.Do(ctx, http.MethodGet, "/v1/routes/overlaps", nil, &ov); err != nil {
		t.Fatal(err)
	}
	if len(ov) != 1 || ov[0].MoreSpecific != "b" || ov[0].B.Prefix != "10.1.2.0/24" || ov[0].Unauthorized ||
		len(ov[0].SpecificGateways) != 1 || ov[0].SpecificGateways[0] != (api.OverlapGateway{Name: "lab", AllowedExactly: true}) {
		t.Fatalf("overlaps %+v; want the /24 (b) more specific, by lab, allowed exactly", ov)
	}
	var toks []api.Token
	if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	capped := 0
	for _, tk := range toks {
		if tk.MaxPriority != nil && *tk.MaxPriority == 100 {
			capped++
		}
	}
	if capped != 1 {
		t.Fatalf("tokens %+v; want one listed with max_priority 100", toks)
	}
}

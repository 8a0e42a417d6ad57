package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// joinGateway joins a gateway announcing routes with a new token for vnet.
func joinGateway(t *testing.T, vnet, name string, routes ...string) {
	t.Helper()
	code, out, errOut := meshdErr(t, "token", "create", "--vnet", vnet, "--allow-routes", strings.Join(routes, ","), "--json")
	var tok api.CreateTokenResponse
	if err := json.Unmarshal([]byte(out), &tok); code != 0 || err != nil {
		t.Fatalf("token create: exit %d %q %q", code, out, errOut)
	}
	k, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	req := api.JoinRequest{Name: name, PublicKey: k.Public().String()}
	for _, r := range routes {
		req.Routes = append(req.Routes, api.Route{Prefix: r, Priority: 100})
	}
	if _, err := apiclient.Join(context.Background(), tok.Token, req); err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
}

// TestRouteLookupCommand: lookup takes an address or a CIDR, answers one
// vnet with today's object and --all-vnets with an array; every gateway
// carries its state word.
func TestRouteLookupCommand(t *testing.T) {
	startCoordinator(t)
	if code, _, errOut := meshdErr(t, "vnet", "create", "branch", "--overlay", "100.112.0.0/16"); code != 0 {
		t.Fatal(errOut)
	}
	joinGateway(t, "default", "gw1", "192.168.2.0/24")
	joinGateway(t, "branch", "gwb", "192.168.2.0/28")

	// One vnet: the object scripts already read.
	code, out, errOut := meshdErr(t, "route", "lookup", "192.168.2.1", "--json")
	var one map[string]json.RawMessage
	if code != 0 || json.Unmarshal([]byte(out), &one) != nil {
		t.Fatalf("lookup --json: exit %d %q %q", code, out, errOut)
	}
	for _, k := range []string{"ip", "vnet", "prefix", "active_gateway", "gateways"} {
		if _, ok := one[k]; !ok {
			t.Errorf("lookup --json %q lacks %q", out, k)
		}
	}
	var r api.LookupResult
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.IP != "192.168.2.1" || r.VNet != "default" || r.Prefix == nil || *r.Prefix != "192.168.2.0/24" ||
		len(r.Gateways) != 1 || r.Gateways[0].Name != "gw1" || r.Gateways[0].State != "active" || r.Why != "active: highest-priority healthy gateway" {
		t.Fatalf("lookup: %+v (%v); want 192.168.2.0/24 in default via gw1, active (it joined a moment ago)", r, err)
	}

	// A CIDR, once refused.
	code, out, _ = meshdErr(t, "route", "lookup", "192.168.2.1/28", "--vnet", "default", "--json")
	r = api.LookupResult{}
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || r.Prefix == nil || *r.Prefix != "192.168.2.0/24" || r.Network != "192.168.2.0/28" {
		t.Fatalf("lookup of a CIDR: exit %d %+v; want it covered by 192.168.2.0/24", code, r)
	}
	code, out, _ = meshdErr(t, "route", "lookup", "192.168.0.0/16", "--json")
	r = api.LookupResult{}
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || r.Prefix != nil || len(r.Inside) != 1 || r.Inside[0].Prefix != "192.168.2.0/24" {
		t.Fatalf("lookup of a wider CIDR: exit %d %+v; want no covering route and 192.168.2.0/24 inside", code, r)
	}

	// Every vnet with a match, as an array.
	code, out, _ = meshdErr(t, "route", "lookup", "192.168.2.1", "--all-vnets", "--json")
	var all []api.LookupResult
	if err := json.Unmarshal([]byte(out), &all); code != 0 || err != nil || len(all) != 2 || all[0].VNet != "branch" || *all[0].Prefix != "192.168.2.0/28" || all[1].VNet != "default" {
		t.Fatalf("lookup --all-vnets: exit %d %q; want branch's /28 and default's /24", code, out)
	}
	code, out, _ = meshdErr(t, "route", "lookup", "10.9.9.9", "--all-vnets", "--json")
	if err := json.Unmarshal([]byte(out), &all); code != 0 || err != nil || all == nil || len(all) != 0 {
		t.Fatalf("lookup --all-vnets with no match: exit %d %q; want []", code, out)
	}

	code, out, _ = meshdErr(t, "route", "lookup", "192.168.2.0/24")
	if code != 0 || !strings.Contains(out, "192.168.2.0/24 in vnet default: 192.168.2.0/24 via gw1 (active: highest-priority healthy gateway)") || !strings.Contains(out, "gw1(100) active: highest-priority healthy gateway") {
		t.Fatalf("lookup text: exit %d %q", code, out)
	}
	code, out, _ = meshdErr(t, "route", "list")
	if code != 0 || !strings.Contains(out, "gw1(100,active)") {
		t.Fatalf("route list: %q; want gw1(100,active)", out)
	}
	code, out, _ = meshdErr(t, "peer", "list", "--json")
	var peers []api.Peer
	if err := json.Unmarshal([]byte(out), &peers); code != 0 || err != nil || len(peers) != 2 || peers[0].GatewayState != "active" || peers[1].GatewayState != "active" {
		t.Fatalf("peer list --json %q; want both gateways active", out)
	}

	for _, bad := range [][]string{{"nope"}, {"192.168.2.1", "--vnet", "nosuch"}, {"192.168.2.1", "--vnet", "default", "--all-vnets"}} {
		if code, _, errOut := meshdErr(t, append([]string{"route", "lookup"}, bad...)...); code != 1 || errOut == "" {
			t.Errorf("lookup %v: exit %d, stderr %q; want exit 1 with why", bad, code, errOut)
		}
	}
}

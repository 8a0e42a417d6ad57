package netmap

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

func TestBestEndpoint(t *testing.T) {
	for _, tt := range []struct {
		name string
		eps  []string
		want string
	}{
		{"none", nil, ""},
		{"public v4 over private", []string{"10.99.0.31:51820", "203.0.113.7:41641"}, "203.0.113.7:41641"},
		{"public v4 over public v6", []string{"[2001:db8::7]:51820", "203.0.113.7:51820"}, "203.0.113.7:51820"},
		{"public v6 over private v4", []string{"192.168.1.7:51820", "[2001:db8::7]:51820"}, "[2001:db8::7]:51820"},
		{"private v4 over ULA", []string{"[fd00::7]:51820", "192.168.1.7:51820"}, "192.168.1.7:51820"},
		{"CGNAT is not public", []string{"100.64.1.2:51820", "198.18.0.31:51820"}, "198.18.0.31:51820"},
		{"first of a rank wins", []string{"10.0.0.1:1", "10.0.0.2:2"}, "10.0.0.1:1"},
		{"mapped v4 unmapped", []string{"[::ffff:203.0.113.9]:51820"}, "203.0.113.9:51820"},
		{"never loopback, link-local, zero port or garbage", []string{"127.0.0.1:51820", "169.254.1.1:51820", "[fe80::1]:51820", "203.0.113.1:0", "junk"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := BestEndpoint(tt.eps); got != tt.want {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// TestDevice: a device's configuration lists the agents its vnet's policy
// lets it see (never another device), each route at its active gateway,
// and leaves out, with a reason, a route without a healthy gateway or
// whose gateway it may not see.
func TestDevice(t *testing.T) {
	s := testStore(t)
	for _, d := range []state.DeviceSpec{
		{PeerID: "d1", Name: "phone", VNet: "default", PublicKey: key()},
		{PeerID: "d2", Name: "tablet", VNet: "default", PublicKey: key()},
	} {
		if _, err := s.AddDevice(d, t0); err != nil {
			t.Fatal(err)
		}
	}
	pfx := netip.MustParsePrefix
	type route struct{ prefix, gateway string }
	for _, tt := range []struct {
		name        string
		policy      string
		want        []netip.Prefix
		healthy     Healthy
		peers       []string
		routes      []route
		skipped     int
		wantErrCode string
	}{
		{name: "every route", healthy: healthyExcept(), peers: []string{"gwa1", "gwa2", "gwb1", "laptop"},
			routes: []route{{"192.168.10.0/24", "gwa1"}, {"192.168.10.128/25", "gwb1"}}},
		{name: "the primary is down", healthy: healthyExcept("gwa1"), peers: []string{"gwa1", "gwa2", "gwb1", "laptop"},
			routes: []route{{"192.168.10.0/24", "gwa2"}, {"192.168.10.128/25", "gwb1"}}},
		{name: "no gateway healthy", healthy: healthyExcept("gwb1"), want: []netip.Prefix{pfx("192.168.10.192/26")},
			peers: []string{"gwa1", "gwa2", "gwb1", "laptop"}, skipped: 1},
		{name: "a subnet inside a route", healthy: healthyExcept(), want: []netip.Prefix{pfx("192.168.10.0/25")},
			peers: []string{"gwa1", "gwa2", "gwb1", "laptop"}, routes: []route{{"192.168.10.0/25", "gwa1"}}},
		{name: "nobody covers it", healthy: healthyExcept(), want: []netip.Prefix{pfx("10.0.0.0/8")}, wantErrCode: api.CodeNotFound},
		{name: "the policy hides a gateway", healthy: healthyExcept(),
			policy: `{"acls": [{"action": "accept", "src": ["peer:phone"], "dst": ["192.168.10.0/25:443"]}]}`,
			peers:  []string{"gwa1", "gwa2"}, routes: []route{{"192.168.10.0/24", "gwa1"}}, skipped: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.policy != "" { // the last case: the policy stays
				if _, err := s.SetPolicy("default", []byte(tt.policy), "admin", t0, 0); err != nil {
					t.Fatal(err)
				}
			}
			s.Read(func(tb *state.Tables, idx uint64) {
				dc, err := Device(tb, idx, "d1", tt.want, tt.healthy)
				if tt.wantErrCode != "" {
					if !api.IsCode(err, tt.wantErrCode) {
						t.Fatalf("got %v; want %s", err, tt.wantErrCode)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				var peers []string
				allowed := map[string][]string{}
				for _, p := range dc.Peers {
					peers = append(peers, p.Name)
					allowed[p.Name] = p.AllowedIPs[1:]
					if ip := overlayOf(tb, p.Name) + "/32"; p.AllowedIPs[0] != ip {
						t.Errorf("%s's first allowed IP %s; want its overlay %s", p.Name, p.AllowedIPs[0], ip)
					}
				}
				if !slices.Equal(peers, tt.peers) {
					t.Fatalf("peers %v; want %v", peers, tt.peers)
				}
				var routes []route
				for _, r := range dc.Routes {
					routes = append(routes, route{r.Prefix, r.Gateway})
					if !slices.Contains(allowed[r.Gateway], r.Prefix) {
						t.Errorf("route %s not in %s's allowed IPs %v", r.Prefix, r.Gateway, allowed[r.Gateway])
					}
				}
				if !slices.Equal(routes, tt.routes) || len(dc.Skipped) != tt.skipped {
					t.Fatalf("routes %v skipped %v; want %v and %d skipped", routes, dc.Skipped, tt.routes, tt.skipped)
				}
			})
		})
	}
}

func overlayOf(tb *state.Tables, name string) string {
	for _, p := range tb.Peers {
		if p.Name == name {
			return p.OverlayIP.String()
		}
	}
	return ""
}

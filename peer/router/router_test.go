package router

import (
	"net/netip"
	"slices"
	"testing"
)

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestFakeReconciles(t *testing.T) {
	f := &Fake{Dev: "meshd0"}
	full := &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.10.0/24", "192.168.20.0/24"), Forward: true, ClampMSS: true}
	for _, tt := range []struct {
		name string
		cfg  *Config
		want []string
	}{
		{"first map", full, []string{
			"addr add 100.96.0.5/32 dev meshd0",
			"route add 100.96.0.0/12 dev meshd0", "route add 192.168.10.0/24 dev meshd0", "route add 192.168.20.0/24 dev meshd0",
			"forwarding on", "firewall on",
		}},
		{"same map again changes nothing", full, nil},
		{"a site goes away", &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.20.0/24"), Forward: true, ClampMSS: true},
			[]string{"route del 192.168.10.0/24 dev meshd0"}},
		{"snat asked for", &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.20.0/24"), Forward: true, ClampMSS: true, SNAT: true},
			[]string{"firewall on"}},
		{"address moves", &Config{Addrs: pfxs("100.96.0.9/32"), Routes: pfxs("100.96.0.0/12", "192.168.20.0/24"), Forward: true, ClampMSS: true, SNAT: true},
			[]string{"addr del 100.96.0.5/32 dev meshd0", "addr add 100.96.0.9/32 dev meshd0"}},
		{"close removes everything", nil, []string{
			"addr del 100.96.0.9/32 dev meshd0",
			"route del 100.96.0.0/12 dev meshd0", "route del 192.168.20.0/24 dev meshd0",
			"forwarding off", "firewall off",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.Set(tt.cfg); err != nil {
				t.Fatal(err)
			}
			if got := f.Ops(); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
}

func TestPlanIgnoresOrderAndHostBits(t *testing.T) {
	have := State{Routes: pfxs("10.0.0.0/8", "192.168.10.0/24")}
	p := MakePlan(have, &Config{Routes: pfxs("192.168.10.0/24", "10.0.0.0/8")})
	if !p.Empty() {
		t.Fatalf("reordered routes produced %q", p.Ops("x"))
	}
}

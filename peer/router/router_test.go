package router

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// rt parses "10.1.0.0/24" or "10.1.0.0/24 src 100.96.0.5".
func rt(s string) Route {
	var r Route
	dst, src, ok := strings.Cut(s, " src ")
	r.Dst = netip.MustParsePrefix(dst)
	if ok {
		r.Src = netip.MustParseAddr(src)
	}
	return r
}

func rts(ss ...string) []Route {
	var out []Route
	for _, s := range ss {
		out = append(out, rt(s))
	}
	return out
}

// gateway is what a gateway with the overlay address .5 has installed for
// gatewayConfig.
var gateway = State{
	MTU:    DefaultMTU,
	Addrs:  pfxs("100.96.0.5/32"),
	Routes: rts("100.96.0.0/12 src 100.96.0.5", "192.168.10.0/24 src 100.96.0.5"),
	// Forwarding, MSS clamping and SNAT as a gateway started with --snat.
	Forward: true, ClampMSS: true, SNAT: true,
}

func gatewayConfig() *Config {
	return &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.10.0/24"), Forward: true, ClampMSS: true, SNAT: true}
}

func TestMakePlan(t *testing.T) {
	for _, tt := range []struct {
		name    string
		have    State
		want    *Config
		ops     []string
		skipped []netip.Prefix
	}{
		{
			name: "fresh interface",
			have: State{MTU: DefaultMTU},
			want: gatewayConfig(),
			ops: []string{
				"addr add 100.96.0.5/32 dev meshd0",
				"route add 100.96.0.0/12 dev meshd0 src 100.96.0.5",
				"route add 192.168.10.0/24 dev meshd0 src 100.96.0.5",
				"forwarding on", "snat on", "mss clamp on",
			},
		},
		{name: "all in place", have: gateway, want: gatewayConfig()},
		{
			name: "order, duplicates and host bits do not matter",
			have: gateway,
			want: &Config{Addrs: pfxs("100.96.0.5/32", "100.96.0.5/32"), Routes: pfxs("192.168.10.7/24", "100.96.0.0/12", "192.168.10.0/24"),
				Forward: true, ClampMSS: true, SNAT: true},
		},
		{
			name: "a site goes away, another comes",
			have: gateway,
			want: &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "10.20.0.0/16"), Forward: true, ClampMSS: true, SNAT: true},
			ops:  []string{"route del 192.168.10.0/24 dev meshd0", "route add 10.20.0.0/16 dev meshd0 src 100.96.0.5"},
		},
		{
			name: "the address moves: new first, routes follow, old last",
			have: gateway,
			want: &Config{Addrs: pfxs("100.96.0.9/32"), Routes: pfxs("100.96.0.0/12", "192.168.10.0/24"), Forward: true, ClampMSS: true, SNAT: true},
			ops: []string{
				"addr add 100.96.0.9/32 dev meshd0",
				"route replace 100.96.0.0/12 dev meshd0 src 100.96.0.9",
				"route replace 192.168.10.0/24 dev meshd0 src 100.96.0.9",
				"addr del 100.96.0.5/32 dev meshd0",
			},
		},
		{
			name: "addresses in one subnet are told apart",
			have: State{MTU: DefaultMTU, Addrs: pfxs("100.96.0.5/12")},
			want: &Config{Addrs: pfxs("100.96.0.9/12")},
			ops:  []string{"addr add 100.96.0.9/12 dev meshd0", "addr del 100.96.0.5/12 dev meshd0"},
		},
		{
			name: "prefix length is part of an address",
			have: State{MTU: DefaultMTU, Addrs: pfxs("100.96.0.5/32")},
			want: &Config{Addrs: pfxs("100.96.0.5/12")},
			ops:  []string{"addr add 100.96.0.5/12 dev meshd0", "addr del 100.96.0.5/32 dev meshd0"},
		},
		{
			name:    "a destination someone else routes is left to them",
			have:    State{MTU: DefaultMTU, Addrs: pfxs("100.96.0.5/32"), Occupied: pfxs("192.168.1.0/24")},
			want:    &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("192.168.1.0/24", "10.1.0.0/24")},
			ops:     []string{"route add 10.1.0.0/24 dev meshd0 src 100.96.0.5"},
			skipped: pfxs("192.168.1.0/24"),
		},
		{
			name: "a route meshd already has stays even if another appears",
			have: State{MTU: DefaultMTU, Routes: rts("10.1.0.0/24"), Occupied: pfxs("10.1.0.0/24")},
			want: &Config{Routes: pfxs("10.1.0.0/24")},
		},
		{
			name: "IPv6 routes take the IPv6 source; no IPv4 address, no IPv4 source",
			have: State{MTU: DefaultMTU},
			want: &Config{Addrs: pfxs("fd00::5/128"), Routes: pfxs("fd00::/64", "10.1.0.0/24")},
			ops:  []string{"addr add fd00::5/128 dev meshd0", "route add 10.1.0.0/24 dev meshd0", "route add fd00::/64 dev meshd0 src fd00::5"},
		},
		{
			name: "dual-stack gateway: each family's routes take that family's address, both forwardings on",
			have: State{MTU: DefaultMTU},
			want: &Config{Addrs: pfxs("fd7a:115c:a1e0::1/128", "100.70.0.1/32"), Routes: pfxs("100.70.0.0/16", "fd7a:115c:a1e0::/48", "fd00:20::/64", "10.20.0.0/24"),
				Forward: true, Forward6: true},
			ops: []string{"addr add 100.70.0.1/32 dev meshd0", "addr add fd7a:115c:a1e0::1/128 dev meshd0",
				"route add 10.20.0.0/24 dev meshd0 src 100.70.0.1", "route add 100.70.0.0/16 dev meshd0 src 100.70.0.1",
				"route add fd00:20::/64 dev meshd0 src fd7a:115c:a1e0::1", "route add fd7a:115c:a1e0::/48 dev meshd0 src fd7a:115c:a1e0::1",
				"forwarding on", "ipv6 forwarding on"},
		},
		{
			name: "an IPv6 route withdrawn: its route goes, IPv6 forwarding is put back, IPv4 stays",
			have: State{MTU: DefaultMTU, Addrs: pfxs("100.70.0.1/32", "fd7a:115c:a1e0::1/128"), Forward: true, Forward6: true,
				Routes: rts("100.70.0.0/16 src 100.70.0.1", "fd00:20::/64 src fd7a:115c:a1e0::1", "fd7a:115c:a1e0::/48 src fd7a:115c:a1e0::1")},
			want: &Config{Addrs: pfxs("100.70.0.1/32", "fd7a:115c:a1e0::1/128"), Routes: pfxs("100.70.0.0/16", "fd7a:115c:a1e0::/48"), Forward: true},
			ops:  []string{"route del fd00:20::/64 dev meshd0", "ipv6 forwarding off"},
		},
		{
			name: "MTU",
			have: State{MTU: 1500},
			want: &Config{MTU: 1380},
			ops:  []string{"link set meshd0 mtu 1380"},
		},
		{
			name: "MTU 0 is the default",
			have: State{MTU: 1500},
			want: &Config{},
			ops:  []string{"link set meshd0 mtu 1420"},
		},
		{
			name: "SNAT asked for later",
			have: State{MTU: DefaultMTU, Forward: true, ClampMSS: true},
			want: &Config{Forward: true, ClampMSS: true, SNAT: true},
			ops:  []string{"snat on"},
		},
		{
			name: "no longer a gateway",
			have: gateway,
			want: &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "192.168.10.0/24")},
			ops:  []string{"forwarding off", "snat off", "mss clamp off"},
		},
		{
			name: "nil removes everything but leaves the MTU",
			have: State{MTU: 1380, Addrs: gateway.Addrs, Routes: gateway.Routes, Forward: true, SNAT: true, ClampMSS: true,
				Occupied: pfxs("192.168.1.0/24")},
			want: nil,
			ops: []string{
				"route del 100.96.0.0/12 dev meshd0", "route del 192.168.10.0/24 dev meshd0",
				"addr del 100.96.0.5/32 dev meshd0",
				"forwarding off", "snat off", "mss clamp off",
			},
		},
		{name: "nil on nothing", have: State{MTU: 1500}, want: nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := MakePlan(tt.have, tt.want)
			if got := p.Ops("meshd0"); !slices.Equal(got, tt.ops) {
				t.Errorf("got %q; want %q", got, tt.ops)
			}
			if !slices.Equal(p.Skipped, tt.skipped) {
				t.Errorf("skipped: got %v; want %v", p.Skipped, tt.skipped)
			}
			if got, want := p.Empty(), len(tt.ops) == 0; got != want {
				t.Errorf("Empty() = %v; want %v", got, want)
			}
			// Carried out, the plan leaves nothing to do.
			after := tt.have.Apply(p)
			if again := MakePlan(after, tt.want); !again.Empty() {
				t.Errorf("after the plan, still: %q", again.Ops("meshd0"))
			}
		})
	}
}

func TestApplyLeavesStateAlone(t *testing.T) {
	have := gateway.Apply(Plan{})
	p := MakePlan(have, nil)
	after := have.Apply(p)
	if !reflect.DeepEqual(have, gateway) {
		t.Errorf("Apply modified its receiver: got %+v; want %+v", have, gateway)
	}
	want := State{MTU: DefaultMTU}
	if !reflect.DeepEqual(after, want) {
		t.Errorf("got %+v; want %+v", after, want)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  *Config
		ok   bool
	}{
		{"nil", nil, true},
		{"empty", &Config{}, true},
		{"gateway", gatewayConfig(), true},
		{"zero address", &Config{Addrs: []netip.Prefix{{}}}, false},
		{"unspecified address", &Config{Addrs: pfxs("0.0.0.0/0")}, false},
		{"zero route", &Config{Routes: []netip.Prefix{{}}}, false},
		{"mapped route", &Config{Routes: pfxs("::ffff:10.0.0.0/120")}, false},
		{"MTU too small", &Config{MTU: 67}, false},
		{"MTU too large", &Config{MTU: 65536}, false},
		{"MTU negative", &Config{MTU: -1}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if got := err == nil; got != tt.ok {
				t.Errorf("got %v; want ok %v", err, tt.ok)
			}
		})
	}
}

// TestFake runs one router through the life of a gateway, each step
// against the state the previous ones left.
func TestFake(t *testing.T) {
	f := NewFake("meshd0")
	if err := f.Up(); err != nil {
		t.Fatal(err)
	}
	if got, want := f.Ops(), []string{"link set meshd0 up"}; !slices.Equal(got, want) {
		t.Fatalf("got %q; want %q", got, want)
	}
	for _, tt := range []struct {
		name    string
		occupy  []netip.Prefix // routes another owner adds before the step
		cfg     *Config
		wantErr bool
		want    []string
	}{
		{name: "first map", cfg: gatewayConfig(), want: []string{
			"addr add 100.96.0.5/32 dev meshd0",
			"route add 100.96.0.0/12 dev meshd0 src 100.96.0.5",
			"route add 192.168.10.0/24 dev meshd0 src 100.96.0.5",
			"forwarding on", "snat on", "mss clamp on",
		}},
		{name: "same map again changes nothing", cfg: gatewayConfig()},
		{name: "malformed config changes nothing", cfg: &Config{Routes: []netip.Prefix{{}}}, wantErr: true},
		{
			name:   "a site that collides with a local route is skipped",
			occupy: pfxs("172.16.0.0/16"),
			cfg:    &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12", "172.16.0.0/16"), Forward: true, ClampMSS: true, SNAT: true},
			want:   []string{"route del 192.168.10.0/24 dev meshd0"},
		},
		{
			name: "SNAT dropped, MTU lowered",
			cfg:  &Config{Addrs: pfxs("100.96.0.5/32"), Routes: pfxs("100.96.0.0/12"), Forward: true, ClampMSS: true, MTU: 1380},
			want: []string{"link set meshd0 mtu 1380", "snat off"},
		},
		{name: "close removes everything", cfg: nil, want: []string{
			"route del 100.96.0.0/12 dev meshd0",
			"addr del 100.96.0.5/32 dev meshd0",
			"forwarding off", "mss clamp off",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.Occupy(tt.occupy...)
			var err error
			if tt.cfg == nil {
				err = f.Close()
			} else {
				err = f.Set(tt.cfg)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v; want error %v", err, tt.wantErr)
			}
			if got := f.Ops(); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q; want %q", got, tt.want)
			}
		})
	}
	st := f.State()
	if len(st.Addrs)+len(st.Routes) != 0 || st.Forward || st.SNAT || st.ClampMSS {
		t.Errorf("after Close: got %+v; want nothing installed", st)
	}
}

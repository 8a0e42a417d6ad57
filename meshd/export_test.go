package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"rsc.io/qr"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// section is one [Interface] or [Peer] of a wg-quick config.
type section struct {
	kind   string
	values map[string]string
}

// parseWGQuick reads a wg-quick config as wg-quick does: sections of
// "Key = Value" lines, '#' comments.
func parseWGQuick(t *testing.T, text string) []section {
	t.Helper()
	var out []section
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			out = append(out, section{kind: strings.Trim(line, "[]"), values: map[string]string{}})
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || len(out) == 0 {
			t.Fatalf("line %q is not Key = Value inside a section", line)
		}
		out[len(out)-1].values[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out
}

func TestWGQuickConfig(t *testing.T) {
	priv, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dc := &api.DeviceConfig{
		Peer:    api.Peer{Name: "phone", VNet: "default", Role: api.RoleDevice, OverlayIP: "100.96.0.9", PublicKey: priv.Public().String()},
		Overlay: "100.96.0.0/12",
		Peers: []api.DevicePeer{
			{Name: "cl1", Role: api.RoleClient, PublicKey: "Y2wxY2wxY2wxY2wxY2wxY2wxY2wxY2wxY2wxY2wxY2w=", Endpoint: "198.18.0.41:41641", AllowedIPs: []string{"100.96.0.4/32"}},
			{Name: "gwb1", Role: api.RoleGateway, PublicKey: "Z3diMWd3YjFnd2IxZ3diMWd3YjFnd2IxZ3diMWd3YjE=", AllowedIPs: []string{"100.96.0.3/32", "192.168.20.0/24"}},
		},
	}
	for _, tt := range []struct {
		name     string
		priv     *wgcfg.Key
		wantPriv string
	}{
		{"generated key", &priv, priv.String()},
		{"own key: placeholder", nil, PrivateKeyPlaceholder},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := parseWGQuick(t, wgQuickConfig(dc, tt.priv))
			want := []section{
				{"Interface", map[string]string{"PrivateKey": tt.wantPriv, "Address": "100.96.0.9/32"}},
				{"Peer", map[string]string{"PublicKey": dc.Peers[0].PublicKey, "Endpoint": "198.18.0.41:41641", "AllowedIPs": "100.96.0.4/32", "PersistentKeepalive": "25"}},
				{"Peer", map[string]string{"PublicKey": dc.Peers[1].PublicKey, "AllowedIPs": "100.96.0.3/32, 192.168.20.0/24", "PersistentKeepalive": "25"}},
			}
			if len(got) != len(want) {
				t.Fatalf("got %d sections; want %d: %v", len(got), len(want), got)
			}
			for i := range want {
				if got[i].kind != want[i].kind || !mapsEqual(got[i].values, want[i].values) {
					t.Errorf("section %d: got %s %v; want %s %v", i, got[i].kind, got[i].values, want[i].kind, want[i].values)
				}
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRenderQR reads the half-block rendering back into modules: every
// module of the code is where it should be, and the quiet zone is light.
func TestRenderQR(t *testing.T) {
	c, err := qr.Encode("[Interface]\nPrivateKey = x\nAddress = 100.96.0.9/32\n", qr.L)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(renderQR(c.Size, c.Black), "\n"), "\n")
	width := c.Size + 2*qrQuiet
	if want := (width + 1) / 2; len(lines) != want {
		t.Fatalf("got %d lines; want %d", len(lines), want)
	}
	for row, line := range lines {
		cells := []rune(line)
		if len(cells) != width {
			t.Fatalf("line %d has %d cells; want %d", row, len(cells), width)
		}
		for col, r := range cells {
			i := slices.Index([]rune{' ', '▄', '▀', '█'}, r) // bit 1: upper light, bit 0: lower light
			if i < 0 {
				t.Fatalf("line %d cell %d is %q", row, col, r)
			}
			x, y := col-qrQuiet, 2*row-qrQuiet
			for k, yy := range []int{y, y + 1} {
				lightGot := i&(2>>k) != 0
				lightWant := x < 0 || yy < 0 || x >= c.Size || yy >= c.Size || !c.Black(x, yy)
				if lightGot != lightWant {
					t.Fatalf("module (%d,%d): light %v; want %v", x, yy, lightGot, lightWant)
				}
			}
		}
	}
}

func TestAgo(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s ago"},
		{0, "0s ago"},
		{12 * time.Second, "12s ago"},
		{59*time.Second + 999*time.Millisecond, "59s ago"},
		{3 * time.Minute, "3m ago"},
		{3*time.Minute + 59*time.Second, "3m ago"},
		{5 * time.Hour, "5h ago"},
		{47 * time.Hour, "47h ago"},
		{50 * time.Hour, "2d ago"},
	} {
		if got := ago(tt.d); got != tt.want {
			t.Errorf("ago(%s) = %q; want %q", tt.d, got, tt.want)
		}
	}
}

// TestWGQuickConfigDualStack: a device of a dual-stack vnet gets both of
// its addresses, and reaches each peer at both of its.
func TestWGQuickConfigDualStack(t *testing.T) {
	priv, err := wgcfg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dc := &api.DeviceConfig{
		Peer: api.Peer{Name: "phone", VNet: "ds", Role: api.RoleDevice, OverlayIP: "100.70.0.9", OverlayIP6: "fd7a:115c:a1e0::9", PublicKey: priv.Public().String()},
		Peers: []api.DevicePeer{{Name: "gw61", Role: api.RoleGateway, PublicKey: "Z3diMWd3YjFnd2IxZ3diMWd3YjFnd2IxZ3diMWd3YjE=",
			AllowedIPs: []string{"100.70.0.1/32", "fd7a:115c:a1e0::1/128", "fd00:10::/64"}}},
	}
	got := parseWGQuick(t, wgQuickConfig(dc, &priv))
	if len(got) != 2 || got[0].values["Address"] != "100.70.0.9/32, fd7a:115c:a1e0::9/128" ||
		got[1].values["AllowedIPs"] != "100.70.0.1/32, fd7a:115c:a1e0::1/128, fd00:10::/64" {
		t.Fatalf("got %v; want both addresses of the device and the gateway", got)
	}
}

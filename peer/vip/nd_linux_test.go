package vip

import (
	"net"
	"net/netip"
	"testing"
)

// TestNDFrames: the neighbor discovery frames the IPv6 VIP sends carry a
// valid ICMPv6 checksum, hop limit 255 and the right link-layer option,
// and parse back as what they are.
func TestNDFrames(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x21}
	vip := netip.MustParseAddr("fd00:198:19:10::1")
	host := netip.MustParseAddr("fd00:198:19:10::10")
	if got := solicitedNode(vip).String(); got != "ff02::1:ff00:1" {
		t.Fatalf("solicited-node group %s; want ff02::1:ff00:1", got)
	}
	if got := multicastMAC(solicitedNode(vip)).String(); got != "33:33:ff:00:00:01" {
		t.Fatalf("group MAC %s; want 33:33:ff:00:00:01", got)
	}
	for _, tt := range []struct {
		name         string
		typ, flags   byte
		src, dst     netip.Addr
		wantLen      int
		wantOpt      byte
		wantOptInLen bool
	}{
		{"solicited advertisement", icmpNA, naRouter | naSolicited | naOverride, vip, host, 54 + 32, 2, true},
		{"unsolicited advertisement", icmpNA, naRouter | naOverride, vip, allNodes, 54 + 32, 2, true},
		{"probe from the unspecified address", icmpNS, 0, netip.IPv6Unspecified(), solicitedNode(vip), 54 + 24, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := ndFrame(tt.typ, tt.flags, mac, multicastMAC(tt.dst), tt.src, tt.dst, vip)
			if len(f) != tt.wantLen {
				t.Fatalf("frame of %d bytes; want %d", len(f), tt.wantLen)
			}
			if f[21] != 255 {
				t.Fatalf("hop limit %d; want 255", f[21])
			}
			if c := icmpv6Checksum(tt.src, tt.dst, f[54:]); c != 0 {
				t.Fatalf("checksum does not verify: %#x", c)
			}
			if tt.wantOptInLen && (f[78] != tt.wantOpt || net.HardwareAddr(f[80:86]).String() != mac.String()) {
				t.Fatalf("option %d %v; want %d %v", f[78], net.HardwareAddr(f[80:86]), tt.wantOpt, mac)
			}
			if tt.typ == icmpNA && f[58] != tt.flags {
				t.Fatalf("flags %#x; want %#x", f[58], tt.flags)
			}
			m, ok := parseND(f, tt.typ)
			if !ok || m.target != vip || m.srcIP != tt.src || m.srcMAC.String() != mac.String() {
				t.Fatalf("parsed %+v, %v; want target %s from %s %s", m, ok, vip, tt.src, mac)
			}
			other := byte(icmpNS)
			if tt.typ == icmpNS {
				other = icmpNA
			}
			if _, ok := parseND(f, other); ok {
				t.Fatalf("a type %d frame parsed as type %d", tt.typ, other)
			}
		})
	}
}

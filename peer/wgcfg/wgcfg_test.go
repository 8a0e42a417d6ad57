package wgcfg

import (
	"net/netip"
	"testing"
)

func key(b byte) Key {
	var k Key
	k[0] = b
	return k
}

func TestKeyRoundTrip(t *testing.T) {
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseKey(priv.String())
	if err != nil || got != priv {
		t.Fatalf("got %v, %v; want %v", got, err, priv)
	}
	if priv.Public() == priv || priv.Public().IsZero() {
		t.Fatal("public key not derived")
	}
	for _, bad := range []string{"", "abc", "AAAA", priv.String() + "AA"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestUAPI(t *testing.T) {
	pfx := netip.MustParsePrefix
	ep := netip.MustParseAddrPort
	base := &Config{PrivateKey: key(1), ListenPort: 51820, Peers: []Peer{
		{PublicKey: key(2), Endpoint: ep("10.0.0.2:51820"), AllowedIPs: []netip.Prefix{pfx("100.96.0.2/32")}, PersistentKeepalive: 25},
		{PublicKey: key(3), AllowedIPs: []netip.Prefix{pfx("100.96.0.3/32")}, PersistentKeepalive: 25},
	}}
	withRoute := base.Clone()
	withRoute.Peers[1].AllowedIPs = append(withRoute.Peers[1].AllowedIPs, pfx("10.1.0.0/24"))
	moved := base.Clone()
	moved.Peers[0].Endpoint = ep("10.0.0.9:51820")
	dropped := base.Clone()
	dropped.Peers = dropped.Peers[:1]
	for _, tt := range []struct {
		name     string
		old, new *Config
		want     string
	}{
		{"from scratch", nil, base, "private_key=" + key(1).Hex() + "\nlisten_port=51820\nreplace_peers=true\n" +
			"public_key=" + key(2).Hex() + "\nendpoint=10.0.0.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.96.0.2/32\n" +
			"public_key=" + key(3).Hex() + "\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.96.0.3/32\n"},
		{"same config changes nothing", base, base.Clone(), ""},
		{"a route moves to a peer", base, withRoute, "public_key=" + key(3).Hex() + "\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/24\nallowed_ip=100.96.0.3/32\n"},
		{"endpoint change keeps allowed ips", base, moved, "public_key=" + key(2).Hex() + "\nendpoint=10.0.0.9:51820\n"},
		{"removed peer", base, dropped, "public_key=" + key(3).Hex() + "\nremove=true\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.new.Normalize()
			if tt.old != nil {
				tt.old.Normalize()
			}
			if got := UAPI(tt.old, tt.new); got != tt.want {
				t.Fatalf("got\n%s; want\n%s", got, tt.want)
			}
			if tt.old != nil && (tt.want == "") != tt.old.Equal(tt.new) {
				t.Fatalf("Equal = %v with diff %q", tt.old.Equal(tt.new), tt.want)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	c := &Config{Peers: []Peer{{PublicKey: key(2), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32")}}}}
	d := c.Clone()
	d.Peers[0].AllowedIPs[0] = netip.MustParsePrefix("10.0.0.0/8")
	if !c.Peers[0].AllowedIPs[0].Addr().Is4() || c.Peers[0].AllowedIPs[0].Bits() != 32 {
		t.Fatalf("clone shares allowed IPs: %v", c.Peers[0].AllowedIPs)
	}
}

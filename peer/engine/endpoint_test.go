package engine

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/wgcfg"
)

// TestBindEndpointRoaming: over a bind, an agent's peer gets the bind's
// endpoint and a device (roaming) none, so WireGuard learns the device's
// from its packets.
func TestBindEndpointRoaming(t *testing.T) {
	agent, device := wgcfg.Key{2}, wgcfg.Key{3}
	cfg := &wgcfg.Config{PrivateKey: wgcfg.Key{1}, ListenPort: 51820, Peers: []wgcfg.Peer{
		{PublicKey: agent, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32")}, PersistentKeepalive: 25},
		{PublicKey: device, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.3/32")}, PersistentKeepalive: 25, Roaming: true},
	}}
	cfg.Normalize()
	var endpoints []string
	for _, line := range strings.Split(wgcfg.UAPIWith(nil, cfg, bindEndpoint), "\n") {
		if v, ok := strings.CutPrefix(line, "endpoint="); ok {
			endpoints = append(endpoints, v)
		}
	}
	if len(endpoints) != 1 || endpoints[0] != bind.EndpointString(agent) {
		t.Fatalf("endpoints %v; want only the agent's bind endpoint %s", endpoints, bind.EndpointString(agent))
	}
}

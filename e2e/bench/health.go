package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/wgcfg"
)

// wireOverhead is what one probe datagram costs beyond its UDP payload on
// the underlay: inner IPv4 and UDP headers (28), WireGuard's header and tag
// (32) with its padding to 16 bytes, outer IPv4 and UDP (28).
func wireBytes(payload int) int {
	inner := 28 + payload
	inner = (inner + 15) / 16 * 16
	return inner + 32 + 28
}

// healthTraffic runs a vnet's health probes in this process, on loopback
// addresses: an HA pair and n-2 clients that all send through the pair's
// active gateway (so each probes it fast and the standby slowly; the two
// gateways probe each other fast), and counts for 3 s what a client and
// the active gateway send and receive.
func healthTraffic(ctx context.Context, _ string) (*Figure, error) {
	const window = 3 * time.Second
	extra := map[string]any{}
	var value float64
	for _, n := range []int{10, 100, 1000} {
		nodes := make([]*liveness.Prober, 0, n)
		keys := make([]wgcfg.Key, n)
		addrs := make([]netip.Addr, n)
		for i := range n {
			k, err := wgcfg.GenerateKey()
			if err != nil {
				return nil, err
			}
			keys[i] = k
			addrs[i] = netip.AddrFrom4([4]byte{127, 71, byte(i >> 8), byte(i&0xff) + 1})
		}
		pubs := make([]wgcfg.Key, n)
		for i, k := range keys {
			pubs[i] = k.Public()
		}
		closeAll := func() {
			for _, p := range nodes {
				p.Close()
			}
		}
		ok := byte(disco.StatusLANOK | disco.StatusFwdOK)
		for i := range n {
			p, err := liveness.New(liveness.Config{PrivateKey: keys[i], Addr: addrs[i], Port: 17947, Self: func() byte { return ok }})
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("prober %d: %w", i, err)
			}
			nodes = append(nodes, p)
		}
		for i, p := range nodes {
			var peers []wgcfg.Key
			var targets []liveness.Target
			switch i {
			case 0, 1: // the HA pair: every peer may probe; each probes the other fast
				peers = pubs
				targets = []liveness.Target{{Key: pubs[1-i], Addr: addrs[1-i], Fast: true}}
			default:
				peers = pubs[:2]
				targets = []liveness.Target{{Key: pubs[0], Addr: addrs[0], Fast: true}, {Key: pubs[1], Addr: addrs[1]}}
			}
			p.SetPeers(peers)
			p.SetTargets(targets)
		}
		time.Sleep(time.Second) // let every prober reach its steady rate
		c0, g0 := nodes[2].Stats(), nodes[0].Stats()
		time.Sleep(window)
		c1, g1 := nodes[2].Stats(), nodes[0].Stats()
		closeAll()
		rate := func(a, b liveness.Stats) (pkts, wire float64) {
			sent, recv := b.SentPkts-a.SentPkts, b.RecvPkts-a.RecvPkts
			payload := b.SentBytes - a.SentBytes + b.RecvBytes - a.RecvBytes
			// every datagram pays the same overhead; spread it per packet
			pk := float64(sent + recv)
			if pk == 0 {
				return 0, 0
			}
			avg := int(float64(payload) / pk)
			return pk / window.Seconds(), pk * float64(wireBytes(avg)) / window.Seconds()
		}
		cp, cb := rate(c0, c1)
		gp, gb := rate(g0, g1)
		extra[fmt.Sprintf("members_%d", n)] = map[string]any{
			"client_pkts_per_s": round1(cp), "client_wire_bytes_per_s": round1(cb),
			"active_gateway_pkts_per_s": round1(gp), "active_gateway_wire_bytes_per_s": round1(gb),
		}
		if n == 1000 {
			value = cp
		}
	}
	return &Figure{
		Value: value, Unit: "packets/s per client (sent + received) at 1,000 members", Target: "report",
		Pass: true,
		How: fmt.Sprintf("the gateways' health probes (peer/liveness) of a vnet of n members run in one process on loopback: an HA pair and n-2 clients all sending through its active gateway (each probes it every 40 ms and the standby every second; the pair probe each other every 40 ms); "+
			"packets and bytes counted over %s at one client and at the active gateway; bytes on the wire include the WireGuard and IP/UDP headers (a probe is 93 bytes of UDP payload, a statement 102). Memberlist gossip (online state) comes on top", window),
		Extra: extra,
	}, nil
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

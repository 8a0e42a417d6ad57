package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
	"github.com/meshd/meshd/e2e/netlab"
	"github.com/meshd/meshd/pkg/api"
)

// TestNATMatrixIPv6 is the NAT matrix of IPv6, where there is no NAT:
// peers of a dual-stack vnet on IPv6-only hosts with their own addresses,
// directly on the WAN or behind stateful firewalls that translate nothing (endpoint-independent,
// two address-and-port dependent, one that blocks UDP), the coordinators
// on the WAN over IPv6. Every pair must reach each other at their IPv6
// overlay addresses, directly (at the other's own address) where
// netlab.DirectPathPossible6 says both firewalls let the probes punch,
// and through the relay elsewhere, as both sides' status says.
func TestNATMatrixIPv6(t *testing.T) {
	begin := time.Now()
	o := labOptions(t, meshlab.Options{}, "nft", "sysctl")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := meshlab.StartFirewall6(ctx, o, netlab.DefaultFirewall6Matrix())
	if err != nil {
		t.Fatal(err)
	}
	closeLabAtEnd(t, l)
	t.Logf("topology, coordinators and vnet up in %s", time.Since(begin).Round(time.Millisecond))
	var hosts []string
	for _, h := range l.Firewall6.Hosts {
		hosts = append(hosts, h.Name)
	}

	started := time.Now()
	deadline := started.Add(30 * time.Second)
	startNATPeers(t, l, hosts...)
	waitPeersUp(t, l, hosts...)
	for _, h := range hosts {
		st, err := l.Status(h)
		if err != nil {
			t.Fatal(err)
		}
		if st.Self.VNet != meshlab.DualStackVNet || st.Self.OverlayIP6 == "" {
			t.Fatalf("%s: in vnet %q with IPv6 overlay address %q; want one in %s", h, st.Self.VNet, st.Self.OverlayIP6, meshlab.DualStackVNet)
		}
	}
	res, err := l.CheckFirewall6Matrix(hosts, started, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("IPv6 firewall matrix %s after the peers started:\n%s", time.Since(started).Round(time.Millisecond), meshlab.MatrixTable(res))
	var direct []string
	for _, p := range res {
		if p.WantDirect && p.DirectAfter > 0 {
			direct = append(direct, fmt.Sprintf("%s-%s %s", p.A, p.B, p.DirectAfter.Round(time.Millisecond)))
		}
	}
	t.Logf("direct on both sides after: %s", strings.Join(direct, ", "))
	if wrong := meshlab.Summarize(res).Wrong; len(wrong) > 0 {
		var msg []string
		for _, p := range wrong {
			msg = append(msg, "  "+p.String())
		}
		t.Errorf("%d of %d pairs are not as they must be within %s:\n%s", len(wrong), len(res),
			deadline.Sub(started), strings.Join(msg, "\n"))
	}
	// Nothing is translated: a direct path goes to the other host's own
	// address.
	for _, p := range res {
		for _, side := range []struct{ path, endpoint, other string }{{p.PathA, p.EndpointA, p.B}, {p.PathB, p.EndpointB, p.A}} {
			if side.path != api.PathDirect {
				continue
			}
			ep, err := netip.ParseAddrPort(side.endpoint)
			if want := l.Firewall6.Host(side.other).Addr; err != nil || ep.Addr().String() != want {
				t.Errorf("%s-%s: direct to %s at %q; want its own address %s", p.A, p.B, side.other, side.endpoint, want)
			}
		}
	}
	t.Logf("TestNATMatrixIPv6 took %s", time.Since(begin).Round(time.Millisecond))
}

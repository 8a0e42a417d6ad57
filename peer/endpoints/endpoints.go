// Package endpoints finds the addresses other peers can reach this peer's
// WireGuard port at: the host's own unicast addresses, and its public
// address as STUN servers (every coordinator runs one) see it.
//
// The WireGuard socket belongs to the engine, so STUN is asked from a
// separate socket and the public endpoint reported is that IP with the
// WireGuard port: right for NATs that keep the source port (most home and
// cloud NATs for a single host); hole punching through port-rewriting NATs
// needs the engine's own socket and is not done here.
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/pion/stun/v3"
)

// MaxEndpoints caps how many endpoints a peer reports.
const MaxEndpoints = 8

// Iface is one interface as Local sees it.
type Iface struct {
	Name string
	Up   bool
	Loop bool
	// P2P marks point-to-point links (TUN devices: WireGuard, other VPNs);
	// an endpoint there would tunnel the mesh through another tunnel.
	P2P   bool
	Addrs []netip.Prefix
}

// Filter returns the usable unicast addresses of ifs, skipping interfaces
// named in exclude, loopback, point-to-point (tunnel), link-local and down
// interfaces.
func Filter(ifs []Iface, exclude []string) []netip.Addr {
	var out []netip.Addr
	for _, ifc := range ifs {
		if !ifc.Up || ifc.Loop || ifc.P2P || slices.Contains(exclude, ifc.Name) {
			continue
		}
		for _, p := range ifc.Addrs {
			a := p.Addr().Unmap()
			if !a.IsGlobalUnicast() || a.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, a)
		}
	}
	return out
}

func osIfaces() ([]Iface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []Iface
	for _, ifc := range ifs {
		x := Iface{Name: ifc.Name, Up: ifc.Flags&net.FlagUp != 0, Loop: ifc.Flags&net.FlagLoopback != 0, P2P: ifc.Flags&net.FlagPointToPoint != 0}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(n.String()); err == nil {
					x.Addrs = append(x.Addrs, p)
				}
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// Local returns the host's usable addresses with port.
func Local(port uint16, exclude ...string) ([]netip.AddrPort, error) {
	ifs, err := osIfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netip.AddrPort
	for _, a := range Filter(ifs, exclude) {
		out = append(out, netip.AddrPortFrom(a, port))
	}
	return out, nil
}

// STUN asks servers (host:port, tried in parallel) for this host's public
// address and returns the first answer.
func STUN(ctx context.Context, servers []string) (netip.Addr, error) {
	if len(servers) == 0 {
		return netip.Addr{}, errors.New("no STUN servers known")
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("stun socket: %w", err)
	}
	defer conn.Close()
	msg := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	var dsts []*net.UDPAddr
	for _, s := range servers {
		if a, err := net.ResolveUDPAddr("udp", s); err == nil {
			dsts = append(dsts, a)
		}
	}
	if len(dsts) == 0 {
		return netip.Addr{}, fmt.Errorf("no STUN server address resolves: %v", servers)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	buf := make([]byte, 1500)
	// Retransmit every 250 ms until an answer or the deadline.
	for time.Now().Before(deadline) {
		for _, d := range dsts {
			conn.WriteToUDP(msg.Raw, d)
		}
		conn.SetReadDeadline(minTime(deadline, time.Now().Add(250*time.Millisecond)))
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			res := &stun.Message{Raw: slices.Clone(buf[:n])}
			if res.Decode() != nil || res.TransactionID != msg.TransactionID {
				continue
			}
			var xor stun.XORMappedAddress
			if err := xor.GetFrom(res); err != nil {
				continue
			}
			if a, ok := netip.AddrFromSlice(xor.IP); ok {
				return a.Unmap(), nil
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("no STUN server answered (%v)", servers)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Discover returns the endpoint strings to report: local addresses and the
// STUN address, each with port, deduplicated, sorted, at most MaxEndpoints.
// A STUN failure is returned alongside the local endpoints.
func Discover(ctx context.Context, port uint16, stunServers, exclude []string) ([]string, error) {
	local, err := Local(port, exclude...)
	if err != nil {
		return nil, err
	}
	var serr error
	if len(stunServers) > 0 {
		var pub netip.Addr
		if pub, serr = STUN(ctx, stunServers); serr == nil {
			local = append(local, netip.AddrPortFrom(pub, port))
		}
	}
	return Format(local), serr
}

// Format turns endpoints into sorted, unique strings, at most MaxEndpoints
// (IPv4 first).
func Format(eps []netip.AddrPort) []string {
	slices.SortFunc(eps, func(a, b netip.AddrPort) int {
		if a.Addr().Is4() != b.Addr().Is4() {
			if a.Addr().Is4() {
				return -1
			}
			return 1
		}
		return a.Compare(b)
	})
	eps = slices.Compact(eps)
	if len(eps) > MaxEndpoints {
		eps = eps[:MaxEndpoints]
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

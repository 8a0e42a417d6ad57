// Package endpoints finds the addresses other peers can reach this peer's
// WireGuard port at: the host's own unicast addresses (Local), and its public
// address as STUN servers see it (STUN; every coordinator runs one).
// Discover combines both into the list a peer reports in its join and
// heartbeat requests.
//
// The WireGuard socket belongs to the engine, so STUN is asked from a
// separate, ephemeral socket and the public endpoint reported is that IP
// with the WireGuard listen port. That is right for NATs that keep the
// source port (port-preserving NATs, and 1:1 NAT as in most clouds); behind
// a NAT that rewrites ports the reported public endpoint is wrong and only
// the peer's local addresses, or the other side's, connect. Hole punching
// through such NATs needs the engine's own socket and is not done here.
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

// MaxEndpoints caps how many endpoints a peer reports (the coordinators
// accept a few more).
const MaxEndpoints = 8

// STUNTimeout bounds how long STUN waits for an answer when the context
// allows longer.
const STUNTimeout = 3 * time.Second

// Iface is one network interface as Filter sees it.
type Iface struct {
	Name string
	Up   bool
	Loop bool
	// P2P marks point-to-point links (TUN devices: WireGuard, other VPNs);
	// an endpoint there would tunnel the mesh through another tunnel.
	P2P   bool
	Addrs []netip.Prefix
}

// Filter returns the usable unicast addresses of ifs in order: those of up
// interfaces that are neither loopback nor point-to-point nor named in
// exclude, without link-local, loopback, multicast and unspecified
// addresses. IPv4-mapped IPv6 addresses are returned as IPv4.
func Filter(ifs []Iface, exclude []string) []netip.Addr {
	var out []netip.Addr
	for _, ifc := range ifs {
		if !ifc.Up || ifc.Loop || ifc.P2P || slices.Contains(exclude, ifc.Name) {
			continue
		}
		for _, p := range ifc.Addrs {
			if a := p.Addr().Unmap(); usable(a) {
				out = append(out, a.WithZone(""))
			}
		}
	}
	return out
}

// usable reports whether a is an address another host could send to.
func usable(a netip.Addr) bool {
	return a.IsGlobalUnicast() && !a.IsLinkLocalUnicast()
}

func osIfaces() ([]Iface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]Iface, 0, len(ifs))
	for _, ifc := range ifs {
		x := Iface{
			Name: ifc.Name,
			Up:   ifc.Flags&net.FlagUp != 0,
			Loop: ifc.Flags&net.FlagLoopback != 0,
			P2P:  ifc.Flags&net.FlagPointToPoint != 0,
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue // gone since it was listed
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					ones, _ := n.Mask.Size()
					x.Addrs = append(x.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
				}
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// Addrs returns the host's usable unicast addresses (see Filter), skipping
// the interfaces named in exclude.
func Addrs(exclude ...string) ([]netip.Addr, error) {
	ifs, err := osIfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	return Filter(ifs, exclude), nil
}

// Local returns the host's usable unicast addresses (see Filter) with the
// WireGuard listen port, skipping the interfaces named in exclude (the mesh
// interface itself).
func Local(port uint16, exclude ...string) ([]netip.AddrPort, error) {
	addrs, err := Addrs(exclude...)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a, port))
	}
	return out, nil
}

// STUN sends a binding request from one ephemeral UDP socket to every server
// (host:port) at once, retransmitting with backoff, and returns the IP of the
// first XOR-MAPPED-ADDRESS that comes back. It gives up when ctx is done or
// after STUNTimeout, whichever is first.
func STUN(ctx context.Context, servers []string) (netip.Addr, error) {
	if len(servers) == 0 {
		return netip.Addr{}, errors.New("stun: no servers known")
	}
	ctx, cancel := context.WithTimeout(ctx, STUNTimeout)
	defer cancel()
	var dsts []netip.AddrPort
	var rerr error
	for _, s := range servers {
		ap, err := Resolve(ctx, s)
		if err != nil {
			rerr = err
			continue
		}
		dsts = append(dsts, ap)
	}
	if len(dsts) == 0 {
		return netip.Addr{}, fmt.Errorf("stun: no server address resolves: %w", rerr)
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("stun socket: %w", err)
	}
	defer conn.Close()
	// A read blocked on the socket returns when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	res := new(stun.Message)
	buf := make([]byte, 1500)
	wait := 250 * time.Millisecond
	for ctx.Err() == nil {
		for _, d := range dsts {
			conn.WriteToUDPAddrPort(req.Raw, d)
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		if ctx.Err() != nil {
			break // the AfterFunc may have run before this deadline was set
		}
		for {
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // timeout: retransmit
			}
			if a, ok := mapped(res, buf[:n], req.TransactionID); ok {
				return a, nil
			}
		}
		wait = min(2*wait, time.Second)
	}
	return netip.Addr{}, fmt.Errorf("stun: none of %v answered: %w", servers, ctx.Err())
}

// Resolve turns host:port into an address, looking host names up.
func Resolve(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun server %q: %w", hostport, err)
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, "udp", port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun server %q: %w", hostport, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("stun server %q: %w", hostport, err)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(pn)), nil
}

// mapped decodes pkt into m and returns the mapped IP if pkt is a binding
// success for transaction id carrying a usable XOR-MAPPED-ADDRESS.
func mapped(m *stun.Message, pkt []byte, id [stun.TransactionIDSize]byte) (netip.Addr, bool) {
	m.Reset()
	m.Raw = append(m.Raw[:0], pkt...)
	if m.Decode() != nil || m.Type != stun.BindingSuccess || m.TransactionID != id {
		return netip.Addr{}, false
	}
	var xor stun.XORMappedAddress
	if xor.GetFrom(m) != nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(xor.IP)
	a = a.Unmap()
	if !ok || !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, false
	}
	return a, true
}

// Discover returns the endpoints to report: the local addresses (Local) and,
// when STUN servers are given and one answers, the public address, each with
// port, as "ip:port" strings ("[ip6]:port"), unique, sorted, at most
// MaxEndpoints; the public address is kept when the list is cut. A STUN
// failure is returned alongside the local endpoints.
func Discover(ctx context.Context, port uint16, stunServers, exclude []string) ([]string, error) {
	local, err := Local(port, exclude...)
	if err != nil {
		return nil, err
	}
	var public netip.Addr
	var serr error
	if len(stunServers) > 0 {
		public, serr = STUN(ctx, stunServers)
	}
	return Merge(local, public, port), serr
}

// Merge returns local plus public:port (when public is valid) in the form
// Discover returns. When there are more than MaxEndpoints, IPv4 addresses
// and lower addresses are kept first, and the public one always.
func Merge(local []netip.AddrPort, public netip.Addr, port uint16) []string {
	eps := slices.Clone(local)
	slices.SortFunc(eps, compare)
	eps = slices.Compact(eps)
	if public.IsValid() {
		pub := netip.AddrPortFrom(public, port)
		if !slices.Contains(eps, pub) {
			if len(eps) >= MaxEndpoints {
				eps = eps[:MaxEndpoints-1]
			}
			eps = append(eps, pub)
			slices.SortFunc(eps, compare)
		}
	}
	if len(eps) > MaxEndpoints {
		eps = eps[:MaxEndpoints]
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

// compare orders IPv4 before IPv6, then by address and port.
func compare(a, b netip.AddrPort) int {
	if a4, b4 := a.Addr().Is4(), b.Addr().Is4(); a4 != b4 {
		if a4 {
			return -1
		}
		return 1
	}
	return a.Compare(b)
}

package netlab

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// linkPeer matches `ip -o link show` output for a veth: "2: eth0@if7: ...".
var linkPeer = regexp.MustCompile(`^\d+: [^@:]+@if(\d+):`)

// MoveNATHost moves host (behind a NAT router) onto the LAN of router, as a
// laptop moving from one network to another: the bridge port of its eth0
// leaves its old LAN bridge and joins router's, its old address on eth0 is
// replaced by a free one in router's LAN, and its default route now goes
// via router. Nothing else in the host's namespace changes: sockets,
// other interfaces and routes stay. It updates t and returns the moved
// host. router must be a plain NAT router of t (not a CGNAT carrier).
func MoveNATHost(l *Lab, t *NATTopology, host, router string) (NATHost, error) {
	hi := slices.IndexFunc(t.Hosts, func(h NATHost) bool { return h.Name == host })
	if hi < 0 || t.Hosts[hi].Router == "" {
		return NATHost{}, fmt.Errorf("move %s: not a host behind a NAT router", host)
	}
	ri := slices.IndexFunc(t.Routers, func(r NATRouter) bool { return r.Name == router })
	if ri < 0 || t.Routers[ri].Kind == CGNAT {
		return NATHost{}, fmt.Errorf("move %s: %s is not a NAT router of the topology", host, router)
	}
	h, r := t.Hosts[hi], t.Routers[ri]
	if h.Router == r.Name {
		return h, nil
	}
	oldNet, err := netip.ParsePrefix(h.LANNet)
	if err != nil {
		return NATHost{}, err
	}
	newNet, err := netip.ParsePrefix(r.LANNet)
	if err != nil {
		return NATHost{}, err
	}
	// The LAN bridges are lanN in namespace "lans", N the third octet of
	// the LAN (see BuildNAT).
	newBr := fmt.Sprintf("lan%d", newNet.Addr().As4()[2])
	addr, err := freeLANAddr(t, r)
	if err != nil {
		return NATHost{}, err
	}

	port, err := l.vethPeer(host, natHostIf, "lans")
	if err != nil {
		return NATHost{}, fmt.Errorf("move %s: %w", host, err)
	}
	ns := l.NS(host)
	for _, s := range [][]string{
		{"ip", "-n", l.NS("lans"), "link", "set", port, "master", newBr},
		{"ip", "-n", ns, "addr", "del", fmt.Sprintf("%s/%d", h.Addr, oldNet.Bits()), "dev", natHostIf},
		{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, newNet.Bits()), "dev", natHostIf},
		{"ip", "-n", ns, "route", "replace", "default", "via", r.LAN, "dev", natHostIf},
	} {
		if _, err := run(s...); err != nil {
			return NATHost{}, fmt.Errorf("move %s: %w", host, err)
		}
	}

	for i := range t.Routers {
		if t.Routers[i].Name == h.Router {
			t.Routers[i].Hosts = slices.DeleteFunc(t.Routers[i].Hosts, func(n string) bool { return n == host })
		}
	}
	t.Routers[ri].Hosts = append(t.Routers[ri].Hosts, host)
	h.Addr, h.WAN, h.LANNet, h.LANGateway, h.Router = addr, r.WAN, r.LANNet, r.LAN, r.Name
	h.Kind = r.Kind
	t.Hosts[hi] = h
	return h, nil
}

// freeLANAddr is the first address from .10 on r's LAN that no host of t
// has.
func freeLANAddr(t *NATTopology, r NATRouter) (string, error) {
	p, err := netip.ParsePrefix(r.LANNet)
	if err != nil {
		return "", err
	}
	used := map[string]bool{r.LAN: true}
	for _, h := range t.Hosts {
		used[h.Addr] = true
	}
	b := p.Masked().Addr().As4()
	for i := 10; i < 255; i++ {
		b[3] = byte(i)
		if a := netip.AddrFrom4(b).String(); !used[a] {
			return a, nil
		}
	}
	return "", fmt.Errorf("no free address on %s's LAN %s", r.Name, r.LANNet)
}

// vethPeer is the name, in namespace peerNS, of the other end of veth
// ifname in namespace name.
func (l *Lab) vethPeer(name, ifname, peerNS string) (string, error) {
	out, err := run("ip", "-n", l.NS(name), "-o", "link", "show", "dev", ifname)
	if err != nil {
		return "", err
	}
	m := linkPeer.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("%s in %s is not a veth: %s", ifname, name, strings.TrimSpace(string(out)))
	}
	out, err = run("ip", "-n", l.NS(peerNS), "-o", "link", "show")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		idx, rest, ok := strings.Cut(line, ": ")
		if !ok || idx != m[1] {
			continue
		}
		port, _, _ := strings.Cut(rest, ":")
		port, _, _ = strings.Cut(port, "@")
		return port, nil
	}
	return "", fmt.Errorf("no interface %s in %s, the other end of %s in %s", m[1], peerNS, ifname, name)
}

package filter

import (
	"math/bits"
	"net/netip"

	"github.com/meshd/meshd/pkg/policy"
)

// Ruleset is the compiled form of one receiving peer's rules. A packet
// opens a flow when some rule admits its source address, destination
// address, protocol and destination port.
//
// The rules are numbered and every address resolves to the set of rules
// (a bitmask) that name it: known addresses (the overlay addresses of the
// vnet's peers and of the receiver) through one map lookup, other
// addresses (hosts behind gateways) through the list of CIDRs. A new flow
// costs two lookups, an AND of the masks and a port check per rule left.
// A Ruleset is immutable and safe for concurrent use.
type Ruleset struct {
	rules   []rule
	words   int
	srcAddr map[netip.Addr][]uint64 // complete masks of the addresses rules name one by one
	srcNets []netMask               // the other prefixes, for other addresses
	dstAddr map[netip.Addr][]uint64
	dstNets []netMask
}

type rule struct {
	proto policy.ProtoSet
	ports policy.PortSet
	index int // policy.Rules index, for people
}

type netMask struct {
	pfx  netip.Prefix
	mask []uint64
}

// ForPeer compiles what may be delivered to the peer named self under p,
// with d the vnet's peers. A nil policy gives a nil Ruleset: no policy,
// everything passes.
func ForPeer(p *policy.Policy, d *policy.Directory, self string) *Ruleset {
	if p == nil {
		return nil
	}
	return Compile(p.ReceiverRules(d, self))
}

// Compile builds a Ruleset from address rules. It never returns nil: no
// rules is a Ruleset that opens no flow.
func Compile(rules []policy.AddrRule) *Ruleset {
	rs := &Ruleset{rules: make([]rule, len(rules)), words: (len(rules) + 63) / 64}
	for i, r := range rules {
		rs.rules[i] = rule{proto: r.Proto, ports: r.Ports, index: r.Rule}
	}
	rs.srcAddr, rs.srcNets = rs.index(rules, func(r policy.AddrRule) []netip.Prefix { return r.Src })
	rs.dstAddr, rs.dstNets = rs.index(rules, func(r policy.AddrRule) []netip.Prefix { return r.Dst })
	return rs
}

// index builds the address map and the CIDR list of one side of the rules.
func (rs *Ruleset) index(rules []policy.AddrRule, side func(policy.AddrRule) []netip.Prefix) (map[netip.Addr][]uint64, []netMask) {
	addrs := make(map[netip.Addr][]uint64)
	nets := make(map[netip.Prefix][]uint64)
	var order []netip.Prefix
	for i, r := range rules {
		for _, p := range side(r) {
			p = p.Masked()
			var m []uint64
			if p.IsSingleIP() {
				if m = addrs[p.Addr()]; m == nil {
					m = make([]uint64, rs.words)
					addrs[p.Addr()] = m
				}
			} else if m = nets[p]; m == nil {
				m = make([]uint64, rs.words)
				nets[p] = m
				order = append(order, p)
			}
			m[i>>6] |= 1 << (i & 63)
		}
	}
	list := make([]netMask, len(order))
	for i, p := range order {
		list[i] = netMask{p, nets[p]}
	}
	// An address named alone carries the CIDRs around it too, so that a
	// lookup that finds it is complete.
	for a, m := range addrs {
		for _, n := range list {
			if n.pfx.Contains(a) {
				for w := range m {
					m[w] |= n.mask[w]
				}
			}
		}
	}
	return addrs, list
}

// word returns word w of the mask of the rules whose prefixes in nets
// contain a.
func word(nets []netMask, a netip.Addr, w int) uint64 {
	var m uint64
	for i := range nets {
		if nets[i].pfx.Contains(a) {
			m |= nets[i].mask[w]
		}
	}
	return m
}

// Allows reports whether a new flow from src to dst over proto to port is
// admitted (port is ignored for ICMP). A nil Ruleset admits everything.
func (rs *Ruleset) Allows(src, dst netip.Addr, proto policy.Proto, port uint16) bool {
	if rs == nil {
		return true
	}
	_, ok := rs.match(src, dst, proto, port)
	return ok
}

// match returns the policy rule index of a rule that admits the flow.
func (rs *Ruleset) match(src, dst netip.Addr, proto policy.Proto, port uint16) (int, bool) {
	sm, sKnown := rs.srcAddr[src]
	dm, dKnown := rs.dstAddr[dst]
	icmp := proto == policy.ICMP || proto == policy.ICMPv6
	for w := 0; w < rs.words; w++ {
		var s, d uint64
		if sKnown {
			s = sm[w]
		} else {
			s = word(rs.srcNets, src, w)
		}
		if s == 0 {
			continue
		}
		if dKnown {
			d = dm[w]
		} else {
			d = word(rs.dstNets, dst, w)
		}
		for m := s & d; m != 0; m &= m - 1 {
			r := &rs.rules[w<<6|bits.TrailingZeros64(m)]
			if !r.proto.Has(proto) {
				continue
			}
			if icmp && r.ports.All() || !icmp && r.ports.Contains(port) {
				return r.index, true
			}
		}
	}
	return -1, false
}

// Len is the number of compiled rules.
func (rs *Ruleset) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.rules)
}

package engine

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/meshd/meshd/pkg/policy"
)

// The kernel engine enforces the receiver rules with nftables. This file
// is the platform-neutral half: the translation of policy.AddrRule into
// the accept rules of the policy chain (nftRule), pure so that tests
// compare it without root. nft_linux.go turns each nftRule into netlink
// expressions and installs the table.

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ first, last netip.Addr }

// String is the range as nft lists it: an address, a prefix, or first-last.
func (r addrRange) String() string {
	if r.first == r.last {
		return r.first.String()
	}
	for bits := r.first.BitLen() - 1; bits >= 0; bits-- {
		p := netip.PrefixFrom(r.first, bits)
		if p.Masked().Addr() != r.first {
			break
		}
		if lastAddr(p) == r.last {
			return p.String()
		}
	}
	return r.first.String() + "-" + r.last.String()
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// addrRanges returns the prefixes of one family (IPv6 when v6) as sorted,
// disjoint, non-adjacent ranges. ok is false when ps holds none of that
// family; any (nil, true) when they cover the whole family.
func addrRanges(ps []netip.Prefix, v6 bool) (rs []addrRange, ok bool) {
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Unmap().Is4() == v6 {
			continue
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Bits() == 0 {
			return nil, true
		}
		rs = append(rs, addrRange{p.Masked().Addr(), lastAddr(p)})
	}
	if len(rs) == 0 {
		return nil, false
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.first.Compare(b.first) })
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		if next := cur.last.Next(); !next.IsValid() || r.first.Compare(next) <= 0 {
			if r.last.Compare(cur.last) > 0 {
				cur.last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	return out, true
}

// nftRule is one accept rule of the policy: a packet of one address
// family from src to dst over one of proto to a port in ports goes to the
// admit chain, which marks its flow as admitted and accepts it.
type nftRule struct {
	rule  int            // index in the policy's acls, for the rule's comment
	v6    bool           // IPv6, else IPv4
	src   []addrRange    // nil: any source
	dst   []addrRange    // nil: any destination
	proto []policy.Proto // TCP and/or UDP; or ICMP (ICMPv6 when v6) alone
	ports policy.PortSet // TCP and UDP: nil is any port; ICMP: unused, an echo request opens the flow
}

// nftRules translates receiver rules into the policy chain's accept rules,
// in order: per AddrRule and address family present on both sides, one
// rule for TCP and UDP (with the ports) and one for ICMP echo requests
// (when the ports are "*"). nil rules (no policy) give nil; an empty list
// gives an empty, non-nil list (nothing new passes).
func nftRules(rules []policy.AddrRule) []nftRule {
	if rules == nil {
		return nil
	}
	out := []nftRule{}
	for _, r := range rules {
		for _, v6 := range []bool{false, true} {
			src, ok := addrRanges(r.Src, v6)
			if !ok {
				continue
			}
			dst, ok := addrRanges(r.Dst, v6)
			if !ok {
				continue
			}
			var l4 []policy.Proto
			if r.Proto.Has(policy.TCP) {
				l4 = append(l4, policy.TCP)
			}
			if r.Proto.Has(policy.UDP) {
				l4 = append(l4, policy.UDP)
			}
			if len(l4) > 0 && len(r.Ports) > 0 {
				var ports policy.PortSet
				if !r.Ports.All() {
					ports = r.Ports
				}
				out = append(out, nftRule{rule: r.Rule, v6: v6, src: src, dst: dst, proto: l4, ports: ports})
			}
			if r.Proto.Has(policy.ICMP) && r.Ports.All() {
				icmp := policy.ICMP
				if v6 {
					icmp = policy.ICMPv6
				}
				out = append(out, nftRule{rule: r.Rule, v6: v6, src: src, dst: dst, proto: []policy.Proto{icmp}})
			}
		}
	}
	return out
}

// comment is the rule's comment in the kernel: the policy rule it comes
// from, named as policy errors name it.
func (r nftRule) comment() string { return fmt.Sprintf("acls[%d]", r.rule) }

// String is the rule in nft's syntax, close to what `nft list ruleset`
// shows.
func (r nftRule) String() string {
	var b strings.Builder
	fam := "ip"
	if r.v6 {
		fam = "ip6"
	}
	if r.src != nil {
		fmt.Fprintf(&b, "%s saddr %s ", fam, nftList(r.src))
	}
	if r.dst != nil {
		fmt.Fprintf(&b, "%s daddr %s ", fam, nftList(r.dst))
	}
	switch {
	case len(r.proto) == 1 && r.proto[0] == policy.ICMP:
		b.WriteString("icmp type echo-request ")
	case len(r.proto) == 1 && r.proto[0] == policy.ICMPv6:
		b.WriteString("icmpv6 type echo-request ")
	default:
		fmt.Fprintf(&b, "meta l4proto %s ", nftList(r.proto))
		if r.ports != nil {
			fmt.Fprintf(&b, "th dport %s ", nftList(r.ports))
		}
	}
	fmt.Fprintf(&b, "goto admit comment %q", r.comment())
	return b.String()
}

// nftList is one value, or a set of them in braces.
func nftList[T any](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		switch v := any(v).(type) {
		case policy.PortRange:
			s[i] = fmt.Sprint(v.First)
			if v.Last != v.First {
				s[i] += fmt.Sprintf("-%d", v.Last)
			}
		default:
			s[i] = fmt.Sprint(v)
		}
	}
	if len(s) == 1 {
		return s[0]
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

// PolicyTableName is the nftables table (family inet) in which the kernel
// engine enforces the policy on interface dev. Its prefix differs from the
// router's table (meshd_DEV), so the two never collide.
func PolicyTableName(dev string) string { return "meshd-policy-" + dev }

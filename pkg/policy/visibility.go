package policy

import (
	"iter"
	"math/bits"
	"net/netip"
)

// bitset is a set of peer indexes.
type bitset []uint64

func newBitset(words int) bitset { return make(bitset, words) }
func (b bitset) set(i int)       { b[i>>6] |= 1 << (i & 63) }
func (b bitset) has(i int) bool  { return b[i>>6]&(1<<(i&63)) != 0 }
func (b bitset) or(o bitset) {
	for i := range b {
		b[i] |= o[i]
	}
}
func (b bitset) fill(n int) {
	for i := range b {
		b[i] = ^uint64(0)
	}
	if r := n & 63; r != 0 {
		b[len(b)-1] = 1<<r - 1
	}
}

func (b bitset) all() iter.Seq[int] {
	return func(yield func(int) bool) {
		for w, word := range b {
			for word != 0 {
				if !yield(w<<6 + bits.TrailingZeros64(word)) {
					return
				}
				word &= word - 1
			}
		}
	}
}

// selects returns the peers a selector matches: for a tag or a peer, the
// peers themselves; for "*", all; for a CIDR, every peer with an overlay
// address inside it and every gateway announcing a subnet that overlaps it
// (the gateway is how the addresses behind it are reached). The result
// may be shared: do not modify it.
func (d *Directory) selects(s Selector, cidrs map[netip.Prefix]bitset) bitset {
	switch s.Kind {
	case KindTag:
		return d.tagged[s.Name] // nil for an unknown tag: no one
	case KindPeer:
		b := newBitset(d.words)
		if i, ok := d.byName[s.Name]; ok {
			b.set(i)
		}
		return b
	case KindAny:
		b := newBitset(d.words)
		b.fill(len(d.peers))
		return b
	}
	if b, ok := cidrs[s.Prefix]; ok {
		return b
	}
	b := newBitset(d.words)
	for i, p := range d.peers {
		if peerInPrefix(p, s.Prefix) {
			b.set(i)
		}
	}
	cidrs[s.Prefix] = b
	return b
}

func peerInPrefix(p Peer, pfx netip.Prefix) bool {
	for _, a := range p.Addrs {
		if pfx.Contains(a) {
			return true
		}
	}
	for _, sn := range p.Subnets {
		if pfx.Overlaps(sn) {
			return true
		}
	}
	return false
}

// Visibility says, for each peer of a Directory, which other peers it may
// see in its network map: those it may reach and those that may reach it,
// over any protocol and port. A gateway counts as reached when a rule
// names an address behind it (a CIDR that overlaps a subnet it announces),
// and as reaching when a rule's source CIDR overlaps its subnets.
type Visibility struct {
	n, words int
	rows     []uint64 // n rows of words: row i is the set peer i sees
}

// Visibility computes who sees whom among d's peers. With a nil policy
// every peer sees every other. The cost is one pass over the rules with
// set operations on bitsets: O(rules × matched peers × peers/64).
func (p *Policy) Visibility(d *Directory) *Visibility {
	n := len(d.peers)
	v := &Visibility{n: n, words: d.words, rows: make([]uint64, n*d.words)}
	if p == nil {
		for i := range n {
			v.row(i).fill(n)
		}
	} else {
		cidrs := make(map[netip.Prefix]bitset)
		src := newBitset(d.words)
		dst := newBitset(d.words)
		for _, r := range p.Rules {
			clear(src)
			clear(dst)
			for _, s := range r.Src {
				if b := d.selects(s, cidrs); b != nil {
					src.or(b)
				}
			}
			for _, ds := range r.Dst {
				if b := d.selects(ds.Selector, cidrs); b != nil {
					dst.or(b)
				}
			}
			for i := range src.all() {
				v.row(i).or(dst)
			}
			for j := range dst.all() {
				v.row(j).or(src)
			}
		}
	}
	for i := range n {
		v.row(i)[i>>6] &^= 1 << (i & 63) // a peer needs no key of its own
	}
	return v
}

func (v *Visibility) row(i int) bitset { return v.rows[i*v.words : (i+1)*v.words] }

// Link makes peers i and j see each other whatever the rules say: the
// gateways of one subnet (an HA pair) must, to watch each other and hand
// over the subnet.
func (v *Visibility) Link(i, j int) {
	v.row(i).set(j)
	v.row(j).set(i)
}

// Sees reports whether peer i may see peer j. It is symmetric.
func (v *Visibility) Sees(i, j int) bool { return v.row(i).has(j) }

// Peers yields the indexes of the peers that peer i sees, in order.
func (v *Visibility) Peers(i int) iter.Seq[int] { return v.row(i).all() }

// Count is how many peers peer i sees.
func (v *Visibility) Count(i int) int {
	n := 0
	for _, w := range v.row(i) {
		n += bits.OnesCount64(w)
	}
	return n
}

// AddrRule is a rule as one receiving peer's packet filter applies it:
// selectors resolved to prefixes through the Directory, destinations cut
// down to the receiver's own overlay addresses and the subnets it
// announces. It admits a packet from an address in Src to an address in
// Dst over a protocol in Proto to a port in Ports (ICMP only when Ports is
// every port).
type AddrRule struct {
	Rule  int // index in Policy.Rules
	Src   []netip.Prefix
	Dst   []netip.Prefix
	Proto ProtoSet
	Ports PortSet
}

var anyAddr = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// ReceiverRules returns the rules that decide what may be delivered to
// the peer named self (into itself, or through it into its LAN if it is a
// gateway): one AddrRule per dst entry that can reach self. A nil policy
// returns nil, meaning everything passes; a non-nil policy returns a
// non-nil slice, empty when nothing may reach self.
func (p *Policy) ReceiverRules(d *Directory, self string) []AddrRule {
	if p == nil {
		return nil
	}
	out := []AddrRule{}
	si, ok := d.byName[self]
	if !ok {
		return out
	}
	me := d.peers[si]
	for ri, r := range p.Rules {
		var src []netip.Prefix // resolved once per rule, shared by its entries
		for _, ds := range r.Dst {
			dst := me.intersect(ds.Selector)
			if len(dst) == 0 {
				continue
			}
			protos := r.Proto
			if !ds.Ports.All() {
				protos &^= ProtoICMP
			}
			if protos == 0 {
				continue
			}
			if src == nil {
				src = d.resolveSrc(r.Src)
			}
			out = append(out, AddrRule{Rule: ri, Src: src, Dst: dst, Proto: protos, Ports: ds.Ports})
		}
	}
	return out
}

// intersect returns the part of what s selects that lies in p: its
// overlay addresses as full-length prefixes, and for "*" and CIDRs the
// overlapping part of its subnets.
func (p Peer) intersect(s Selector) []netip.Prefix {
	var out []netip.Prefix
	own := func() {
		for _, a := range p.Addrs {
			out = append(out, addrPrefix(a))
		}
	}
	switch s.Kind {
	case KindAny:
		own()
		out = append(out, p.Subnets...)
	case KindTag:
		for _, t := range p.Tags {
			if t == s.Name {
				own()
				break
			}
		}
	case KindPeer:
		if s.Name == p.Name {
			own()
		}
	case KindCIDR:
		for _, a := range p.Addrs {
			if s.Prefix.Contains(a) {
				out = append(out, addrPrefix(a))
			}
		}
		for _, sn := range p.Subnets {
			if s.Prefix.Overlaps(sn) {
				if s.Prefix.Bits() > sn.Bits() {
					out = append(out, s.Prefix)
				} else {
					out = append(out, sn)
				}
			}
		}
	}
	return out
}

// resolveSrc turns a rule's sources into prefixes: a tag or a peer into
// the overlay addresses of the peers it selects, "*" into everything.
func (d *Directory) resolveSrc(sels []Selector) []netip.Prefix {
	out := []netip.Prefix{}
	for _, s := range sels {
		switch s.Kind {
		case KindAny:
			return anyAddr
		case KindCIDR:
			out = append(out, s.Prefix)
		case KindPeer:
			if i, ok := d.byName[s.Name]; ok {
				for _, a := range d.peers[i].Addrs {
					out = append(out, addrPrefix(a))
				}
			}
		case KindTag:
			for i := range d.tagged[s.Name].all() {
				for _, a := range d.peers[i].Addrs {
					out = append(out, addrPrefix(a))
				}
			}
		}
	}
	return out
}

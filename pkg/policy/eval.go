package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// Identity is one end of a flow as a policy sees it.
type Identity struct {
	// Name and Tags are the peer's, when Addr is one of that peer's
	// overlay addresses (or, in a test, when the test names the peer or
	// the tag). They are empty for any other address, such as a host on
	// a gateway's LAN: only CIDR selectors and "*" match such a host.
	Name string
	Tags []string
	// Addr is the address in the packet. It may be invalid in a test that
	// names a tag: then only "*" and tag selectors match.
	Addr netip.Addr
}

func (s Selector) matches(id Identity) bool {
	switch s.Kind {
	case KindAny:
		return true
	case KindTag:
		return slices.Contains(id.Tags, s.Name)
	case KindPeer:
		return id.Name != "" && id.Name == s.Name
	case KindCIDR:
		return id.Addr.IsValid() && s.Prefix.Contains(id.Addr)
	}
	return false
}

// admits reports whether a dst entry of a rule over protos admits proto and
// port. ICMP has no ports: an entry admits it only when it opens every port.
func (d Dest) admits(protos ProtoSet, proto Proto, port uint16) bool {
	if !protos.Has(proto) {
		return false
	}
	if proto.set() == ProtoICMP {
		return d.Ports.All()
	}
	return d.Ports.Contains(port)
}

// Allows reports whether the policy accepts a new flow from src to dst
// over proto to port (port is ignored for ICMP). A nil policy is "no
// policy" and allows everything; otherwise a flow passes when at least one
// rule accepts it, and is denied when none does. Replies to an accepted
// flow are the packet filter's business, not this function's.
func (p *Policy) Allows(src, dst Identity, proto Proto, port uint16) bool {
	if p == nil {
		return true
	}
	_, ok := p.Match(src, dst, proto, port)
	return ok
}

// Match returns the index of the first rule that accepts the flow, for
// `meshd policy test` to name it. A nil policy matches no rule yet
// accepts: ok is true and i is -1.
func (p *Policy) Match(src, dst Identity, proto Proto, port uint16) (i int, ok bool) {
	if p == nil {
		return -1, true
	}
	for i := range p.Rules {
		if p.Rules[i].accepts(src, dst, proto, port) {
			return i, true
		}
	}
	return -1, false
}

func (r *Rule) accepts(src, dst Identity, proto Proto, port uint16) bool {
	if !r.Proto.Has(proto) {
		return false
	}
	srcOK := false
	for _, s := range r.Src {
		if s.matches(src) {
			srcOK = true
			break
		}
	}
	if !srcOK {
		return false
	}
	for _, d := range r.Dst {
		if d.matches(dst) && d.admits(r.Proto, proto, port) {
			return true
		}
	}
	return false
}

// Peer is a peer of the vnet as the policy sees it.
type Peer struct {
	Name    string
	Tags    []string
	Addrs   []netip.Addr   // its overlay addresses
	Subnets []netip.Prefix // the routes it announces, if it is a gateway
}

// Directory is the vnet's peers and tags, indexed for the policy: Check
// looks names up in it, Visibility and ReceiverRules resolve selectors
// with it. It is immutable once built; build a new one when the vnet
// changes.
type Directory struct {
	peers  []Peer
	words  int
	byName map[string]int
	byAddr map[netip.Addr]int
	tagged map[string]bitset // tag -> the peers carrying it
	known  map[string]bool   // every tag that exists in the vnet
}

// NewDirectory indexes peers, which must not change afterwards. Tags are
// the vnet's tags beyond those its peers carry, such as those of join
// tokens no peer has used yet: a policy may name them. When two peers
// share a name or an address, the first one counts.
func NewDirectory(peers []Peer, tags ...string) *Directory {
	d := &Directory{
		peers:  peers,
		words:  (len(peers) + 63) / 64,
		byName: make(map[string]int, len(peers)),
		byAddr: make(map[netip.Addr]int, len(peers)),
		tagged: make(map[string]bitset),
		known:  make(map[string]bool, len(tags)),
	}
	for _, t := range tags {
		d.known[t] = true
	}
	for i, p := range peers {
		if _, dup := d.byName[p.Name]; !dup {
			d.byName[p.Name] = i
		}
		for _, a := range p.Addrs {
			if _, dup := d.byAddr[a]; !dup {
				d.byAddr[a] = i
			}
		}
		for _, t := range p.Tags {
			d.known[t] = true
			s, ok := d.tagged[t]
			if !ok {
				s = newBitset(d.words)
				d.tagged[t] = s
			}
			s.set(i)
		}
	}
	return d
}

// Len is the number of peers; their indexes are 0 to Len()-1, in the
// order NewDirectory was given them.
func (d *Directory) Len() int { return len(d.peers) }

// Peer returns the i-th peer.
func (d *Directory) Peer(i int) Peer { return d.peers[i] }

// Index returns the index of the peer with that name.
func (d *Directory) Index(name string) (int, bool) {
	i, ok := d.byName[name]
	return i, ok
}

// Identify returns who addr is: the peer whose overlay address it is, or a
// bare address (a host on a gateway's LAN, or no one the vnet knows).
func (d *Directory) Identify(addr netip.Addr) Identity {
	if i, ok := d.byAddr[addr]; ok {
		p := d.peers[i]
		return Identity{Name: p.Name, Tags: p.Tags, Addr: addr}
	}
	return Identity{Addr: addr}
}

// Resolve turns a test's source or target host (tag:NAME, peer:NAME or
// one address) into an Identity: a peer is itself with its first overlay
// address, a tag is a peer that carries only that tag and has no address,
// an address is whoever Identify says it is. The same resolution serves
// `meshd policy test`.
func (d *Directory) Resolve(host string) (Identity, error) {
	sel, prob := parseHost(host)
	if prob != nil {
		return Identity{}, &Error{Index: -1, Value: host, Err: prob.err, Detail: prob.detail}
	}
	id, err := d.resolve(sel)
	if err != nil {
		err.Value = host
		return Identity{}, err
	}
	return id, nil
}

func (d *Directory) resolve(sel Selector) (Identity, *Error) {
	switch sel.Kind {
	case KindTag:
		if d != nil && !d.known[sel.Name] {
			return Identity{}, &Error{Index: -1, Err: ErrUnknownTag}
		}
		return Identity{Tags: []string{sel.Name}}, nil
	case KindPeer:
		if d == nil {
			return Identity{Name: sel.Name}, nil
		}
		i, ok := d.byName[sel.Name]
		if !ok {
			return Identity{}, &Error{Index: -1, Err: ErrUnknownPeer}
		}
		p := d.peers[i]
		id := Identity{Name: p.Name, Tags: p.Tags}
		if len(p.Addrs) > 0 {
			id.Addr = p.Addrs[0]
		}
		return id, nil
	}
	if d == nil {
		return Identity{Addr: sel.Prefix.Addr()}, nil
	}
	return d.Identify(sel.Prefix.Addr()), nil
}

// Check checks the policy against the vnet: every tag and peer it names
// must exist in d, and every test must pass. The error is an Errors, each
// naming the rule or test and the field; a failed test is ErrTestFailed
// with the entry that did not hold and, for a flow the test expected
// denied, the rule that accepts it. A nil d skips the lookups and runs
// the tests with peers known only by name.
func (p *Policy) Check(d *Directory) error {
	var c errs
	if d != nil {
		for i, r := range p.Rules {
			check := func(field, value string, s Selector) {
				switch {
				case s.Kind == KindTag && !d.known[s.Name]:
					c.add(&Error{Section: "acls", Index: i, Name: r.Name, Field: field, Value: value, Err: ErrUnknownTag,
						Detail: "no peer or join token of the vnet carries tag " + s.Name})
				case s.Kind == KindPeer:
					if _, ok := d.byName[s.Name]; !ok {
						c.add(&Error{Section: "acls", Index: i, Name: r.Name, Field: field, Value: value, Err: ErrUnknownPeer,
							Detail: "the vnet has no peer named " + s.Name})
					}
				}
			}
			for _, s := range r.Src {
				check("src", s.String(), s)
			}
			for _, dst := range r.Dst {
				check("dst", dst.String(), dst.Selector)
			}
		}
	}
	for i, t := range p.Tests {
		at := func(field, value string, err *Error) {
			err.Section, err.Index, err.Name, err.Field, err.Value = "tests", i, t.Name, field, value
			c.add(err)
		}
		src, err := d.resolve(t.Src)
		if err != nil {
			at("src", t.Src.String(), err)
			continue
		}
		for _, list := range []struct {
			field   string
			targets []Target
			want    bool
		}{{"accept", t.Accept, true}, {"deny", t.Deny, false}} {
			for _, tg := range list.targets {
				value := tg.String()
				if t.Proto == ICMP {
					value = tg.Host.String()
				}
				dst, err := d.resolve(tg.Host)
				if err != nil {
					at(list.field, value, err)
					continue
				}
				rule, got := p.Match(src, dst, t.Proto, tg.Port)
				if got == list.want {
					continue
				}
				flow := fmt.Sprintf("%s to %s over %s", t.Src, value, t.Proto)
				if got {
					name := ""
					if n := p.Rules[rule].Name; n != "" {
						name = fmt.Sprintf(" (%q)", n)
					}
					at(list.field, value, &Error{Err: ErrTestFailed,
						Detail: fmt.Sprintf("%s is accepted by acls[%d]%s; the test expects it denied", flow, rule, name)})
				} else {
					at(list.field, value, &Error{Err: ErrTestFailed,
						Detail: flow + " is accepted by no rule; the test expects it accepted"})
				}
			}
		}
	}
	return c.err()
}

// Validate is what `meshd policy set` needs: Parse, then Check against
// the vnet.
func Validate(data []byte, d *Directory) (*Policy, error) {
	p, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if err := p.Check(d); err != nil {
		return nil, err
	}
	return p, nil
}

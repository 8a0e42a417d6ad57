package policy

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Kind is what a selector selects.
type Kind uint8

// Selector kinds.
const (
	KindAny  Kind = iota + 1 // "*": any address
	KindTag                  // "tag:NAME": the overlay addresses of the peers carrying the tag
	KindPeer                 // "peer:NAME": the overlay addresses of that peer
	KindCIDR                 // "10.1.0.0/24", "fd00::/64", "10.1.0.5": addresses inside the prefix
)

// Selector is one entry of a rule's src, or the host part of a dst entry.
type Selector struct {
	Kind Kind
	// Name is the tag (without "tag:") or the peer name, for KindTag and
	// KindPeer.
	Name string
	// Prefix is set for KindCIDR; a bare address is a full-length prefix.
	Prefix netip.Prefix
}

// String is the selector as a policy writes it.
func (s Selector) String() string {
	switch s.Kind {
	case KindAny:
		return "*"
	case KindTag:
		return "tag:" + s.Name
	case KindPeer:
		return "peer:" + s.Name
	case KindCIDR:
		if s.Prefix.IsSingleIP() {
			return s.Prefix.Addr().String()
		}
		return s.Prefix.String()
	}
	return "?"
}

// Dest is one entry of a rule's dst: a selector and the ports it opens.
type Dest struct {
	Selector
	Ports PortSet
}

// String is the entry as a policy writes it, "tag:db:5432"; an IPv6
// address or prefix is bracketed, "[fd00::/64]:443".
func (d Dest) String() string {
	host := d.Selector.String()
	if d.Kind == KindCIDR && d.Prefix.Addr().Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + d.Ports.String()
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// PortSet is a sorted list of disjoint, non-adjacent port ranges. A set
// holding 0-65535 is every port ("*").
type PortSet []PortRange

// AllPorts is "*".
var AllPorts = PortSet{{0, 65535}}

// All reports whether the set holds every port.
func (ps PortSet) All() bool { return len(ps) == 1 && ps[0] == PortRange{0, 65535} }

// Contains reports whether port is in the set.
func (ps PortSet) Contains(port uint16) bool {
	for _, r := range ps {
		if port < r.First {
			return false
		}
		if port <= r.Last {
			return true
		}
	}
	return false
}

// String is the set as a policy writes it: "*", "443", "8000-8080,443".
func (ps PortSet) String() string {
	if ps.All() {
		return "*"
	}
	var b strings.Builder
	for i, r := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(r.First)))
		if r.Last != r.First {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(int(r.Last)))
		}
	}
	return b.String()
}

// Proto is an IP protocol number as it appears in a packet.
type Proto uint8

// The protocols a policy speaks of. ICMPv6 is ICMP to a policy.
const (
	ICMP   Proto = 1
	TCP    Proto = 6
	UDP    Proto = 17
	ICMPv6 Proto = 58
)

// ProtoSet is the set of protocols a rule covers.
type ProtoSet uint8

// Members of a ProtoSet.
const (
	ProtoTCP ProtoSet = 1 << iota
	ProtoUDP
	ProtoICMP
	ProtoAll = ProtoTCP | ProtoUDP | ProtoICMP
)

// Has reports whether p is in the set.
func (s ProtoSet) Has(p Proto) bool { return s&p.set() != 0 }

func (p Proto) set() ProtoSet {
	switch p {
	case TCP:
		return ProtoTCP
	case UDP:
		return ProtoUDP
	case ICMP, ICMPv6:
		return ProtoICMP
	}
	return 0
}

// String is the set as a policy's "proto" writes it: "" for all three.
func (s ProtoSet) String() string {
	switch s {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	}
	return ""
}

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMP, ICMPv6:
		return "icmp"
	}
	return "proto " + strconv.Itoa(int(p))
}

// ParseProto parses "tcp", "udp" or "icmp", as `meshd policy test --proto`
// takes them.
func ParseProto(s string) (Proto, bool) {
	switch s {
	case "tcp":
		return TCP, true
	case "udp":
		return UDP, true
	case "icmp":
		return ICMP, true
	}
	return 0, false
}

// problem is a parse error before it is placed in a rule.
type problem struct {
	err    error
	detail string
}

func bad(err error, detail string) *problem { return &problem{err, detail} }

func parseProtoSet(s string) (ProtoSet, *problem) {
	if s == "" {
		return ProtoAll, nil
	}
	if p, ok := ParseProto(s); ok {
		return p.set(), nil
	}
	return 0, bad(ErrBadProto, `use "tcp", "udp" or "icmp", or leave "proto" out for all three`)
}

// validName reports whether s is a peer name as the coordinator accepts
// it: 1 to 63 lower-case letters, digits and dashes, not starting or
// ending with a dash.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validTag reports whether s is a tag as the coordinator accepts it: up to
// 63 lower-case letters, digits and : _ . -, starting with a letter or digit.
func validTag(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != ':' && c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}

// parseSelector parses a src entry or the host part of a dst entry.
func parseSelector(s string) (Selector, *problem) {
	switch {
	case s == "*":
		return Selector{Kind: KindAny}, nil
	case strings.HasPrefix(s, "tag:"):
		name := s[len("tag:"):]
		if !validTag(name) {
			return Selector{}, bad(ErrBadName, "a tag is up to 63 lower-case letters, digits and : _ . -, starting with a letter or digit")
		}
		return Selector{Kind: KindTag, Name: name}, nil
	case strings.HasPrefix(s, "peer:"):
		name := s[len("peer:"):]
		if !validName(name) {
			return Selector{}, bad(ErrBadName, "a peer name is 1 to 63 lower-case letters, digits and dashes, not starting or ending with a dash")
		}
		return Selector{Kind: KindPeer, Name: name}, nil
	}
	if p, prob := parsePrefix(s); prob == nil {
		return Selector{Kind: KindCIDR, Prefix: p}, nil
	} else if looksLikeAddress(s) {
		return Selector{}, prob
	}
	kind := s
	if i := strings.IndexByte(s, ':'); i >= 0 {
		kind = s[:i+1]
	}
	return Selector{}, bad(ErrSelectorKind, "selector "+strconv.Quote(kind)+" is none of *, tag:NAME, peer:NAME or a CIDR")
}

// looksLikeAddress reports whether s can only have been meant as an
// address or CIDR: hex digits, dots, colons and a slash.
func looksLikeAddress(s string) bool {
	s, _, _ = strings.Cut(s, "%") // a zone is an interface name
	digit := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F', c == '.', c == ':', c == '/', c == '[', c == ']', c == '%':
		default:
			return false
		}
	}
	return digit || strings.ContainsAny(s, ":./")
}

// parsePrefix parses a CIDR or a bare address (a full-length prefix).
func parsePrefix(s string) (netip.Prefix, *problem) {
	var p netip.Prefix
	if strings.IndexByte(s, '/') >= 0 {
		var err error
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return p, bad(ErrBadCIDR, "not a CIDR prefix such as 10.1.0.0/24 or fd00::/64")
		}
		if p.Masked() != p {
			return p, bad(ErrBadCIDR, "host bits set; did you mean "+p.Masked().String()+"?")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, bad(ErrBadCIDR, "not an address or CIDR prefix such as 10.1.0.5 or 10.1.0.0/24")
		}
		if a.Zone() != "" {
			return p, bad(ErrBadCIDR, "an address with a zone names an interface, not a host of the mesh")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return p, bad(ErrBadCIDR, "an IPv4-mapped IPv6 address never appears in a packet; write the IPv4 form")
	}
	return p, nil
}

// maxPortRanges caps the ranges in one ports list.
const maxPortRanges = 64

// parsePorts parses "*", "N", "N-M" and comma lists of them.
func parsePorts(s string) (PortSet, *problem) {
	if s == "*" {
		return AllPorts, nil
	}
	if s == "" {
		return nil, bad(ErrBadPorts, "empty port list; use * for every port")
	}
	var ps PortSet
	for item := range strings.SplitSeq(s, ",") {
		if len(ps) == maxPortRanges {
			return nil, bad(ErrBadPorts, "more than "+strconv.Itoa(maxPortRanges)+" port ranges")
		}
		first, last, isRange := strings.Cut(item, "-")
		a, ok := parsePort(first)
		if !ok {
			return nil, bad(ErrBadPorts, strconv.Quote(first)+" is not a port number (0-65535)")
		}
		b := a
		if isRange {
			if b, ok = parsePort(last); !ok {
				return nil, bad(ErrBadPorts, strconv.Quote(last)+" is not a port number (0-65535)")
			}
			if b < a {
				return nil, bad(ErrBadPorts, "range "+strconv.Quote(item)+" ends before it starts")
			}
		}
		ps = append(ps, PortRange{a, b})
	}
	return normalizePorts(ps), nil
}

func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	if n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// normalizePorts sorts ranges and merges the ones that overlap or touch.
func normalizePorts(ps PortSet) PortSet {
	slices.SortFunc(ps, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	out := ps[:0]
	for _, r := range ps {
		if n := len(out); n > 0 && int(r.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// splitHostPorts splits "HOST:PORTS" at its last colon, or "[HOST]:PORTS"
// after the bracket.
func splitHostPorts(s string) (host, ports string, ok bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]:")
		if end < 0 {
			return "", "", false
		}
		return s[1:end], s[end+2:], true
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// parseDest parses a dst entry, "SELECTOR:PORTS".
func parseDest(s string) (Dest, *problem) {
	host, ports, ok := splitHostPorts(s)
	if !ok {
		if _, prob := parseSelector(s); prob == nil {
			return Dest{}, bad(ErrBadPorts, "missing :PORTS; write "+s+":* for every port")
		}
		return Dest{}, bad(ErrBadPorts, "not SELECTOR:PORTS, such as tag:db:5432 or 10.1.0.0/24:*")
	}
	sel, prob := parseSelector(host)
	if prob != nil {
		if _, whole := parseSelector(s); whole == nil {
			// "peer:db" or "tag:web": the selector is fine, the ports
			// are missing.
			return Dest{}, bad(ErrBadPorts, "missing :PORTS; write "+s+":* for every port")
		}
		return Dest{}, prob
	}
	ps, prob := parsePorts(ports)
	if prob != nil {
		return Dest{}, prob
	}
	return Dest{Selector: sel, Ports: ps}, nil
}

// Package meshdns answers DNS for the mesh's names on each agent: A and
// AAAA records for NAME.VNET.SUFFIX (every peer the agent's network map
// holds, the agent itself included) and PTR records for the vnet's overlay
// addresses. It is authoritative for SUFFIX and for the overlay's reverse
// zones only, and refuses everything else: it is no recursive resolver.
//
// The answers come from a Table, which Build makes from the map by a pure
// function; the Server swaps its table atomically when the map changes,
// so no lock is held while it reads or writes a socket.
//
//	network map --Build--> Table --Server.Set--> atomic pointer <--Load-- each query
package meshdns

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// DefaultSuffix is the DNS suffix of the mesh's names: NAME.VNET.mesh.
const DefaultSuffix = "mesh"

// TTL is the time to live of every answer, the negative ones included (the
// SOA's minimum): short, so a peer that joins, moves or leaves is seen
// within seconds.
const TTL = 5

// maxReverseZones bounds how many reverse zones one overlay prefix is
// split into (a /12 is 16 zones of a /16); a prefix that would need more
// is served as the one zone that covers it.
const maxReverseZones = 64

// Host is one peer as the table sees it.
type Host struct {
	Name string
	// Addrs are its overlay addresses, IPv4 or IPv6, in any order.
	Addrs []netip.Addr
}

// Input is what a table is built from.
type Input struct {
	Suffix string // the zone of the names, e.g. "mesh" (CleanSuffix)
	VNet   string // the vnet of every host
	Self   string // this peer's name (the SOA's primary server); optional
	// Overlays are the vnet's overlay ranges: PTR records are answered for
	// addresses inside them.
	Overlays []netip.Prefix
	Hosts    []Host // every peer the agent sees, itself included
	Serial   uint32 // the SOA serial (the map index)
}

// Table is the answers of one network map. It is immutable once built and
// safe to read from any goroutine.
type Table struct {
	suffix   string                  // "mesh."
	vnetZone string                  // "default.mesh."; "" without a valid vnet
	names    map[string][]netip.Addr // lower-case FQDN -> addresses, IPv4 first
	ptr      map[netip.Addr]string   // address -> FQDN
	overlays []netip.Prefix
	revZones []string // "96.100.in-addr.arpa.", longest first
	mname    string
	serial   uint32
}

// Build makes the table of a map. Hosts whose name is not a DNS label are
// left out; a name two hosts share answers with the addresses of both.
func Build(in Input) *Table {
	t := &Table{
		suffix: dns.Fqdn(strings.ToLower(in.Suffix)),
		names:  make(map[string][]netip.Addr, len(in.Hosts)),
		ptr:    make(map[netip.Addr]string, len(in.Hosts)),
		serial: in.Serial,
	}
	t.mname = t.suffix
	vnet := strings.ToLower(in.VNet)
	if validLabel(vnet) {
		t.vnetZone = vnet + "." + t.suffix
	}
	for _, p := range in.Overlays {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		t.overlays = append(t.overlays, p)
		for _, z := range reverseZones(p) {
			if !slices.Contains(t.revZones, z) {
				t.revZones = append(t.revZones, z)
			}
		}
	}
	slices.SortFunc(t.revZones, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), cmp.Compare(a, b))
	})
	if t.vnetZone == "" {
		return t
	}
	if self := strings.ToLower(in.Self); validLabel(self) {
		t.mname = self + "." + t.vnetZone
	}
	for _, h := range in.Hosts {
		name := strings.ToLower(h.Name)
		if !validLabel(name) {
			continue
		}
		fqdn := name + "." + t.vnetZone
		for _, a := range h.Addrs {
			if !a.IsValid() {
				continue
			}
			a = a.Unmap()
			if !slices.Contains(t.names[fqdn], a) {
				t.names[fqdn] = append(t.names[fqdn], a)
			}
			if old, ok := t.ptr[a]; !ok || fqdn < old {
				t.ptr[a] = fqdn
			}
		}
	}
	for _, as := range t.names {
		if len(as) > 1 {
			slices.SortFunc(as, func(a, b netip.Addr) int {
				return cmp.Or(cmp.Compare(a.BitLen(), b.BitLen()), a.Compare(b))
			})
		}
	}
	return t
}

// Domains are the zones the table answers for, without the final dot:
// the suffix first, then the reverse zones. A host resolver sends these
// (and only these) to the server.
func (t *Table) Domains() []string {
	out := []string{strings.TrimSuffix(t.suffix, ".")}
	for _, z := range t.revZones {
		out = append(out, strings.TrimSuffix(z, "."))
	}
	return out
}

// Answer is the reply to req: the whole decision of the server, with no
// I/O. A nil table answers SERVFAIL (no map yet).
func (t *Table) Answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Compress = true
	m.RecursionAvailable = false
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(1232, false)
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return m
		}
	}
	if req.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m
	}
	if t == nil {
		m.Rcode = dns.RcodeServerFailure
		return m
	}
	name := strings.ToLower(q.Name)
	if dns.IsSubDomain(t.suffix, name) {
		t.forward(m, q, name)
		return m
	}
	if zone := t.reverseZoneOf(name); zone != "" {
		t.reverse(m, q, name, zone)
		return m
	}
	m.Rcode = dns.RcodeRefused
	return m
}

// forward answers a name under the suffix.
func (t *Table) forward(m *dns.Msg, q dns.Question, name string) {
	m.Authoritative = true
	addrs, ok := t.names[name]
	switch {
	case name == t.suffix:
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, t.soa(t.suffix))
			return
		}
	case name == t.vnetZone:
		// The vnet's own name exists (its peers are below it) but holds
		// no records.
	case !ok:
		m.Rcode = dns.RcodeNameError
	default:
		for _, a := range addrs {
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: TTL}
			switch {
			case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
			case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, t.soa(t.suffix)) // NXDOMAIN or no data of that type
	}
}

// reverse answers a name under one of the overlay's reverse zones.
func (t *Table) reverse(m *dns.Msg, q dns.Question, name, zone string) {
	pfx, ok := parseReverse(name)
	if ok && !t.inOverlay(pfx) {
		m.Rcode = dns.RcodeRefused // a zone that covers more than the overlay
		return
	}
	m.Authoritative = true
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case pfx.IsSingleIP():
		target, found := t.ptr[pfx.Addr()]
		if !found {
			m.Rcode = dns.RcodeNameError
		} else if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: TTL}, Ptr: target})
		}
	case name == zone && (q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY):
		m.Answer = append(m.Answer, t.soa(zone))
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, t.soa(zone))
	}
}

// inOverlay reports whether p (an address, or the network a partial
// reverse name stands for) overlaps an overlay range.
func (t *Table) inOverlay(p netip.Prefix) bool {
	for _, o := range t.overlays {
		if o.Overlaps(p) {
			return true
		}
	}
	return false
}

// reverseZoneOf is the longest reverse zone name is under ("" for none).
func (t *Table) reverseZoneOf(name string) string {
	for _, z := range t.revZones {
		if dns.IsSubDomain(z, name) {
			return z
		}
	}
	return ""
}

func (t *Table) soa(zone string) dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:      t.mname,
		Mbox:    "hostmaster." + t.suffix,
		Serial:  t.serial,
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: TTL,
	}
}

// reverseZones splits an overlay prefix into the reverse zones that cover
// exactly it (zones fall on octet boundaries for IPv4 and nibble
// boundaries for IPv6), or, when that needs more than maxReverseZones, the
// one zone that covers it.
func reverseZones(p netip.Prefix) []string {
	step := 8
	if p.Addr().Is6() {
		step = 4
	}
	up := (p.Bits() + step - 1) / step * step
	if 1<<(up-p.Bits()) > maxReverseZones {
		q, _ := p.Addr().Prefix(p.Bits() / step * step)
		return []string{reverseName(q, step)}
	}
	var out []string
	for i := range 1 << (up - p.Bits()) {
		out = append(out, reverseName(nthSubnet(p, up, i), step))
	}
	return out
}

// nthSubnet is the i-th subnet of length bits inside p.
func nthSubnet(p netip.Prefix, bits, i int) netip.Prefix {
	b := p.Addr().AsSlice()
	for pos := bits - 1; i > 0 && pos >= 0; pos-- {
		if i&1 == 1 {
			b[pos/8] |= 0x80 >> (pos % 8)
		}
		i >>= 1
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits)
}

// reverseName is the in-addr.arpa or ip6.arpa name of a prefix whose
// length is a multiple of step (8 or 4).
func reverseName(p netip.Prefix, step int) string {
	b := p.Addr().AsSlice()
	var labels []string
	for i := 0; i < p.Bits()/step; i++ {
		if step == 8 {
			labels = append(labels, strconv.Itoa(int(b[i])))
		} else {
			n := b[i/2] >> 4
			if i%2 == 1 {
				n = b[i/2] & 0xf
			}
			labels = append(labels, strconv.FormatUint(uint64(n), 16))
		}
	}
	slices.Reverse(labels)
	if step == 8 {
		labels = append(labels, "in-addr", "arpa")
	} else {
		labels = append(labels, "ip6", "arpa")
	}
	return strings.Join(labels, ".") + "."
}

// parseReverse reads a lower-case in-addr.arpa or ip6.arpa name: a whole
// address (a /32 or /128) or, with fewer labels, the network they name.
func parseReverse(name string) (netip.Prefix, bool) {
	var labels []string
	var step, size int
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa."):
		labels, step, size = dns.SplitDomainName(strings.TrimSuffix(name, ".in-addr.arpa.")), 8, 4
	case strings.HasSuffix(name, ".ip6.arpa."):
		labels, step, size = dns.SplitDomainName(strings.TrimSuffix(name, ".ip6.arpa.")), 4, 16
	default:
		return netip.Prefix{}, false
	}
	if len(labels) == 0 || len(labels)*step > size*8 {
		return netip.Prefix{}, false
	}
	b := make([]byte, size)
	for i, l := range slices.Backward(labels) {
		pos := len(labels) - 1 - i
		if step == 8 {
			n, err := strconv.ParseUint(l, 10, 8)
			if err != nil || len(l) > 1 && l[0] == '0' {
				return netip.Prefix{}, false
			}
			b[pos] = byte(n)
			continue
		}
		n, err := strconv.ParseUint(l, 16, 4)
		if err != nil || len(l) != 1 {
			return netip.Prefix{}, false
		}
		if pos%2 == 0 {
			b[pos/2] |= byte(n) << 4
		} else {
			b[pos/2] |= byte(n)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, len(labels)*step), true
}

// validLabel reports whether s is a lower-case DNS label of letters,
// digits and dashes (what the coordinators accept as a peer or vnet name).
func validLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CleanSuffix checks a DNS suffix (one or more labels, like "mesh" or
// "mesh.example.com") and returns it in lower case without a final dot.
func CleanSuffix(s string) (string, error) {
	s = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if s == "" {
		return "", errors.New("the DNS suffix is empty")
	}
	if len(s) > 190 {
		return "", fmt.Errorf("the DNS suffix %q is longer than 190 characters (NAME.VNET.SUFFIX must stay a valid name)", s)
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if !validLabel(l) {
			return "", fmt.Errorf("the DNS suffix %q is not a domain name: use labels of letters, digits and dashes separated by dots, like mesh or mesh.example.com", s)
		}
	}
	if labels[len(labels)-1] == "arpa" {
		return "", fmt.Errorf("the DNS suffix %q is under arpa, which holds the reverse zones", s)
	}
	return s, nil
}

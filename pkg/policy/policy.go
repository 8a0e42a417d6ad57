package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Limits on a policy; Parse refuses larger ones.
const (
	MaxBytes   = 1 << 20 // the JSON document
	MaxRules   = 1000    // entries of "acls"
	MaxTests   = 1000    // entries of "tests"
	MaxEntries = 1000    // entries of one rule's src or dst, or of one test's accept or deny
	MaxNameLen = 128     // a rule's or test's name
)

// Policy is a parsed access policy. Its zero value, and a nil *Policy, mean
// different things: a Policy with no rules accepts nothing, while a nil
// *Policy is "no policy", which accepts everything.
type Policy struct {
	// Rules are the entries of "acls", in order. Order does not change
	// what a policy accepts; it only decides which rule Match names.
	Rules []Rule
	// Tests are the entries of "tests": what the policy's author expects
	// it to accept and deny. Check runs them.
	Tests []Test
	// Skipped says what Decode left out because this version does not
	// understand it (always empty after Parse). Leaving out part of an
	// accept rule only ever accepts less.
	Skipped []string
}

// Rule is one entry of "acls". Every rule accepts: traffic from any of Src
// to any of Dst, over any protocol in Proto, passes.
type Rule struct {
	Name  string // optional, for people and error messages
	Src   []Selector
	Dst   []Dest
	Proto ProtoSet
}

// Test is one entry of "tests": from Src, every entry of Accept must be
// accepted and every entry of Deny denied, over Proto.
type Test struct {
	Name   string
	Src    Selector // KindTag, KindPeer, or KindCIDR with a single address
	Proto  Proto    // TCP unless the test says otherwise
	Accept []Target
	Deny   []Target
}

// Target is one entry of a test's accept or deny: one host and one port.
type Target struct {
	Host Selector // KindTag, KindPeer, or KindCIDR with a single address
	Port uint16   // 0 for icmp
}

// String is the target as a test writes it.
func (t Target) String() string {
	host := t.Host.String()
	if t.Host.Kind == KindCIDR && t.Host.Prefix.Addr().Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(t.Port))
}

// ruleJSON and testJSON are the wire shapes.
type ruleJSON struct {
	Name   string   `json:"name,omitempty"`
	Action string   `json:"action"`
	Src    []string `json:"src"`
	Dst    []string `json:"dst"`
	Proto  string   `json:"proto,omitempty"`
}

type testJSON struct {
	Name   string   `json:"name,omitempty"`
	Src    string   `json:"src"`
	Proto  string   `json:"proto,omitempty"`
	Accept []string `json:"accept,omitempty"`
	Deny   []string `json:"deny,omitempty"`
}

type policyJSON struct {
	ACLs  []json.RawMessage `json:"acls"`
	Tests []json.RawMessage `json:"tests,omitempty"`
}

// Parse parses and checks a policy as a user wrote it: every problem is an
// error, including fields this version does not know (a misspelt "prot"
// must not silently widen a rule). The error is an Errors listing each
// problem with its rule and field. Parse does not know the vnet: Check
// looks up tags and peers and runs the tests.
func Parse(data []byte) (*Policy, error) {
	return parse(data, true)
}

// Decode reads a policy that was stored by some version of meshd, perhaps
// a newer one. It ignores fields it does not know, and leaves out (listing
// them in Skipped) the src and dst entries, rules and tests it cannot
// read, so a newer policy costs an older reader some access rather than
// all of it. It fails only on what it cannot read at all: not JSON, or an
// action other than "accept" (ignoring a rule of another kind could accept
// more than the policy says). Whoever reads a policy that fails to decode
// should accept nothing.
//
// Compatibility rule for later versions: a field added to a rule may widen
// what the rule accepts, never narrow it, because older readers ignore it.
func Decode(data []byte) (*Policy, error) {
	return parse(data, false)
}

func parse(data []byte, strict bool) (*Policy, error) {
	if len(data) > MaxBytes {
		return nil, Errors{{Index: -1, Err: ErrTooLarge, Detail: fmt.Sprintf("%d bytes; at most %d", len(data), MaxBytes)}}
	}
	var doc policyJSON
	if err := decodeJSON(data, &doc, strict); err != nil {
		return nil, Errors{jsonError("", -1, err)}
	}
	var c errs
	if len(doc.ACLs) > MaxRules {
		c.add(&Error{Index: -1, Field: "acls", Err: ErrTooLarge, Detail: fmt.Sprintf("%d rules; at most %d", len(doc.ACLs), MaxRules)})
	}
	if len(doc.Tests) > MaxTests {
		c.add(&Error{Index: -1, Field: "tests", Err: ErrTooLarge, Detail: fmt.Sprintf("%d tests; at most %d", len(doc.Tests), MaxTests)})
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	p := &Policy{Rules: make([]Rule, 0, len(doc.ACLs))}
	for i, raw := range doc.ACLs {
		if c.full() {
			break
		}
		r, ok := parseRule(i, raw, strict, &c, p)
		if ok {
			p.Rules = append(p.Rules, r)
		}
	}
	for i, raw := range doc.Tests {
		if c.full() {
			break
		}
		t, ok := parseTest(i, raw, strict, &c, p)
		if ok {
			p.Tests = append(p.Tests, t)
		}
	}
	if !strict {
		// Decode reports only what makes the whole policy unreadable;
		// everything else was skipped.
		for _, e := range c.list {
			if errors.Is(e.Err, ErrAction) {
				return nil, c.list
			}
		}
		return p, nil
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	return p, nil
}

func decodeJSON(data []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	if _, err := dec.Token(); err == nil {
		return errors.New("data after the JSON value")
	}
	return nil
}

// jsonError turns an encoding/json error into an *Error.
func jsonError(section string, index int, err error) *Error {
	e := &Error{Section: section, Index: index, Err: ErrSyntax, Detail: err.Error()}
	var ute *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &ute):
		e.Field = ute.Field
		e.Detail = fmt.Sprintf("is JSON %s; want %s", ute.Value, jsonKind(ute.Type.String()))
	case errors.As(err, &se):
		e.Detail = fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	default:
		// encoding/json words an unknown field `json: unknown field "x"`.
		var field string
		if _, scanErr := fmt.Sscanf(err.Error(), "json: unknown field %q", &field); scanErr == nil {
			e.Err, e.Field, e.Detail = ErrUnknownField, field, ""
			if section == "" {
				e.Detail = `a policy has "acls" and "tests"`
			}
		}
	}
	return e
}

func jsonKind(goType string) string {
	switch goType {
	case "string":
		return "a string"
	case "[]string":
		return "an array of strings"
	case "[]json.RawMessage":
		return "an array of objects"
	case "policy.policyJSON", "policy.ruleJSON", "policy.testJSON":
		return "an object"
	}
	return goType
}

// skip records what Decode leaves out.
func skip(p *Policy, e *Error) { p.Skipped = append(p.Skipped, e.Error()) }

func parseRule(i int, raw json.RawMessage, strict bool, c *errs, p *Policy) (Rule, bool) {
	var rj ruleJSON
	if err := decodeJSON(raw, &rj, strict); err != nil {
		e := jsonError("acls", i, err)
		c.add(e)
		skip(p, e)
		return Rule{}, false
	}
	at := func(field, value string, prob *problem) *Error {
		return &Error{Section: "acls", Index: i, Name: rj.Name, Field: field, Value: value, Err: prob.err, Detail: prob.detail}
	}
	ok := true
	fail := func(e *Error) {
		c.add(e)
		skip(p, e)
		ok = false
	}
	// problem in one entry: an error for Parse; for Decode the entry is
	// left out, which only narrows an accept rule.
	entry := func(e *Error) {
		c.add(e)
		if strict {
			ok = false
		} else {
			skip(p, e)
		}
	}
	if len(rj.Name) > MaxNameLen {
		fail(at("name", "", bad(ErrTooLarge, fmt.Sprintf("at most %d bytes", MaxNameLen))))
	}
	switch rj.Action {
	case "accept":
	case "":
		fail(at("action", "", bad(ErrEmpty, `every rule says "action": "accept"`)))
	default:
		fail(at("action", rj.Action, bad(ErrAction, `the only action is "accept": what no rule accepts is denied`)))
	}
	r := Rule{Name: rj.Name}
	var prob *problem
	if r.Proto, prob = parseProtoSet(rj.Proto); prob != nil {
		fail(at("proto", rj.Proto, prob))
	}
	for _, f := range []struct {
		field string
		n     int
	}{{"src", len(rj.Src)}, {"dst", len(rj.Dst)}} {
		if f.n > MaxEntries {
			fail(at(f.field, "", bad(ErrTooLarge, fmt.Sprintf("%d entries; at most %d", f.n, MaxEntries))))
		}
	}
	for _, s := range rj.Src {
		sel, prob := parseSelector(s)
		if prob != nil {
			entry(at("src", s, prob))
			continue
		}
		r.Src = append(r.Src, sel)
	}
	for _, s := range rj.Dst {
		d, prob := parseDest(s)
		if prob == nil && r.Proto == ProtoICMP && !d.Ports.All() {
			prob = bad(ErrBadPorts, "icmp has no ports; write "+d.Selector.String()+":*")
		}
		if prob != nil {
			entry(at("dst", s, prob))
			continue
		}
		r.Dst = append(r.Dst, d)
	}
	if !ok {
		return Rule{}, false
	}
	if len(r.Src) == 0 {
		fail(at("src", "", bad(ErrEmpty, `a rule needs at least one source; "*" is any`)))
	}
	if len(r.Dst) == 0 {
		fail(at("dst", "", bad(ErrEmpty, `a rule needs at least one destination; "*:*" is any`)))
	}
	return r, ok
}

func parseTest(i int, raw json.RawMessage, strict bool, c *errs, p *Policy) (Test, bool) {
	var tj testJSON
	if err := decodeJSON(raw, &tj, strict); err != nil {
		e := jsonError("tests", i, err)
		c.add(e)
		skip(p, e)
		return Test{}, false
	}
	ok := true
	fail := func(field, value string, prob *problem) {
		e := &Error{Section: "tests", Index: i, Name: tj.Name, Field: field, Value: value, Err: prob.err, Detail: prob.detail}
		c.add(e)
		skip(p, e)
		ok = false
	}
	if len(tj.Name) > MaxNameLen {
		fail("name", "", bad(ErrTooLarge, fmt.Sprintf("at most %d bytes", MaxNameLen)))
	}
	t := Test{Name: tj.Name, Proto: TCP}
	if tj.Proto != "" {
		pr, known := ParseProto(tj.Proto)
		if !known {
			fail("proto", tj.Proto, bad(ErrBadProto, `use "tcp", "udp" or "icmp"; a test without "proto" is tcp`))
		}
		t.Proto = pr
	}
	if tj.Src == "" {
		fail("src", "", bad(ErrEmpty, "a test needs a source: tag:NAME, peer:NAME or an address"))
	} else if sel, prob := parseHost(tj.Src); prob != nil {
		fail("src", tj.Src, prob)
	} else {
		t.Src = sel
	}
	if len(tj.Accept)+len(tj.Deny) == 0 {
		fail("accept", "", bad(ErrEmpty, "a test needs at least one accept or deny entry"))
	}
	if n := max(len(tj.Accept), len(tj.Deny)); n > MaxEntries {
		fail("accept", "", bad(ErrTooLarge, fmt.Sprintf("%d entries in accept or deny; at most %d", n, MaxEntries)))
	}
	if !ok {
		return Test{}, false
	}
	for _, s := range tj.Accept {
		if tg, prob := parseTarget(s, t.Proto); prob != nil {
			fail("accept", s, prob)
		} else {
			t.Accept = append(t.Accept, tg)
		}
	}
	for _, s := range tj.Deny {
		if tg, prob := parseTarget(s, t.Proto); prob != nil {
			fail("deny", s, prob)
		} else {
			t.Deny = append(t.Deny, tg)
		}
	}
	return t, ok
}

// parseHost parses a test's source or the host of a test's target: a tag,
// a peer or one address.
func parseHost(s string) (Selector, *problem) {
	sel, prob := parseSelector(s)
	if prob != nil {
		return sel, prob
	}
	if sel.Kind == KindAny || sel.Kind == KindCIDR && !sel.Prefix.IsSingleIP() {
		return sel, bad(ErrBadTestTarget, "use tag:NAME, peer:NAME or one address")
	}
	return sel, nil
}

// parseTarget parses "HOST:PORT"; for icmp the port may be left out or be
// "*".
func parseTarget(s string, proto Proto) (Target, *problem) {
	if proto == ICMP || proto == ICMPv6 {
		if sel, prob := parseHost(s); prob == nil {
			return Target{Host: sel}, nil
		}
	}
	host, port, ok := splitHostPorts(s)
	if (proto == ICMP || proto == ICMPv6) && ok && port == "*" {
		sel, prob := parseHost(host)
		return Target{Host: sel}, prob
	}
	if !ok {
		return Target{}, bad(ErrBadPorts, "not HOST:PORT, such as tag:db:5432 or 10.1.0.5:443")
	}
	sel, prob := parseHost(host)
	if prob != nil {
		if _, whole := parseHost(s); whole == nil {
			return Target{}, bad(ErrBadPorts, "missing :PORT; a test names one port")
		}
		return Target{}, prob
	}
	n, valid := parsePort(port)
	if !valid {
		return Target{}, bad(ErrBadPorts, strconv.Quote(port)+" is not one port number (0-65535); a test names one port")
	}
	if proto == ICMP {
		return Target{}, bad(ErrBadPorts, "icmp has no ports; write "+host+" alone")
	}
	return Target{Host: sel, Port: n}, nil
}

// MarshalJSON writes the policy in its canonical form: the shape Parse
// reads, with every entry normalized ("443,80-90" becomes "80-90,443").
func (p *Policy) MarshalJSON() ([]byte, error) {
	type out struct {
		ACLs  []ruleJSON `json:"acls"`
		Tests []testJSON `json:"tests,omitempty"`
	}
	o := out{ACLs: make([]ruleJSON, len(p.Rules))}
	for i, r := range p.Rules {
		rj := ruleJSON{Name: r.Name, Action: "accept", Proto: r.Proto.String()}
		for _, s := range r.Src {
			rj.Src = append(rj.Src, s.String())
		}
		for _, d := range r.Dst {
			rj.Dst = append(rj.Dst, d.String())
		}
		o.ACLs[i] = rj
	}
	for _, t := range p.Tests {
		tj := testJSON{Name: t.Name, Src: t.Src.String()}
		if t.Proto != TCP {
			tj.Proto = t.Proto.String()
		}
		target := func(tg Target) string {
			if t.Proto == ICMP {
				return tg.Host.String()
			}
			return tg.String()
		}
		for _, tg := range t.Accept {
			tj.Accept = append(tj.Accept, target(tg))
		}
		for _, tg := range t.Deny {
			tj.Deny = append(tj.Deny, target(tg))
		}
		o.Tests = append(o.Tests, tj)
	}
	return json.Marshal(o)
}

// addrPrefix is the full-length prefix of a.
func addrPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func mustParse(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var a = netip.MustParseAddr

// vnet is a small vnet: two branch clients, a database, a laptop, and a
// gateway for the site 192.168.10.0/24.
var vnet = []Peer{
	{Name: "br1", Tags: []string{"branch"}, Addrs: []netip.Addr{a("100.96.0.1")}},
	{Name: "br2", Tags: []string{"branch", "ops"}, Addrs: []netip.Addr{a("100.96.0.2"), a("fd7a::2")}},
	{Name: "db1", Tags: []string{"db"}, Addrs: []netip.Addr{a("100.96.0.3")}},
	{Name: "cl1", Addrs: []netip.Addr{a("100.96.0.4")}},
	{Name: "gw1", Tags: []string{"site"}, Addrs: []netip.Addr{a("100.96.0.5")}, Subnets: []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24")}},
}

func TestAllows(t *testing.T) {
	d := NewDirectory(vnet)
	id := func(s string) Identity { return d.Identify(a(s)) }
	p := mustParse(t, specPolicy)
	for _, tt := range []struct {
		name     string
		src, dst Identity
		proto    Proto
		port     uint16
		want     bool
	}{
		{"tag to tag port", id("100.96.0.1"), id("100.96.0.3"), TCP, 5432, true},
		{"tag to tag other port", id("100.96.0.1"), id("100.96.0.3"), TCP, 5433, false},
		{"proto tcp only", id("100.96.0.1"), id("100.96.0.3"), UDP, 5432, false},
		{"icmp not in tcp rule", id("100.96.0.1"), id("100.96.0.3"), ICMP, 0, false},
		{"second tag address", id("fd7a::2"), id("100.96.0.3"), TCP, 5432, true},
		{"untagged source", id("100.96.0.4"), id("100.96.0.3"), TCP, 5432, false},
		{"reverse direction", id("100.96.0.3"), id("100.96.0.1"), TCP, 5432, false},
		{"cidr behind gateway", id("100.96.0.1"), id("192.168.10.10"), TCP, 443, true},
		{"cidr port list", id("100.96.0.2"), id("192.168.10.10"), TCP, 8080, true},
		{"cidr other port", id("100.96.0.2"), id("192.168.10.10"), TCP, 22, false},
		{"cidr does not cover the gateway", id("100.96.0.1"), id("100.96.0.5"), TCP, 443, false},
		{"peer any port", id("100.96.0.1"), id("100.96.0.4"), TCP, 1, true},
		{"peer any port 65535", id("100.96.0.1"), id("100.96.0.4"), TCP, 65535, true},
		{"lan host is no peer", id("192.168.10.10"), id("100.96.0.3"), TCP, 5432, false},
		{"unknown proto", id("100.96.0.1"), id("100.96.0.4"), Proto(47), 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allows(tt.src, tt.dst, tt.proto, tt.port); got != tt.want {
				t.Fatalf("Allows(%v, %v, %v, %d) = %v; want %v", tt.src, tt.dst, tt.proto, tt.port, got, tt.want)
			}
		})
	}
	var none *Policy
	if !none.Allows(Identity{}, Identity{}, Proto(47), 0) {
		t.Fatalf("a nil policy denies; want allow all")
	}
	if (&Policy{}).Allows(id("100.96.0.1"), id("100.96.0.3"), TCP, 5432) {
		t.Fatalf("a policy with no rules allows; want deny all")
	}
}

func TestProtocols(t *testing.T) {
	src, dst := Identity{Name: "x", Addr: a("100.96.0.1")}, Identity{Name: "y", Addr: a("100.96.0.2")}
	for _, tt := range []struct {
		rule  string
		proto Proto
		port  uint16
		want  bool
	}{
		{`"dst": ["*:*"]`, TCP, 1, true},
		{`"dst": ["*:*"]`, UDP, 1, true},
		{`"dst": ["*:*"]`, ICMP, 0, true},
		{`"dst": ["*:*"]`, ICMPv6, 0, true},
		{`"dst": ["*:*"]`, Proto(47), 0, false},
		{`"dst": ["*:53"]`, UDP, 53, true},
		{`"dst": ["*:53"]`, TCP, 53, true},
		// ICMP has no ports: a rule that opens some ports opens no ping.
		{`"dst": ["*:53"]`, ICMP, 0, false},
		{`"dst": ["*:53"], "proto": "udp"`, UDP, 53, true},
		{`"dst": ["*:53"], "proto": "udp"`, TCP, 53, false},
		{`"dst": ["*:*"], "proto": "icmp"`, ICMP, 0, true},
		{`"dst": ["*:*"], "proto": "icmp"`, ICMPv6, 0, true},
		{`"dst": ["*:*"], "proto": "icmp"`, TCP, 80, false},
		{`"dst": ["*:*"], "proto": "tcp"`, ICMP, 0, false},
	} {
		t.Run(fmt.Sprintf("%s/%v/%d", tt.rule, tt.proto, tt.port), func(t *testing.T) {
			p := mustParse(t, `{"acls": [{"action": "accept", "src": ["*"], `+tt.rule+`}]}`)
			if got := p.Allows(src, dst, tt.proto, tt.port); got != tt.want {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestOverlappingRulesAnyAcceptWins(t *testing.T) {
	p := mustParse(t, `{"acls": [
		{"name": "narrow", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432"], "proto": "tcp"},
		{"name": "wide", "action": "accept", "src": ["100.96.0.0/12"], "dst": ["tag:db:5000-6000"]},
		{"name": "ops", "action": "accept", "src": ["tag:ops"], "dst": ["*:22"]}]}`)
	d := NewDirectory(vnet)
	br1, br2, db := d.Identify(a("100.96.0.1")), d.Identify(a("100.96.0.2")), d.Identify(a("100.96.0.3"))
	for _, tt := range []struct {
		name     string
		src      Identity
		proto    Proto
		port     uint16
		wantRule int // -1: denied
	}{
		{"both rules; the first is named", br1, TCP, 5432, 0},
		{"only the wide one", br1, UDP, 5432, 1},
		{"wide range", br1, TCP, 5999, 1},
		{"neither", br1, TCP, 22, -1},
		{"a third rule widens for one tag", br2, TCP, 22, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			i, ok := p.Match(tt.src, db, tt.proto, tt.port)
			if i != tt.wantRule || ok != (tt.wantRule >= 0) {
				t.Fatalf("got rule %d, %v; want %d", i, ok, tt.wantRule)
			}
			// Order never changes the answer, only which rule is named.
			q := &Policy{Rules: slices.Clone(p.Rules)}
			slices.Reverse(q.Rules)
			if got := q.Allows(tt.src, db, tt.proto, tt.port); got != ok {
				t.Fatalf("reversed rules: got %v; want %v", got, ok)
			}
		})
	}
}

func TestCheckNamesUnknownTagsAndPeers(t *testing.T) {
	p := mustParse(t, `{"acls": [
		{"action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432"]},
		{"name": "typo", "action": "accept", "src": ["tag:brnch", "peer:cl1"], "dst": ["peer:cl9:*", "tag:new:1"]}]}`)
	err := p.Check(NewDirectory(vnet, "new"))
	want := []where{
		{"acls", 1, "src", "tag:brnch", ErrUnknownTag},
		{"acls", 1, "dst", "peer:cl9:*", ErrUnknownPeer},
	}
	if got := wheres(t, err); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	var e *Error
	if errors.As(err, &e); e.Name != "typo" {
		t.Fatalf("got name %q; want the rule's name", e.Name)
	}
	if err := p.Check(nil); err != nil {
		t.Fatalf("Check(nil) looks names up: %v", err)
	}
}

func TestPolicyTests(t *testing.T) {
	d := NewDirectory(vnet)
	rules := `"acls": [
		{"name": "branch to db", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432", "192.168.10.0/24:443"], "proto": "tcp"},
		{"name": "ping", "action": "accept", "src": ["*"], "dst": ["peer:gw1:*"], "proto": "icmp"},
		{"name": "cl1 dns", "action": "accept", "src": ["peer:cl1"], "dst": ["100.96.0.3:53"], "proto": "udp"}]`
	for _, tt := range []struct {
		name  string
		tests string
		want  []where
	}{
		{"all pass", `[
			{"src": "tag:branch", "accept": ["tag:db:5432", "peer:db1:5432", "192.168.10.10:443", "100.96.0.3:5432"], "deny": ["192.168.10.10:22", "peer:cl1:5432"]},
			{"src": "peer:br2", "accept": ["peer:db1:5432"]},
			{"src": "100.96.0.1", "accept": ["tag:db:5432"]},
			{"src": "192.168.10.7", "deny": ["tag:db:5432"]},
			{"src": "peer:cl1", "proto": "udp", "accept": ["peer:db1:53"], "deny": ["peer:db1:54"]},
			{"src": "peer:cl1", "proto": "icmp", "accept": ["peer:gw1", "100.96.0.5"], "deny": ["peer:db1"]}]`, nil},
		{"a deny that is accepted names the rule", `[{"src": "tag:branch", "accept": ["tag:db:5432"], "deny": ["192.168.10.10:443"]}]`,
			[]where{{"tests", 0, "deny", "192.168.10.10:443", ErrTestFailed}}},
		{"an accept that is denied", `[{"src": "peer:cl1", "accept": ["peer:db1:53", "tag:db:5432"]}]`,
			[]where{{"tests", 0, "accept", "peer:db1:53", ErrTestFailed}, {"tests", 0, "accept", "tag:db:5432", ErrTestFailed}}},
		{"unknown names in tests", `[{"src": "peer:nobody", "accept": ["tag:db:5432"]}, {"src": "tag:branch", "accept": ["tag:nope:1"]}]`,
			[]where{{"tests", 0, "src", "peer:nobody", ErrUnknownPeer}, {"tests", 1, "accept", "tag:nope:1", ErrUnknownTag}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, `{`+rules+`, "tests": `+tt.tests+`}`)
			err := p.Check(d)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("got %v; want the tests to pass", err)
				}
				return
			}
			if got := wheres(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v; want %+v\n(%v)", got, tt.want, err)
			}
		})
	}
	_, err := Validate([]byte(`{`+rules+`, "tests": [{"src": "tag:branch", "deny": ["192.168.10.10:443"]}]}`), d)
	want := `tests[0] deny "192.168.10.10:443": policy test failed: tag:branch to 192.168.10.10:443 over tcp is accepted by acls[0] ("branch to db"); the test expects it denied`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v; want %s", err, want)
	}
}

func TestResolve(t *testing.T) {
	d := NewDirectory(vnet, "spare")
	for _, tt := range []struct {
		in   string
		want Identity
		err  error
	}{
		{"peer:br2", Identity{Name: "br2", Tags: []string{"branch", "ops"}, Addr: a("100.96.0.2")}, nil},
		{"tag:spare", Identity{Tags: []string{"spare"}}, nil},
		{"100.96.0.3", Identity{Name: "db1", Tags: []string{"db"}, Addr: a("100.96.0.3")}, nil},
		{"192.168.10.10", Identity{Addr: a("192.168.10.10")}, nil},
		{"peer:zz", Identity{}, ErrUnknownPeer},
		{"tag:zz", Identity{}, ErrUnknownTag},
		{"10.0.0.0/8", Identity{}, ErrBadTestTarget},
		{"*", Identity{}, ErrBadTestTarget},
		{"group:x", Identity{}, ErrSelectorKind},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := d.Resolve(tt.in)
			if !errors.Is(err, tt.err) || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

package policy

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Selector
		err  error
	}{
		{"*", Selector{Kind: KindAny}, nil},
		{"tag:branch", Selector{Kind: KindTag, Name: "branch"}, nil},
		{"tag:site:a", Selector{Kind: KindTag, Name: "site:a"}, nil},
		{"peer:cl1", Selector{Kind: KindPeer, Name: "cl1"}, nil},
		{"10.1.0.0/24", Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("10.1.0.0/24")}, nil},
		{"10.1.0.5", Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("10.1.0.5/32")}, nil},
		{"fd00::/64", Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("fd00::/64")}, nil},
		{"fd00::1", Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("fd00::1/128")}, nil},
		{"0.0.0.0/0", Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("0.0.0.0/0")}, nil},
		{"tag:", Selector{}, ErrBadName},
		{"tag:DB", Selector{}, ErrBadName},
		{"tag:-x", Selector{}, ErrBadName},
		{"peer:", Selector{}, ErrBadName},
		{"peer:a_b", Selector{}, ErrBadName},
		{"peer:x-", Selector{}, ErrBadName},
		{"group:eng", Selector{}, ErrSelectorKind},
		{"autogroup:internet", Selector{}, ErrSelectorKind},
		{"db", Selector{}, ErrSelectorKind},
		{"", Selector{}, ErrSelectorKind},
		{"**", Selector{}, ErrSelectorKind},
		{"10.1.0.1/24", Selector{}, ErrBadCIDR},
		{"10.1.0.0/33", Selector{}, ErrBadCIDR},
		{"300.1.1.1", Selector{}, ErrBadCIDR},
		{"10.1.0", Selector{}, ErrBadCIDR},
		{"fe80::1%eth0", Selector{}, ErrBadCIDR},
		{"::ffff:10.0.0.1", Selector{}, ErrBadCIDR},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, prob := parseSelector(tt.in)
			if tt.err != nil {
				if prob == nil || prob.err != tt.err {
					t.Fatalf("got %v, %v; want error %v", got, prob, tt.err)
				}
				return
			}
			if prob != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, prob, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("got String %q; want %q", got.String(), tt.in)
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want PortSet
		str  string // "" when ok and the same as in
		err  bool
	}{
		{in: "*", want: AllPorts},
		{in: "443", want: PortSet{{443, 443}}},
		{in: "8000-8080", want: PortSet{{8000, 8080}}},
		{in: "443,8080", want: PortSet{{443, 443}, {8080, 8080}}},
		{in: "8080,443", want: PortSet{{443, 443}, {8080, 8080}}, str: "443,8080"},
		{in: "80,81,82-90,85", want: PortSet{{80, 90}}, str: "80-90"},
		{in: "0-65535", want: AllPorts, str: "*"},
		{in: "65535", want: PortSet{{65535, 65535}}},
		{in: "0", want: PortSet{{0, 0}}},
		{in: "", err: true},
		{in: "65536", err: true},
		{in: "99999", err: true},
		{in: "9-1", err: true},
		{in: "1-", err: true},
		{in: "-1", err: true},
		{in: "443,", err: true},
		{in: ",443", err: true},
		{in: "+1", err: true},
		{in: " 443", err: true},
		{in: "1-2-3", err: true},
		{in: "http", err: true},
		{in: "*,443", err: true},
		{in: strings.Repeat("1,", 64) + "1", err: true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, prob := parsePorts(tt.in)
			if tt.err {
				if prob == nil || prob.err != ErrBadPorts {
					t.Fatalf("got %v, %v; want ErrBadPorts", got, prob)
				}
				return
			}
			if prob != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, prob, tt.want)
			}
			want := tt.str
			if want == "" {
				want = tt.in
			}
			if got.String() != want {
				t.Fatalf("got String %q; want %q", got.String(), want)
			}
		})
	}
}

func TestPortSetContains(t *testing.T) {
	ps := PortSet{{22, 22}, {443, 443}, {8000, 8080}}
	for port, want := range map[uint16]bool{0: false, 21: false, 22: true, 23: false, 443: true, 7999: false, 8000: true, 8042: true, 8080: true, 8081: false, 65535: false} {
		if got := ps.Contains(port); got != want {
			t.Errorf("Contains(%d) = %v; want %v", port, got, want)
		}
	}
	if !AllPorts.Contains(0) || !AllPorts.Contains(65535) {
		t.Errorf("AllPorts does not contain every port")
	}
}

func TestParseDest(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // canonical; "" when the same
		err  error
	}{
		{in: "tag:db:5432"},
		{in: "tag:site:a:443"},
		{in: "peer:cl1:*"},
		{in: "*:*"},
		{in: "192.168.10.0/24:443,8080"},
		{in: "192.168.10.10:22"},
		{in: "[fd00::/64]:443"},
		{in: "fd00::/64:443", want: "[fd00::/64]:443"},
		{in: "[fd00::1]:22"},
		{in: "tag:db", err: ErrBadPorts},
		{in: "peer:cl1", err: ErrBadPorts},
		{in: "*", err: ErrBadPorts},
		{in: "10.1.0.0/24", err: ErrBadPorts},
		{in: "tag:db:99999", err: ErrBadPorts},
		{in: "tag:db:", err: ErrBadPorts},
		{in: "group:x:443", err: ErrSelectorKind},
		{in: "db:443", err: ErrSelectorKind},
		{in: "10.1.0.1/24:443", err: ErrBadCIDR},
		{in: "[fd00::1:22", err: ErrBadPorts},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, prob := parseDest(tt.in)
			if tt.err != nil {
				if prob == nil || prob.err != tt.err {
					t.Fatalf("got %v, %v; want error %v", got, prob, tt.err)
				}
				return
			}
			want := tt.want
			if want == "" {
				want = tt.in
			}
			if prob != nil || got.String() != want {
				t.Fatalf("got %v, %v; want %s", got, prob, want)
			}
		})
	}
}

// where is an *Error reduced to what the tests compare.
type where struct {
	Section string
	Index   int
	Field   string
	Value   string
	Err     error
}

func wheres(t *testing.T, err error) []where {
	t.Helper()
	var list Errors
	if !errors.As(err, &list) {
		t.Fatalf("got %T %v; want policy.Errors", err, err)
	}
	var out []where
	for _, e := range list {
		out = append(out, where{e.Section, e.Index, e.Field, e.Value, e.Err})
	}
	return out
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		doc  string
		want []where
	}{
		{"not json", `{"acls": [`, []where{{"", -1, "", "", ErrSyntax}}},
		{"not an object", `[1]`, []where{{"", -1, "", "", ErrSyntax}}},
		{"trailing data", `{"acls": []} {}`, []where{{"", -1, "", "", ErrSyntax}}},
		{"unknown section", `{"acls": [], "groups": {}}`, []where{{"", -1, "groups", "", ErrUnknownField}}},
		{"unknown rule field", `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "prot": "tcp"}]}`,
			[]where{{"acls", 0, "prot", "", ErrUnknownField}}},
		{"src not a list", `{"acls": [{"action": "accept", "src": "*", "dst": ["*:*"]}]}`,
			[]where{{"acls", 0, "src", "", ErrSyntax}}},
		{"deny action", `{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}`,
			[]where{{"acls", 0, "action", "deny", ErrAction}}},
		{"no action", `{"acls": [{"src": ["*"], "dst": ["*:*"]}]}`,
			[]where{{"acls", 0, "action", "", ErrEmpty}}},
		{"bad proto", `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "sctp"}]}`,
			[]where{{"acls", 0, "proto", "sctp", ErrBadProto}}},
		{"icmp with ports", `{"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:22"], "proto": "icmp"}]}`,
			[]where{{"acls", 0, "dst", "tag:db:22", ErrBadPorts}}},
		{"empty src and dst", `{"acls": [{"action": "accept", "src": [], "dst": []}]}`,
			[]where{{"acls", 0, "src", "", ErrEmpty}, {"acls", 0, "dst", "", ErrEmpty}}},
		{"every entry, every rule", `{"acls": [
			{"action": "accept", "src": ["*"], "dst": ["*:*"]},
			{"name": "db", "action": "accept", "src": ["group:eng", "tag:ok", "10.0.0.1/8"], "dst": ["tag:db", "tag:db:70000", "peer:x:1-2"]}]}`,
			[]where{
				{"acls", 1, "src", "group:eng", ErrSelectorKind},
				{"acls", 1, "src", "10.0.0.1/8", ErrBadCIDR},
				{"acls", 1, "dst", "tag:db", ErrBadPorts},
				{"acls", 1, "dst", "tag:db:70000", ErrBadPorts},
			}},
		{"bad tests", `{"acls": [], "tests": [
			{"src": "*", "accept": ["10.0.0.1:22"]},
			{"src": "tag:a", "accept": ["10.0.0.0/24:22"], "deny": ["tag:b"]},
			{"src": "tag:a"},
			{"src": "tag:a", "proto": "gre", "accept": ["tag:b:1"]},
			{"src": "tag:a", "accept": ["tag:b:1-2"], "color": 1}]}`,
			[]where{
				{"tests", 0, "src", "*", ErrBadTestTarget},
				{"tests", 1, "accept", "10.0.0.0/24:22", ErrBadTestTarget},
				{"tests", 1, "deny", "tag:b", ErrBadPorts},
				{"tests", 2, "accept", "", ErrEmpty},
				{"tests", 3, "proto", "gre", ErrBadProto},
				{"tests", 4, "color", "", ErrUnknownField},
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("got %+v; want an error", p)
			}
			if got := wheres(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v; want %+v\n(%v)", got, tt.want, err)
			}
			var e *Error
			if !errors.As(err, &e) || e != err.(Errors)[0] {
				t.Fatalf("errors.As does not find the first *Error in %v", err)
			}
		})
	}
}

func TestErrorMessageNamesRuleAndField(t *testing.T) {
	_, err := Parse([]byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]},
		{"name": "db access", "action": "accept", "src": ["*"], "dst": ["tag:db:99999"]}]}`))
	want := `acls[1] ("db access") dst "tag:db:99999": invalid ports: "99999" is not a port number (0-65535)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v; want %s", err, want)
	}
	if !errors.Is(err, ErrBadPorts) {
		t.Fatalf("errors.Is(%v, ErrBadPorts) is false", err)
	}
}

func TestParseLimits(t *testing.T) {
	big := `{"acls": [` + strings.Repeat(`{"action": "accept", "src": ["*"], "dst": ["*:*"]},`, MaxRules) + `{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`
	if _, err := Parse([]byte(big)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d rules: got %v; want ErrTooLarge", MaxRules+1, err)
	}
	huge := make([]byte, MaxBytes+1)
	if _, err := Parse(huge); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d bytes: got %v; want ErrTooLarge", len(huge), err)
	}
	srcs := `"` + strings.Repeat(`*", "`, MaxEntries) + `*"`
	if _, err := Parse([]byte(`{"acls": [{"action": "accept", "src": [` + srcs + `], "dst": ["*:*"]}]}`)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d sources: got %v; want ErrTooLarge", MaxEntries+1, err)
	}
}

// specPolicy is the example of SPEC's contract item 10.
const specPolicy = `{"acls": [{"action": "accept", "src": ["tag:branch"], "dst":
	["tag:db:5432", "192.168.10.0/24:443,8080", "peer:cl1:*"], "proto": "tcp"}], "tests": [{"src":
	"tag:branch", "accept": ["192.168.10.10:443"], "deny": ["192.168.10.10:22"]}]}`

func TestParseSpecExample(t *testing.T) {
	p, err := Parse([]byte(specPolicy))
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{
		Rules: []Rule{{
			Src: []Selector{{Kind: KindTag, Name: "branch"}},
			Dst: []Dest{
				{Selector{Kind: KindTag, Name: "db"}, PortSet{{5432, 5432}}},
				{Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("192.168.10.0/24")}, PortSet{{443, 443}, {8080, 8080}}},
				{Selector{Kind: KindPeer, Name: "cl1"}, AllPorts},
			},
			Proto: ProtoTCP,
		}},
		Tests: []Test{{
			Src:    Selector{Kind: KindTag, Name: "branch"},
			Proto:  TCP,
			Accept: []Target{{Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("192.168.10.10/32")}, 443}},
			Deny:   []Target{{Selector{Kind: KindCIDR, Prefix: netip.MustParsePrefix("192.168.10.10/32")}, 22}},
		}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v; want %+v", p, want)
	}
	if err := p.Check(nil); err != nil {
		t.Fatalf("the example's own tests: %v", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	doc := `{"acls": [
		{"name": "web", "action": "accept", "src": ["tag:branch", "10.0.0.0/8", "fd00::5"], "dst": ["fd00::/64:443", "tag:web:8080,80-90,443"]},
		{"action": "accept", "src": ["*"], "dst": ["peer:gw1:*"], "proto": "icmp"}],
	"tests": [{"name": "t", "src": "peer:cl1", "proto": "udp", "accept": ["[fd00::1]:53"], "deny": ["tag:web:22"]},
		{"src": "10.0.0.1", "proto": "icmp", "accept": ["peer:gw1", "fd00::1"]}]}`
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"acls":[{"name":"web","action":"accept","src":["tag:branch","10.0.0.0/8","fd00::5"],"dst":["[fd00::/64]:443","tag:web:80-90,443,8080"]},` +
		`{"action":"accept","src":["*"],"dst":["peer:gw1:*"],"proto":"icmp"}],` +
		`"tests":[{"name":"t","src":"peer:cl1","proto":"udp","accept":["[fd00::1]:53"],"deny":["tag:web:22"]},` +
		`{"src":"10.0.0.1","proto":"icmp","accept":["peer:gw1","fd00::1"]}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	q, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal): %v", err)
	}
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("got %+v after a round trip; want %+v", q, p)
	}
}

func TestDecodeTolerates(t *testing.T) {
	doc := `{"acls": [
		{"action": "accept", "src": ["group:eng", "tag:a"], "dst": ["tag:b:443", "autogroup:x:1"], "expires": "2030-01-01"},
		{"action": "accept", "src": ["group:eng"], "dst": ["*:*"]},
		{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "sctp"}],
		"groups": {"eng": ["x"]},
		"tests": [{"src": "group:eng", "accept": ["tag:b:443"]}]}`
	if _, err := Parse([]byte(doc)); err == nil {
		t.Fatalf("Parse accepted fields and selectors it does not know")
	}
	p, err := Decode([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	// Only the parts this version understands remain: the policy accepts
	// less than its author meant, never more.
	want := []Rule{{
		Src:   []Selector{{Kind: KindTag, Name: "a"}},
		Dst:   []Dest{{Selector{Kind: KindTag, Name: "b"}, PortSet{{443, 443}}}},
		Proto: ProtoAll,
	}}
	if !reflect.DeepEqual(p.Rules, want) {
		t.Fatalf("got rules %+v; want %+v", p.Rules, want)
	}
	if len(p.Tests) != 0 {
		t.Fatalf("got tests %+v; want the unreadable one left out", p.Tests)
	}
	if len(p.Skipped) == 0 {
		t.Fatalf("Skipped is empty; want what was left out")
	}
	// An action it does not know could be a deny: reading the rest
	// would accept more than the policy says.
	if _, err := Decode([]byte(`{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:22"]}, {"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)); !errors.Is(err, ErrAction) {
		t.Fatalf("got %v; want ErrAction", err)
	}
	if _, err := Decode([]byte(`not json`)); !errors.Is(err, ErrSyntax) {
		t.Fatalf("got %v; want ErrSyntax", err)
	}
}

package policy

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParse feeds the parser arbitrary documents: it must never panic,
// Decode must read whatever Parse accepts the same way, and a parsed
// policy must survive a round trip through its canonical JSON.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		specPolicy,
		`{"acls": []}`,
		`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`,
		`{"acls": [{"name": "x", "action": "accept", "src": ["10.0.0.0/8", "fd00::1", "peer:a"], "dst": ["[fd00::/64]:1-2,3", "tag:b:c:*"], "proto": "icmp"}]}`,
		`{"acls": [{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:443"]}], "tests": [{"src": "peer:x", "proto": "icmp", "accept": ["fd00::1", "tag:b"], "deny": ["1.2.3.4:*"]}]}`,
		`{"acls": [{"action": "deny", "src": ["group:x"], "dst": ["db"], "extra": 1}], "groups": {}}`,
		`{"acls": null, "tests": [{}]}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if _, ok := err.(Errors); !ok {
				t.Fatalf("Parse error is %T; want Errors", err)
			}
			_, _ = Decode(data)
			return
		}
		if err := p.Check(nil); err != nil {
			if _, ok := err.(Errors); !ok {
				t.Fatalf("Check error is %T; want Errors", err)
			}
		}
		d, err := Decode(data)
		if err != nil || !reflect.DeepEqual(p, d) {
			t.Fatalf("Decode disagrees with Parse: %+v, %v; want %+v", d, err, p)
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		q, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(Marshal(p)) = %v\n%s", err, b)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v\n%s", p, q, b)
		}
	})
}

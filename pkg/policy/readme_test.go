package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

// TestReadmeExample keeps the example of README.md valid.
func TestReadmeExample(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "```json\n")
	doc, _, _ := strings.Cut(rest, "```")
	d := NewDirectory([]Peer{
		{Name: "br1", Tags: []string{"branch"}, Addrs: []netip.Addr{a("100.96.0.1")}},
		{Name: "db1", Tags: []string{"db"}, Addrs: []netip.Addr{a("100.96.0.2")}},
		{Name: "cl1", Addrs: []netip.Addr{a("100.96.0.3")}},
		{Name: "sip1", Addrs: []netip.Addr{a("100.96.0.4")}},
		{Name: "gw1", Addrs: []netip.Addr{a("100.96.0.5")}, Subnets: []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24")}},
		{Name: "gwa", Addrs: []netip.Addr{a("100.96.0.6")}, Subnets: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}},
	}, "ops")
	if _, err := Validate([]byte(doc), d); err != nil {
		t.Fatalf("README example: %v\n%s", err, doc)
	}
}

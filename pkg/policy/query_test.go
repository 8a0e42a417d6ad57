package policy

import (
	"errors"
	"net/netip"
	"testing"
)

func TestQuery(t *testing.T) {
	d := NewDirectory([]Peer{
		{Name: "cl1", Tags: []string{"branch"}, Addrs: []netip.Addr{netip.MustParseAddr("100.96.0.1")}},
		{Name: "db1", Tags: []string{"db"}, Addrs: []netip.Addr{netip.MustParseAddr("100.96.0.2")}},
	})
	p, err := Parse([]byte(`{"acls":[{"name":"db","action":"accept","src":["tag:branch"],"dst":["tag:db:5432"],"proto":"tcp"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, src, dst string
		proto          Proto
		rule           int
		ok             bool
		err            error
	}{
		{"tag to tag", "tag:branch", "tag:db:5432", TCP, 0, true, nil},
		{"peer to address", "peer:cl1", "100.96.0.2:5432", TCP, 0, true, nil},
		{"other port", "peer:cl1", "peer:db1:22", TCP, -1, false, nil},
		{"other protocol", "peer:cl1", "peer:db1:5432", UDP, -1, false, nil},
		{"icmp without a port", "peer:cl1", "peer:db1", ICMP, -1, false, nil},
		{"unknown tag", "tag:nope", "peer:db1:5432", TCP, -1, false, ErrUnknownTag},
		{"unknown peer", "peer:cl1", "peer:nope:5432", TCP, -1, false, ErrUnknownPeer},
		{"no port", "peer:cl1", "peer:db1", TCP, -1, false, ErrBadPorts},
		{"a range", "10.0.0.0/8", "peer:db1:5432", TCP, -1, false, ErrBadTestTarget},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rule, ok, err := p.Query(d, tt.src, tt.dst, tt.proto)
			if !errors.Is(err, tt.err) || rule != tt.rule || ok != tt.ok {
				t.Fatalf("got %d, %v, %v; want %d, %v, %v", rule, ok, err, tt.rule, tt.ok, tt.err)
			}
		})
	}
	if rule, ok, err := (*Policy)(nil).Query(d, "peer:cl1", "peer:db1:22", TCP); rule != -1 || !ok || err != nil {
		t.Fatalf("no policy: got %d, %v, %v; want -1, true, nil", rule, ok, err)
	}
}

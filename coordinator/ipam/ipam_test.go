package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestAllocate(t *testing.T) {
	p := netip.MustParsePrefix("10.9.0.0/29") // usable .1 .. .6
	for _, tt := range []struct {
		name       string
		next       string
		taken      []string
		want, curs string
		err        error
	}{
		{"empty pool starts at first", "", nil, "10.9.0.1", "10.9.0.2", nil},
		{"skips taken", "10.9.0.1", []string{"10.9.0.1", "10.9.0.2"}, "10.9.0.3", "10.9.0.4", nil},
		{"wraps at end", "10.9.0.6", []string{"10.9.0.6"}, "10.9.0.1", "10.9.0.2", nil},
		{"last usable wraps cursor", "10.9.0.6", nil, "10.9.0.6", "10.9.0.1", nil},
		{"cursor outside prefix resets", "192.168.1.1", nil, "10.9.0.1", "10.9.0.2", nil},
		{"never network or broadcast", "10.9.0.7", nil, "10.9.0.1", "10.9.0.2", nil},
		{"exhausted", "10.9.0.3", []string{"10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}, "", "", ErrExhausted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			taken := map[netip.Addr]bool{}
			for _, s := range tt.taken {
				taken[netip.MustParseAddr(s)] = true
			}
			var next netip.Addr
			if tt.next != "" {
				next = netip.MustParseAddr(tt.next)
			}
			got, cur, err := Allocate(p, next, func(a netip.Addr) bool { return taken[a] })
			if !errors.Is(err, tt.err) {
				t.Fatalf("got err %v; want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if got.String() != tt.want || cur.String() != tt.curs {
				t.Fatalf("got %v, cursor %v; want %v, cursor %v", got, cur, tt.want, tt.curs)
			}
		})
	}
}

func TestAllocateUniqueUntilFull(t *testing.T) {
	p := netip.MustParsePrefix("100.96.0.0/24")
	taken := map[netip.Addr]bool{}
	var cur netip.Addr
	for i := 0; i < 254; i++ {
		a, c, err := Allocate(p, cur, func(a netip.Addr) bool { return taken[a] })
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if taken[a] {
			t.Fatalf("allocation %d: %v handed out twice", i, a)
		}
		taken[a], cur = true, c
	}
	if _, _, err := Allocate(p, cur, func(a netip.Addr) bool { return taken[a] }); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v; want %v", err, ErrExhausted)
	}
}

func TestAllocateEachDualStack(t *testing.T) {
	v4 := netip.MustParsePrefix("100.70.0.0/30") // usable .1 .2
	v6 := netip.MustParsePrefix("fd7a:115c:a1e0::/126")
	for _, tt := range []struct {
		name    string
		pools   []Pool
		taken   []string
		want    []string
		cursors []string
		failed  string
	}{
		{"ipv4 only", []Pool{{Prefix: v4}}, nil, []string{"100.70.0.1"}, []string{"100.70.0.2"}, ""},
		{"ipv6 only", []Pool{{Prefix: v6}}, nil, []string{"fd7a:115c:a1e0::1"}, []string{"fd7a:115c:a1e0::2"}, ""},
		{"one address per family", []Pool{{Prefix: v4}, {Prefix: v6}}, nil,
			[]string{"100.70.0.1", "fd7a:115c:a1e0::1"}, []string{"100.70.0.2", "fd7a:115c:a1e0::2"}, ""},
		{"families skip taken addresses independently", []Pool{{Prefix: v4}, {Prefix: v6}}, []string{"100.70.0.1", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"},
			[]string{"100.70.0.2", "fd7a:115c:a1e0::3"}, []string{"100.70.0.1", "fd7a:115c:a1e0::1"}, ""},
		{"ipv6 holds the last address of its prefix (no broadcast)", []Pool{{Prefix: v6, Next: netip.MustParseAddr("fd7a:115c:a1e0::3")}}, nil,
			[]string{"fd7a:115c:a1e0::3"}, []string{"fd7a:115c:a1e0::1"}, ""},
		{"cursors resume per family", []Pool{{Prefix: v4, Next: netip.MustParseAddr("100.70.0.2")}, {Prefix: v6, Next: netip.MustParseAddr("fd7a:115c:a1e0::3")}}, nil,
			[]string{"100.70.0.2", "fd7a:115c:a1e0::3"}, []string{"100.70.0.1", "fd7a:115c:a1e0::1"}, ""},
		{"a full ipv6 pool fails the whole allocation", []Pool{{Prefix: v4}, {Prefix: v6}}, []string{"fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::3"},
			nil, nil, v6.String()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			taken := map[netip.Addr]bool{}
			for _, s := range tt.taken {
				taken[netip.MustParseAddr(s)] = true
			}
			addrs, curs, failed, err := AllocateEach(tt.pools, func(a netip.Addr) bool { return taken[a] })
			if tt.failed != "" {
				if !errors.Is(err, ErrExhausted) || failed.String() != tt.failed {
					t.Fatalf("got %v, failed %v; want %v in %s", err, failed, ErrExhausted, tt.failed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(addrs) != fmt.Sprint(tt.want) || fmt.Sprint(curs) != fmt.Sprint(tt.cursors) {
				t.Fatalf("got %v, cursors %v; want %v, cursors %v", addrs, curs, tt.want, tt.cursors)
			}
		})
	}
}

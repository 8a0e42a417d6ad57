package bind

import (
	"net/netip"
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// strEndpoint is an endpoint of another bind: only its string form says
// where it is.
type strEndpoint struct{ conn.StdNetEndpoint }

func (e *strEndpoint) DstToString() string { return e.AddrPort.String() }

func TestUDPDest(t *testing.T) {
	for _, tt := range []struct {
		name string
		ep   conn.Endpoint
		want string
		is6  bool
		err  bool
	}{
		{"IPv4", &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("198.18.99.41:51820")}, "198.18.99.41:51820", false, false},
		{"IPv6", &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("[fd00:198:18::42]:55259")}, "[fd00:198:18::42]:55259", true, false},
		{"IPv4-mapped goes over IPv4", &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("[::ffff:198.18.99.41]:51820")}, "198.18.99.41:51820", false, false},
		{"another bind's endpoint", &strEndpoint{conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("[fd00::2]:7")}}, "[fd00::2]:7", true, false},
		{"no address", &conn.StdNetEndpoint{}, "", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dst, is6, err := udpDest(tt.ep)
			if (err != nil) != tt.err {
				t.Fatalf("got error %v; want error %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if dst.String() != tt.want || is6 != tt.is6 {
				t.Errorf("got %s (IPv6 %v); want %s (IPv6 %v)", dst, is6, tt.want, tt.is6)
			}
		})
	}
}

func TestGSORuns(t *testing.T) {
	for _, tt := range []struct {
		name     string
		lens     []int
		maxSegs  int
		maxBytes int
		want     []int
	}{
		{"one packet", []int{1400}, 64, 65000, []int{1}},
		{"equal sizes go together", []int{1400, 1400, 1400}, 64, 65000, []int{3}},
		{"a shorter one ends a run", []int{1400, 1400, 600, 1400, 1400}, 64, 65000, []int{3, 2}},
		{"a longer one starts a run", []int{600, 1400, 1400}, 64, 65000, []int{1, 2}},
		{"segment limit", []int{100, 100, 100, 100, 100}, 2, 65000, []int{2, 2, 1}},
		{"byte limit", []int{1000, 1000, 1000}, 64, 2500, []int{2, 1}},
		{"none", nil, 64, 65000, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := gsoRuns(tt.lens, tt.maxSegs, tt.maxBytes); !slices.Equal(got, tt.want) {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestSegments(t *testing.T) {
	for _, tt := range []struct {
		name    string
		n, size int
		want    [][2]int
	}{
		{"not coalesced", 1400, 0, [][2]int{{0, 1400}}},
		{"one datagram", 1400, 1400, [][2]int{{0, 1400}}},
		{"three, the last shorter", 3000, 1200, [][2]int{{0, 1200}, {1200, 2400}, {2400, 3000}}},
		{"empty", 0, 0, [][2]int{{0, 0}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := segments(tt.n, tt.size); !slices.Equal(got, tt.want) {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

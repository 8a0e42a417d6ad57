package bind

import (
	"net/netip"
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

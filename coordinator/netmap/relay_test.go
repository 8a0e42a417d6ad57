package netmap

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshd/meshd/coordinator/state"
)

func TestRelayURLsAndIPs(t *testing.T) {
	tb := &state.Tables{
		Peers: map[string]*state.Peer{
			"p1": {ID: "p1", Name: "a", VNet: "default"},
			"p2": {ID: "p2", Name: "b", VNet: "default", Relay: "10.0.0.1:50001"},
		},
		Coordinators: map[string]*state.Coordinator{
			"c3": {Name: "c3", APIURL: "https://10.0.0.3:8443", STUNAddr: "10.0.0.3:3478", RelayIP: "10.0.0.3", RelayTLSAddr: "10.0.0.3:5349"},
			"c1": {Name: "c1", APIURL: "https://[2001:db8::1]:8443", STUNAddr: "[2001:db8::1]:3478", RelayIP: "2001:db8::1"},
			"c2": {Name: "c2", APIURL: "https://10.0.0.2:8443", STUNAddr: "10.0.0.2:3478"},                                      // older: STUN only
			"c4": {Name: "c4", APIURL: "https://c4.example.net:8443", RelayIP: "10.0.0.3", RelayTLSAddr: "c4.example.net:5349"}, // UDP off, same IP as c3
		},
	}
	udp, tls := RelayURLs(tb)
	if want := []string{"turn:[2001:db8::1]:3478?transport=udp", "turn:10.0.0.3:3478?transport=udp"}; !slices.Equal(udp, want) {
		t.Fatalf("udp: got %v; want %v", udp, want)
	}
	if want := []string{"turns:10.0.0.3:5349?transport=tcp", "turns:c4.example.net:5349?transport=tcp"}; !slices.Equal(tls, want) {
		t.Fatalf("tls: got %v; want %v", tls, want)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("2001:db8::1")}
	if got := RelayIPs(tb); !slices.Equal(got, want) {
		t.Fatalf("RelayIPs: got %v; want %v", got, want)
	}
	u := Full(tb, 3, "p1")
	if len(u.Peers) != 1 || u.Peers[0].Relay != "10.0.0.1:50001" {
		t.Fatalf("map peers %+v; want b with its relayed address", u.Peers)
	}
	if d := Delta(tb, 4, "p1", []string{"p2"}, false); len(d.Peers) != 1 || d.Peers[0].Relay != "10.0.0.1:50001" {
		t.Fatalf("delta peers %+v; want b with its relayed address", d.Peers)
	}
}

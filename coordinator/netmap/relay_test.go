package netmap

import (
	"fmt"
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
	udp, tls := RelayURLs(tb, "default")
	order := RelayOrder([]string{"c1", "c2", "c3", "c4"}, "default")
	urls := map[string][2]string{
		"c1": {"turn:[2001:db8::1]:3478?transport=udp", ""},
		"c3": {"turn:10.0.0.3:3478?transport=udp", "turns:10.0.0.3:5349?transport=tcp"},
		"c4": {"", "turns:c4.example.net:5349?transport=tcp"},
	}
	var wantUDP, wantTLS []string
	for _, n := range order {
		if u := urls[n][0]; u != "" {
			wantUDP = append(wantUDP, u)
		}
		if u := urls[n][1]; u != "" {
			wantTLS = append(wantTLS, u)
		}
	}
	if !slices.Equal(udp, wantUDP) {
		t.Fatalf("udp: got %v; want %v", udp, wantUDP)
	}
	if !slices.Equal(tls, wantTLS) {
		t.Fatalf("tls: got %v; want %v", tls, wantTLS)
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

// TestRelayOrder: every coordinator computes the same order for a vnet,
// vnets spread over the coordinators, and a coordinator leaving moves only
// the vnets that preferred it.
func TestRelayOrder(t *testing.T) {
	names := []string{"c1", "c2", "c3"}
	first := map[string]string{}
	count := map[string]int{}
	for i := range 60 {
		vnet := fmt.Sprintf("vnet%d", i)
		o := RelayOrder(names, vnet)
		if !slices.Equal(o, RelayOrder([]string{"c3", "c1", "c2"}, vnet)) {
			t.Fatalf("%s: the order depends on the input order: %v", vnet, o)
		}
		first[vnet] = o[0]
		count[o[0]]++
	}
	for _, n := range names {
		if count[n] < 5 {
			t.Fatalf("first choices over 60 vnets: %v; want them spread over all three", count)
		}
	}
	for vnet, f := range first {
		o := RelayOrder([]string{"c1", "c2"}, vnet)
		if f != "c3" && o[0] != f {
			t.Fatalf("%s moved from %s to %s when c3 left", vnet, f, o[0])
		}
	}
}

package netmap

import (
	"slices"
	"testing"

	"github.com/meshd/meshd/coordinator/state"
)

func TestSTUNServers(t *testing.T) {
	tb := &state.Tables{
		Peers: map[string]*state.Peer{"p1": {ID: "p1", Name: "a", VNet: "default"}},
		Coordinators: map[string]*state.Coordinator{
			"c1": {Name: "c1", APIURL: "https://10.0.0.3:8443", STUNAddr: "10.0.0.3:3478"},
			"c2": {Name: "c2", APIURL: "https://10.0.0.1:8443", STUNAddr: "10.0.0.1:3478"},
			"c3": {Name: "c3", APIURL: "https://10.0.0.2:8443"}, // STUN off
		},
	}
	want := []string{"10.0.0.1:3478", "10.0.0.3:3478"}
	if got := STUNServers(tb); !slices.Equal(got, want) {
		t.Fatalf("STUNServers: got %v; want %v", got, want)
	}
	if got := Full(tb, 7, "p1").STUNServers; !slices.Equal(got, want) {
		t.Fatalf("Full: got %v; want %v", got, want)
	}
	if got := Delta(tb, 8, "p1", nil, true).STUNServers; !slices.Equal(got, want) {
		t.Fatalf("Delta with the cluster-wide part: got %v; want %v", got, want)
	}
	if d := Delta(tb, 8, "p1", []string{"p1"}, false); d.STUNServers != nil {
		t.Fatalf("Delta without the cluster-wide part: got %v; want none", d.STUNServers)
	}
}

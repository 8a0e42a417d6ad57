package peer

import (
	"testing"
	"time"

	"github.com/meshd/meshd/peer/health"
)

func TestPeerOnline(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	alive := &health.State{Alive: true, LANOK: true, Forwarding: true}
	dead := &health.State{}
	zombie := &health.State{Alive: true, LANOK: false, Forwarding: false}
	for _, tt := range []struct {
		name   string
		hs     time.Time
		report *health.State
		want   bool
	}{
		{"never a handshake", time.Time{}, nil, false},
		{"never a handshake, health says alive", time.Time{}, alive, false},
		{"fresh handshake, no report (a device)", now.Add(-10 * time.Second), nil, true},
		{"handshake 2m59s ago, no report", now.Add(-OnlineWithin + time.Second), nil, true},
		{"handshake exactly 3m ago", now.Add(-OnlineWithin), nil, false},
		{"handshake 10m ago, health says alive", now.Add(-10 * time.Minute), alive, false},
		{"fresh handshake, alive", now.Add(-5 * time.Second), alive, true},
		{"fresh handshake, probes unanswered", now.Add(-5 * time.Second), dead, false},
		{"fresh handshake, alive but its LAN is down", now.Add(-5 * time.Second), zombie, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := PeerOnline(tt.hs, now, tt.report); got != tt.want {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
		})
	}
}

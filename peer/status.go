package peer

import (
	"time"

	"github.com/meshd/meshd/peer/health"
)

// PeerOnline is the rule behind ONLINE in `meshd status`: whether this
// peer can reach another one now, from what this peer itself observes
// (never from the coordinators, which see only their own connections):
//
//   - no WireGuard handshake yet, or none for OnlineWithin (3 minutes):
//     offline. A live session re-handshakes every 2 minutes while packets
//     flow, and every peer of the mesh sends a keepalive every 25 s, so a
//     live peer's last handshake is never that old.
//   - otherwise, when the mesh's own health sources have a report for the
//     peer (gateway health probes through the tunnels, or the gossip every
//     agent takes part in), that report decides: a peer whose probes go
//     unanswered, or that gossip has declared dead, is offline within the
//     seconds those take, although its last handshake is recent.
//   - otherwise (a device, which sends neither, or a peer not heard of
//     yet): online.
//
// report is that health report; nil when there is none.
func PeerOnline(lastHandshake, now time.Time, report *health.State) bool {
	if lastHandshake.IsZero() || now.Sub(lastHandshake) >= OnlineWithin {
		return false
	}
	if report != nil {
		return report.Alive
	}
	return true
}

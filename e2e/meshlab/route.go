package meshlab

import (
	"strings"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// Route is how a peer's status shows prefix: its active gateway and why
// (the candidates with their priorities and health, "gw1(200) active,
// ..."); ok is false when the status has no such route.
func Route(st *api.LocalStatus, prefix string) (r api.LocalRoute, ok bool) {
	for _, r := range st.Routes {
		if r.Prefix == prefix {
			return r, true
		}
	}
	return api.LocalRoute{}, false
}

// GatewayState is the state (package gateway: active, standby, drained,
// unhealthy, offline) route r's gateway name has in a peer's status; ""
// when the peer does not list it.
func GatewayState(r api.LocalRoute, name string) string {
	for _, g := range r.Gateways {
		if g.Name == name {
			return g.State
		}
	}
	return ""
}

// LastReply is when the last reply of the stream came; zero when none
// did. Call it after Wait.
func (p *PingStream) LastReply() time.Time {
	<-p.done
	if len(p.replies) == 0 {
		return time.Time{}
	}
	return p.replies[len(p.replies)-1]
}

// RouteMoved finds the first "route moved" line in peer's log that moved
// prefix to gateway to at or after since, and returns its time; ok is
// false when there is none. Reading the log instead of polling the status
// socket leaves the agents' CPU to the failover being measured.
func (l *Lab) RouteMoved(peer, prefix, to string, since time.Time) (at time.Time, ok bool) {
	for _, line := range strings.Split(l.Logs(peer), "\n") {
		if !strings.Contains(line, `msg="route moved"`) || !strings.Contains(line, " prefix="+prefix+" ") ||
			!strings.Contains(line+" ", " to="+to+" ") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "time=") {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time="))
		if err == nil && !t.Before(since) {
			return t, true
		}
	}
	return time.Time{}, false
}

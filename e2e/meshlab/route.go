package meshlab

import (
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// Route is how a peer's status shows prefix: its active gateway and why
// (the candidates with their priorities and health, "gw1(200) healthy,
// ..."); ok is false when the status has no such route.
func Route(st *api.LocalStatus, prefix string) (r api.LocalRoute, ok bool) {
	for _, r := range st.Routes {
		if r.Prefix == prefix {
			return r, true
		}
	}
	return api.LocalRoute{}, false
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

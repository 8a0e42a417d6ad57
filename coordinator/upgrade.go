package coordinator

import (
	"context"
	"net/http"
	"slices"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Rolling upgrades: coordinators of two versions side by side, and agents
// a protocol version behind the coordinators.
//
// Agents: the endpoints they call are wrapped in agentCall (route table):
// their protocol header is checked (api.CheckProtocolHeader: agents from
// MinProtocolVersion to ProtocolVersion are served, newer ones refused
// with a message to upgrade the coordinators first), and their bodies
// decode ignoring fields this version does not know, which a newer agent
// may send. Admin calls stay strict: a misspelt flag's field is refused.
//
// Coordinators: the leader writes a command only when every member of the
// Raft configuration can apply it (gate, fsm.Gate).

// tolerantKey marks the context of a request whose body may carry fields
// this version does not know.
type tolerantKey struct{}

// agentCall wraps an endpoint agents call (see above).
func agentCall(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := api.CheckProtocolHeader(r.Header.Get(api.HeaderProtocol)); err != nil {
			writeError(w, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), tolerantKey{}, true)))
	}
}

// tolerantBody reports whether r's body may carry unknown fields.
func tolerantBody(r *http.Request) bool {
	v, _ := r.Context().Value(tolerantKey{}).(bool)
	return v
}

// memberRecords returns the members of the Raft configuration and the
// coordinators' records.
func (s *Server) memberRecords() ([]string, map[string]state.Coordinator, error) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, nil, api.Errorf(api.CodeUnavailable, "read raft configuration: %v", err)
	}
	var members []string
	for _, srv := range cf.Configuration().Servers {
		members = append(members, string(srv.ID))
	}
	slices.Sort(members)
	records := map[string]state.Coordinator{}
	s.store.Read(func(t *state.Tables, _ uint64) {
		for n, c := range t.Coordinators {
			records[n] = *c
		}
	})
	return members, records, nil
}

// gate refuses command type t while a member of the Raft configuration
// other than except (one on its way out) cannot apply it. Types every
// version applies cost nothing.
func (s *Server) gate(t fsm.MessageType, except string) error {
	if fsm.Required(t).Level == 0 {
		return nil
	}
	members, records, err := s.memberRecords()
	if err != nil {
		return err
	}
	members = slices.DeleteFunc(members, func(m string) bool { return m == except })
	if e := fsm.Gate(t, members, records); e != nil {
		return e
	}
	return nil
}

// handleClusterVersions answers GET /v1/cluster/versions from this
// replica.
func (s *Server) handleClusterVersions(w http.ResponseWriter, r *http.Request) {
	members, records, err := s.memberRecords()
	if err != nil {
		writeError(w, err)
		return
	}
	out := api.ClusterVersions{Server: s.cfg.Name, Members: []api.MemberVersion{}, Features: []api.FeatureStatus{}}
	for i, m := range members {
		c, ok := records[m]
		out.Members = append(out.Members, api.MemberVersion{Name: m, Version: c.Version, FeatureLevel: c.FeatureLevel, Registered: ok})
		if l := fsm.MemberLevel(m, records); i == 0 || l < out.FeatureLevel {
			out.FeatureLevel = l
		}
	}
	for _, f := range fsm.Features() {
		old := fsm.Outdated(f.Level, members, records)
		out.Features = append(out.Features, api.FeatureStatus{Command: f.What, Level: f.Level, Enabled: len(old) == 0, Outdated: old})
	}
	writeJSON(w, http.StatusOK, out)
}

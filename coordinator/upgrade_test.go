package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// TestFeatureGate: with every coordinator on this version, commands that
// need its feature level are written; a member that never registered (a
// nonvoter added to the Raft configuration) or that registered without a
// level holds them back with upgrade_required naming it, through the API
// and through the write path (locally on the leader and forwarded from a
// follower), and the cluster versions list says so; removing that member
// is allowed (the gate leaves out the member on its way out), after which
// the commands pass again.
func TestFeatureGate(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader, fol := c.leader(), c.followers()
	admin := c.admin(leader)
	versions := func() api.ClusterVersions {
		t.Helper()
		var v api.ClusterVersions
		if err := c.admin(fol[0]).Do(ctx, http.MethodGet, "/v1/cluster/versions", nil, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	// Every member current: the gate lets 'cluster remove' through to its
	// own check (no such member).
	if err := admin.Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("remove c9 with every member current: %v; want not found", err)
	}
	v := versions()
	if v.FeatureLevel != fsm.FeatureLevel || len(v.Members) != 3 || len(v.Features) == 0 || !v.Features[0].Enabled {
		t.Fatalf("versions %+v; want 3 members at level %d, every feature enabled", v, fsm.FeatureLevel)
	}
	for _, m := range v.Members {
		if !m.Registered || m.FeatureLevel != fsm.FeatureLevel {
			t.Fatalf("member %+v; want registered at level %d", m, fsm.FeatureLevel)
		}
	}

	// c4 joins the Raft configuration (as a nonvoter: no quorum change)
	// but never registers: it counts as level 0.
	if err := leader.srv.Raft().AddNonvoter("c4", "c4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error, who []string) {
		t.Helper()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeUpgradeRequired || !slices.Equal(ae.Coordinators, who) || ae.Message == "" {
			t.Fatalf("%s: %v (%+v); want %s naming %v", what, err, ae, api.CodeUpgradeRequired, who)
		}
	}
	err := c.admin(fol[1]).Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil)
	refused("cluster remove through a follower", err, []string{"c4"})
	_, err = leader.srv.raftApply(ctx, fsm.DeregisterCoordinatorType, &fsm.DeregisterCoordinator{Name: "c9"})
	refused("write on the leader", err, []string{"c4"})
	_, err = fol[0].srv.raftApply(ctx, fsm.DeregisterCoordinatorType, &fsm.DeregisterCoordinator{Name: "c9"})
	refused("write forwarded by a follower", err, []string{"c4"})
	// Commands every version knows still pass.
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, nil); err != nil {
		t.Fatalf("ungated write with an old member: %v", err)
	}

	// c4 registers as a version from before feature levels would.
	if _, err := leader.srv.raftApply(ctx, fsm.RegisterCoordinatorType, &fsm.RegisterCoordinator{Coordinator: state.Coordinator{
		Name: "c4", RaftAddr: "c4", APIURL: "https://127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	err = admin.Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil)
	refused("cluster remove with c4 registered at level 0", err, []string{"c4"})
	waitFor(t, 5*time.Second, "a follower to list c4 at level 0", func() bool {
		v = versions()
		return len(v.Members) == 4
	})
	i := slices.IndexFunc(v.Members, func(m api.MemberVersion) bool { return m.Name == "c4" })
	if v.FeatureLevel != 0 || i < 0 || !v.Members[i].Registered || v.Members[i].FeatureLevel != 0 ||
		v.Features[0].Enabled || !slices.Equal(v.Features[0].Outdated, []string{"c4"}) {
		t.Fatalf("versions %+v; want c4 registered at level 0 holding back %q", v, v.Features[0].Command)
	}

	// Removing c4 itself is allowed: its deregistration is written once
	// it has left the configuration.
	if err := admin.Do(ctx, http.MethodDelete, "/v1/cluster/members/c4", nil, nil); err != nil {
		t.Fatalf("remove the old member: %v", err)
	}
	waitFor(t, 5*time.Second, "the versions to drop c4", func() bool {
		v = versions()
		return len(v.Members) == 3 && v.Features[0].Enabled && v.FeatureLevel == fsm.FeatureLevel
	})
	if err := admin.Do(ctx, http.MethodDelete, "/v1/cluster/members/c9", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("remove c9 after c4 left: %v; want not found", err)
	}
	leader.srv.Store().Read(func(tb *state.Tables, _ uint64) {
		if _, ok := tb.Coordinators["c4"]; ok {
			t.Fatal("c4 still registered after its removal")
		}
	})
	cf := leader.srv.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID("c4") {
			t.Fatal("c4 still in the Raft configuration")
		}
	}
}

// agentRequest sends an agent's request with protocol header proto (""
// none) and answers the status and the decoded error, if any.
func agentRequest(t *testing.T, srv *Server, method, path, proto, auth string, body []byte) (int, *api.Error) {
	t.Helper()
	header := http.Header{}
	if proto != "" {
		header.Set(api.HeaderProtocol, proto)
	}
	return apiCall(t, srv, method, path, body, auth, header)
}

// TestAgentProtocol: agents of the protocols this version serves are
// served, a newer one is refused on every agent endpoint with
// protocol_too_new (an older one with unsupported_protocol), and an
// agent's request body may carry fields this version does not know, while
// an admin call's may not.
func TestAgentProtocol(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 10}, &tok); err != nil {
		t.Fatal(err)
	}
	newer, older := strconv.Itoa(api.ProtocolVersion+1), strconv.Itoa(api.MinProtocolVersion-1)
	current, oldest := strconv.Itoa(api.ProtocolVersion), strconv.Itoa(api.MinProtocolVersion)
	// A join as a newer agent would send it: a field this version does
	// not know, beside the ones it does.
	joinBody := func(name string, version int) []byte {
		b, _ := json.Marshal(map[string]any{"protocol_version": version, "token": tok.Token, "name": name,
			"public_key": wgKey(), "omit_map": true, "an_option_of_later_versions": map[string]int{"x": 1}})
		return b
	}
	if st, e := agentRequest(t, srv, http.MethodPost, "/v1/join", newer, "", joinBody("newer", api.ProtocolVersion+1)); e == nil || e.Code != api.CodeProtocolTooNew || st != http.StatusBadRequest {
		t.Fatalf("join of a newer agent: %d %+v; want 400 %s", st, e, api.CodeProtocolTooNew)
	}
	// Without the header, the body's version is checked.
	if _, e := agentRequest(t, srv, http.MethodPost, "/v1/join", "", "", joinBody("newer2", api.ProtocolVersion+1)); e == nil || e.Code != api.CodeProtocolTooNew {
		t.Fatalf("join of a newer agent without the header: %+v; want %s", e, api.CodeProtocolTooNew)
	}
	if _, e := agentRequest(t, srv, http.MethodPost, "/v1/join", older, "", joinBody("older", api.MinProtocolVersion-1)); e == nil || e.Code != api.CodeVersion {
		t.Fatalf("join of a too old agent: %+v; want %s", e, api.CodeVersion)
	}
	if st, e := agentRequest(t, srv, http.MethodPost, "/v1/join", oldest, "", joinBody("oldest", api.MinProtocolVersion)); e != nil || st != http.StatusOK {
		t.Fatalf("join of the oldest agent served, with an unknown field: %d %+v; want 200", st, e)
	}
	j, _ := joinPeer(t, srv, admin, "p1")
	hb := []byte(`{"endpoints": ["198.51.100.7:51820"], "a_field_of_later_versions": true}`)
	for _, tt := range []struct {
		method, path, proto string
		body                []byte
		code                string // "" served
	}{
		{http.MethodPost, "/v1/heartbeat", current, hb, ""},
		{http.MethodPost, "/v1/heartbeat", oldest, hb, ""},
		{http.MethodPost, "/v1/heartbeat", "", hb, ""},
		{http.MethodPost, "/v1/heartbeat", newer, hb, api.CodeProtocolTooNew},
		{http.MethodPost, "/v1/heartbeat", older, hb, api.CodeVersion},
		{http.MethodGet, "/v1/relay", newer, nil, api.CodeProtocolTooNew},
		{http.MethodGet, "/v1/relay", current, nil, ""},
		{http.MethodGet, "/v1/netmap", newer, nil, api.CodeProtocolTooNew},
	} {
		st, e := agentRequest(t, srv, tt.method, tt.path, tt.proto, j.Credential, tt.body)
		got := ""
		if e != nil {
			got = e.Code
		} else if st >= 300 {
			got = strconv.Itoa(st)
		}
		if got != tt.code {
			t.Errorf("%s %s with protocol %q: got %q (%d); want %q", tt.method, tt.path, tt.proto, got, st, tt.code)
		}
	}
	// An admin call stays strict.
	adminBody := []byte(`{"name": "x", "overlay": "100.112.0.0/16", "an_unknown_field": 1}`)
	if _, e := agentRequest(t, srv, http.MethodPost, "/v1/vnets", current, admin.Auth(), adminBody); e == nil || e.Code != api.CodeInvalidJSON {
		t.Fatalf("admin call with an unknown field: %+v; want %s", e, api.CodeInvalidJSON)
	}
}

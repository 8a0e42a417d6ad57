package coordinator

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// joinTagged joins a peer with a fresh token carrying tags and returns its
// join answer.
func joinTagged(t *testing.T, admin *apiclient.Client, name string, tags ...string) *api.JoinResponse {
	t.Helper()
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: tags}, &tok); err != nil {
		t.Fatal(err)
	}
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), OmitMap: true})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func setPolicy(admin *apiclient.Client, vnet, doc string) (api.Policy, error) {
	var out api.Policy
	err := admin.Do(context.Background(), http.MethodPut, "/v1/vnets/"+vnet+"/policy", json.RawMessage(doc), &out)
	return out, err
}

func TestPolicyAPI(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	cl := joinTagged(t, admin, "cl1", "branch")
	joinTagged(t, admin, "db1", "db")
	var none api.Policy
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy", nil, &none); err != nil || none.Version != 0 || string(none.Policy) != "null" || len(none.History) != 0 {
		t.Fatalf("got %+v, %v; want no policy", none, err)
	}
	good := `{"acls": [{"name": "db access", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:5432"], "proto": "tcp"}],
		"tests": [{"src": "tag:branch", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]}]}`
	for _, tt := range []struct {
		name, vnet, doc string
		code            string
		mention         []string // in the message and the details
	}{
		{"bad ports", "default", `{"acls": [{"name": "db access", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:99999"]}]}`,
			api.CodeInvalidPolicy, []string{`acls[0] ("db access") dst "tag:db:99999"`}},
		{"unknown selector", "default", `{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}`,
			api.CodeInvalidPolicy, []string{`acls[0] src "group:x"`}},
		{"unknown tag and peer", "default", `{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["peer:ghost:*"]}]}`,
			api.CodeInvalidPolicy, []string{`acls[0] src "tag:nope"`, `acls[0] dst "peer:ghost:*"`}},
		{"unknown field", "default", `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "prot": "tcp"}]}`,
			api.CodeInvalidPolicy, []string{`acls[0] prot`}},
		{"not json", "default", `{"acls": [`, api.CodeInvalidPolicy, nil},
		{"failing test", "default", `{"acls": [{"name": "too wide", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:*"]}],
			"tests": [{"src": "tag:branch", "deny": ["tag:db:22"]}]}`,
			api.CodePolicyTestFailed, []string{`tests[0] deny "tag:db:22"`, `acls[0] ("too wide")`}},
		{"unknown vnet", "nope", good, api.CodeNotFound, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.Store().Dump()
			var body []byte = []byte(tt.doc)
			status, e := rawCall(t, srv, http.MethodPut, "/v1/vnets/"+tt.vnet+"/policy", body, admin.Auth())
			if e == nil || e.Code != tt.code || (tt.code != api.CodeNotFound && status != http.StatusBadRequest) {
				t.Fatalf("got %d %+v; want 400 %s", status, e, tt.code)
			}
			for _, m := range tt.mention {
				if !strings.Contains(e.Message, m) || !strings.Contains(strings.Join(e.Details, "\n"), m) {
					t.Errorf("error %q (details %q) does not name %s", e.Message, e.Details, m)
				}
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("a refused policy changed the state")
			}
		})
	}
	// A peer credential is not an admin credential.
	if status, e := rawCall(t, srv, http.MethodPut, "/v1/vnets/default/policy", []byte(good), cl.Credential); status != http.StatusUnauthorized || e == nil {
		t.Fatalf("peer credential: got %d %+v; want 401", status, e)
	}
	if _, err := setPolicy(admin, "default", good); err != nil {
		t.Fatal(err)
	}
	wide := `{"acls": [{"name": "ops", "action": "accept", "src": ["tag:branch"], "dst": ["tag:db:*"]}]}`
	set, err := setPolicy(admin, "default", wide)
	if err != nil {
		t.Fatal(err)
	}
	if set.Version != 2 || set.SetBy != "admin" || len(set.History) != 2 || set.History[0].Version != 2 {
		t.Fatalf("got %+v; want version 2 by admin, newest first in the history", set)
	}
	var old api.Policy
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy?version=1", nil, &old); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ACLs []struct{ Name string } `json:"acls"`
	}
	if err := json.Unmarshal(old.Policy, &doc); err != nil || old.Version != 1 || len(doc.ACLs) != 1 || doc.ACLs[0].Name != "db access" {
		t.Fatalf("version 1: got %+v (%v); want the first document", old, err)
	}
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy?version=9", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("unknown version: got %v; want %s", err, api.CodeNotFound)
	}
	test := func(src, dst, proto string) api.PolicyTestResult {
		t.Helper()
		var res api.PolicyTestResult
		q := url.Values{"src": {src}, "dst": {dst}, "proto": {proto}}
		if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy/test?"+q.Encode(), nil, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := test("tag:branch", "tag:db:22", "tcp"); !r.Allowed || r.Rule == nil || *r.Rule != 0 || r.RuleName != "ops" || r.Version != 2 {
		t.Fatalf("got %+v; want allowed by acls[0] (ops) of version 2", r)
	}
	if r := test("peer:db1", "peer:cl1:22", "udp"); r.Allowed || r.Rule != nil {
		t.Fatalf("got %+v; want denied by no rule", r)
	}
	if err := admin.Do(ctx, http.MethodGet, "/v1/vnets/default/policy/test?src=tag:nope&dst=peer:db1:22", nil, nil); !api.IsCode(err, api.CodeInvalidArgument) || !strings.Contains(err.Error(), "tag:nope") {
		t.Fatalf("unknown tag: got %v; want %s naming it", err, api.CodeInvalidArgument)
	}
	var del api.Policy
	if err := admin.Do(ctx, http.MethodDelete, "/v1/vnets/default/policy", nil, &del); err != nil || del.Version != 3 || string(del.Policy) != "null" || !del.History[0].Deleted {
		t.Fatalf("delete: got %+v, %v; want version 3 removing it", del, err)
	}
	if r := test("peer:db1", "peer:cl1:22", "udp"); !r.Allowed || !r.NoPolicy {
		t.Fatalf("got %+v; want allowed: no policy", r)
	}
}

// TestPolicySetThroughFollower: a follower passes the call on to the
// leader, which validates it against the newest state and writes it.
func TestPolicySetThroughFollower(t *testing.T) {
	c := startCluster(t, 3)
	leader := c.waitReady(c.nodes)
	var follower *testNode
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	admin := c.admin(follower)
	if _, err := setPolicy(admin, "default", `{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}`); !api.IsCode(err, api.CodeInvalidPolicy) {
		t.Fatalf("got %v; want %s from the leader", err, api.CodeInvalidPolicy)
	}
	p, err := setPolicy(admin, "default", `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:443"]}]}`)
	if err != nil || p.Version != 1 {
		t.Fatalf("got %+v, %v; want version 1", p, err)
	}
	c.waitConverged()
}

// mapWatch follows a peer's network-map stream and keeps the map it
// describes: peer names by id.
type mapWatch struct {
	mu    sync.Mutex
	peers map[string]string // guarded by mu
	self  string            // guarded by mu: the watcher's own id
	err   error             // guarded by mu
}

func watchMap(t *testing.T, srv *Server, admin *apiclient.Client, cred string) *mapWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := apiclient.New(admin.URLs(), srv.Pin(), cred).Stream(ctx, "/v1/netmap")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	m := &mapWatch{peers: map[string]string{}}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	go func() {
		defer close(done)
		rd := bufio.NewReaderSize(resp.Body, 1<<16)
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				m.mu.Lock()
				m.err = err
				m.mu.Unlock()
				return
			}
			var u api.MapUpdate
			if len(strings.TrimSpace(string(line))) == 0 {
				continue
			}
			if err := json.Unmarshal(line, &u); err != nil {
				m.mu.Lock()
				m.err = err
				m.mu.Unlock()
				return
			}
			m.mu.Lock()
			if u.Full {
				m.peers = map[string]string{}
			}
			if u.Self != nil {
				m.self = u.Self.ID
			}
			for _, p := range u.Peers {
				if p.ID == m.self {
					continue // a shared delta names the watcher among the others, as agents expect
				}
				m.peers[p.ID] = p.Name
			}
			for _, id := range u.Removed {
				delete(m.peers, id)
			}
			m.mu.Unlock()
		}
	}()
	return m
}

// names is the map's peers, sorted.
func (m *mapWatch) names() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, n := range m.peers {
		out = append(out, n)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// waitMap waits up to d for m to hold exactly want (names, sorted).
func waitMap(t *testing.T, m *mapWatch, d time.Duration, who, want string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for m.names() != want {
		if time.Now().After(deadline) {
			m.mu.Lock()
			err := m.err
			m.mu.Unlock()
			t.Fatalf("%s's map holds %q after %s; want %q (stream: %v)", who, m.names(), d, want, err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// TestWatchFollowsPolicy: a peer's stream holds only the peers the policy
// lets it see, and follows policy changes within a second.
func TestWatchFollowsPolicy(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	a := joinTagged(t, admin, "a", "ta")
	b := joinTagged(t, admin, "b", "tb")
	c := joinTagged(t, admin, "c", "tc")
	if _, err := setPolicy(admin, "default", `{"acls": [{"action": "accept", "src": ["tag:ta"], "dst": ["tag:tb:*"]}]}`); err != nil {
		t.Fatal(err)
	}
	wa := watchMap(t, srv, admin, a.Credential)
	wb := watchMap(t, srv, admin, b.Credential)
	wc := watchMap(t, srv, admin, c.Credential)
	waitMap(t, wa, 5*time.Second, "a", "b")
	waitMap(t, wb, 5*time.Second, "b", "a")
	waitMap(t, wc, 5*time.Second, "c", "")

	// Changes of peers a watcher may not see never reach it: c moves, then
	// b moves and a gets b's move, and still no c.
	heartbeat := func(cred, ep string) {
		t.Helper()
		if err := apiclient.New(admin.URLs(), srv.Pin(), cred).Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: []string{ep}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(c.Credential, "192.0.2.3:51820")
	heartbeat(b.Credential, "192.0.2.2:51820")
	waitMap(t, wa, time.Second, "a", "b")
	waitMap(t, wc, time.Second, "c", "")

	// Allowing a to reach c delivers c to a (and a to c) within a second.
	start := time.Now()
	if _, err := setPolicy(admin, "default", `{"acls": [{"action": "accept", "src": ["tag:ta"], "dst": ["tag:tb:*", "tag:tc:443"]}]}`); err != nil {
		t.Fatal(err)
	}
	waitMap(t, wa, time.Second, "a", "b,c")
	waitMap(t, wc, time.Second, "c", "a")
	t.Logf("policy change reached a and c in %s", time.Since(start))

	// Taking b away removes it from a's stream, and a from b's.
	if _, err := setPolicy(admin, "default", `{"acls": [{"action": "accept", "src": ["tag:ta"], "dst": ["tag:tc:443"]}]}`); err != nil {
		t.Fatal(err)
	}
	waitMap(t, wa, time.Second, "a", "c")
	waitMap(t, wb, time.Second, "b", "")

	// A peer that joins with a tag the policy names appears in the maps
	// of those who may see it, and only theirs.
	d := joinTagged(t, admin, "d", "tc")
	waitMap(t, wa, time.Second, "a", "c,d")
	waitMap(t, wb, time.Second, "b", "")
	wd := watchMap(t, srv, admin, d.Credential)
	waitMap(t, wd, time.Second, "d", "a")

	// Removing the policy opens the vnet again.
	if err := admin.Do(ctx, http.MethodDelete, "/v1/vnets/default/policy", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitMap(t, wb, time.Second, "b", "a,c,d")
}

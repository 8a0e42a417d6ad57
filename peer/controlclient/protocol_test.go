package controlclient

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// refusal writes a coordinator's refusal of the agent's protocol.
func refusal(w http.ResponseWriter, e *api.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status())
	json.NewEncoder(w).Encode(api.ErrorBody{Error: e})
}

// TestJoinProtocolRefused: a coordinator that refuses this agent's
// protocol (a coordinator of this version to a newer agent, or one from
// before MinProtocolVersion, which answered every other version so) is
// answered at once with ErrProtocol and the coordinator's refusal: no
// retry loop hides it.
func TestJoinProtocolRefused(t *testing.T) {
	for _, e := range []*api.Error{
		api.Errorf(api.CodeProtocolTooNew, "this coordinator speaks protocol %d, the agent %d: upgrade the coordinators first", api.ProtocolVersion-1, api.ProtocolVersion),
		api.Errorf(api.CodeVersion, "peer speaks protocol %d; this coordinator speaks %d", api.ProtocolVersion, api.ProtocolVersion-1),
	} {
		t.Run(e.Code, func(t *testing.T) {
			attempts := 0
			joinToken := fakeJoin(t, func(n int, req api.JoinRequest, w http.ResponseWriter) {
				attempts = n
				refusal(w, e)
			})
			_, _, err := Join(context.Background(), joinToken, api.JoinRequest{Name: "laptop", PublicKey: "k"})
			if !errors.Is(err, ErrProtocol) || !api.IsCode(err, e.Code) || attempts != 1 {
				t.Fatalf("got %v after %d attempts; want ErrProtocol with %s after 1", err, attempts, e.Code)
			}
		})
	}
}

// TestProtocolRefusedAfterJoin: a joined agent whose coordinators all
// refuse its protocol (they were downgraded, or it was upgraded first)
// gets ErrProtocol from its watch, heartbeat and relay calls, which end
// the agent.
func TestProtocolRefusedAfterJoin(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		refusal(w, api.Errorf(api.CodeProtocolTooNew, "this coordinator speaks protocol %d, the agent %d: upgrade the coordinators first", api.ProtocolVersion-1, api.ProtocolVersion))
	}))
	defer srv.Close()
	cred, err := token.New(token.KindPeer, "peer1", tlspin.Of(srv.Certificate()), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(&Identity{PeerID: "peer1", Credential: cred.String(), Coordinators: []string{srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, relayErr := c.Relay(ctx)
	for what, err := range map[string]error{
		"watch":     c.Watch(ctx, 0, func(*api.MapUpdate) { t.Error("an update from a refusing coordinator") }),
		"heartbeat": c.Heartbeat(ctx, nil, nil),
		"relay":     relayErr,
	} {
		if !errors.Is(err, ErrProtocol) || !api.IsCode(err, api.CodeProtocolTooNew) {
			t.Errorf("%s: %v; want ErrProtocol with %s", what, err, api.CodeProtocolTooNew)
		}
	}
	if calls.Load() != 3 {
		t.Errorf("%d calls; want one each", calls.Load())
	}
}

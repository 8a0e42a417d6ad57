package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// writeAnswer names how a write ended for the tables: "retry" (refused
// before anything was handed to Raft; raftApply retries it, then answers
// unavailable), "ok", or the API error code.
func writeAnswer(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, errNoLeader) {
		return "retry"
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return fmt.Sprintf("other: %v", err)
}

// TestForwardOutcome: a write passed on to the leader ends in one of three
// ways a client can tell apart: made, not made (retried, then unavailable)
// or unknown.
func TestForwardOutcome(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	// A closed port: nothing listens, the request never leaves.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String()
	ln.Close()
	tests := []struct {
		name    string
		handler http.HandlerFunc // the leader's end; nil: closedURL
		want    string
	}{
		{name: "leader dies mid-request", want: api.CodeOutcomeUnknown, handler: func(w http.ResponseWriter, r *http.Request) {
			io.ReadAll(r.Body) // it has the write...
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close() // ...and dies before answering
			}
		}},
		{name: "leader never answers", want: api.CodeOutcomeUnknown, handler: func(w http.ResponseWriter, r *http.Request) {
			io.ReadAll(r.Body)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}},
		{name: "leader answers what is not an API error", want: api.CodeOutcomeUnknown, handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "bad gateway", http.StatusBadGateway)
		}},
		{name: "nothing listens", want: "retry"},
		{name: "it no longer leads", want: "retry", handler: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusMisdirectedRequest)
		}},
		{name: "leader's own answer is relayed", want: api.CodeStorageFailed, handler: func(w http.ResponseWriter, r *http.Request) {
			writeError(w, api.Errorf(api.CodeStorageFailed, "full"))
		}},
		{name: "leader applied it", want: "ok", handler: func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, fsm.Result{Index: 7})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := closedURL
			if tt.handler != nil {
				ts := httptest.NewServer(tt.handler)
				defer ts.Close()
				url = ts.URL
			}
			s := &Server{cfg: Config{Name: "c2"}, peerHTTP: &http.Client{}, internal: "secret"}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := s.forward(ctx, url, []byte{byte(fsm.CreateTokenType), '{', '}'})
			if got := writeAnswer(err); got != tt.want {
				t.Fatalf("got %s (%v); want %s", got, err, tt.want)
			}
			if tt.want == api.CodeOutcomeUnknown {
				var ae *api.Error
				errors.As(err, &ae)
				if ae.Status() != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "may or may not") {
					t.Errorf("answer %d %q; want 503 saying it may or may not have been made", ae.Status(), ae.Message)
				}
			}
		})
	}
}

// TestCutOffFollowerRefusesAtOnce: a follower that has lost touch with
// the leader, or knows none, refuses writes unavailable well before a
// client's 2 s patience runs out, and the write is not made.
func TestCutOffFollowerRefusesAtOnce(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	fs := c.followers()
	f, other := fs[0], fs[1]
	var tok api.CreateTokenResponse
	if err := c.admin(leader).Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	c.waitConverged() // f knows the join token
	agent := apiclient.New([]string{f.srv.APIURL()}, f.srv.Pin(), "")
	admin := c.admin(f)
	// refused checks that both writes through f end unavailable, fast.
	refused := func(t *testing.T, tag string) {
		t.Helper()
		for _, call := range []struct {
			name string
			do   func(context.Context) error
		}{
			{"join", func(ctx context.Context) error {
				return agent.Do(ctx, http.MethodPost, "/v1/join", api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: tag, PublicKey: wgKey(), OmitMap: true}, nil)
			}},
			{"create token", func(ctx context.Context) error {
				return admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: []string{tag}}, nil)
			}},
		} {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			start := time.Now()
			err := call.do(ctx)
			took := time.Since(start)
			cancel()
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeUnavailable || !strings.Contains(ae.Message, "nothing was changed") {
				t.Fatalf("%s through %s: got %v; want %s saying nothing was changed", call.name, f.name, err, api.CodeUnavailable)
			}
			if took > 1500*time.Millisecond {
				t.Errorf("%s through %s answered after %s; want well within 2 s", call.name, f.name, took)
			}
			t.Logf("%s: %s after %s", call.name, ae.Message, took.Round(time.Millisecond))
		}
	}

	// made reports whether n's replica holds a token tagged, or a peer
	// named, tag.
	made := func(n *testNode, tag string) bool {
		found := false
		n.srv.Store().Read(func(tb *state.Tables, _ uint64) {
			for _, x := range tb.Tokens {
				found = found || slices.Contains(x.Tags, tag)
			}
			for _, p := range tb.Peers {
				found = found || p.Name == tag
			}
		})
		return found
	}

	t.Run("cut off from the leader", func(t *testing.T) {
		f.trans.DisconnectAll()
		for _, n := range c.nodes {
			if n != f {
				n.trans.Disconnect(f.trans.LocalAddr())
			}
		}
		waitFor(t, 5*time.Second, f.name+" to lose touch with the leader", func() bool {
			ok, _ := f.srv.leaderInReach()
			return !ok
		})
		refused(t, "cut")
		// A write through the leader after the refusals is on the
		// leader's replica; the refused ones are not.
		if err := c.admin(leader).Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Tags: []string{"after"}}, nil); err != nil {
			t.Fatal(err)
		}
		if !made(leader, "after") || made(leader, "cut") {
			t.Fatal("a write refused unavailable was made")
		}
	})
	t.Run("no leader", func(t *testing.T) {
		leader.stop()
		other.stop()
		waitFor(t, 5*time.Second, f.name+" to know no leader", func() bool {
			_, ok := f.srv.leaderAPIURL()
			return !ok
		})
		refused(t, "alone")
		if made(f, "alone") {
			t.Fatal("a write refused unavailable was made")
		}
	})
}

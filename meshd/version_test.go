package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// TestPeerUpProtocolRefused: `meshd peer up` against coordinators that
// refuse its protocol version (coordinators older than the agent) exits at
// once with exitProtocol, having asked each coordinator once, instead of
// retrying: the coordinator's answer says to upgrade them first.
func TestPeerUpProtocolRefused(t *testing.T) {
	var calls atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		// What a coordinator from before MinProtocolVersion answers a newer agent.
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeVersion, "peer speaks protocol %d; this coordinator speaks %d", api.ProtocolVersion, api.ProtocolVersion-1)})
	})
	a, b := httptest.NewTLSServer(handler), httptest.NewTLSServer(handler)
	defer a.Close()
	defer b.Close()
	tok, err := token.New(token.KindJoin, "tok1", tlspin.Of(a.Certificate()), []string{a.URL, b.URL})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs([]string{"peer", "up", "--token", tok.String(), "--state-dir", filepath.Join(t.TempDir(), "p"), "--name", "p1", "--log-level", "error"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err = root.ExecuteContext(ctx)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != exitProtocol {
		t.Fatalf("peer up: %v; want exit status %d", err, exitProtocol)
	}
	if calls.Load() != 2 || errOut.Len() == 0 {
		t.Fatalf("%d calls, stderr %q; want one call per coordinator and the refusal printed", calls.Load(), errOut.String())
	}
	t.Logf("exited after %s: %s", time.Since(start).Round(time.Millisecond), errOut.String())
}

// TestVersionCommand: `meshd version --json` names this build's protocol
// and feature level; with --cluster it lists every coordinator at its
// recorded level and the gated commands as accepted.
func TestVersionCommand(t *testing.T) {
	out, err := meshd(t, "version", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == "" || v.Protocol != api.ProtocolVersion ||
		v.MinProtocol != api.MinProtocolVersion || v.FeatureLevel != fsm.FeatureLevel || v.Cluster != nil {
		t.Fatalf("version --json: %q (%v)", out, err)
	}
	startCoordinator(t)
	out, err = meshd(t, "version", "--cluster", "--json")
	if err != nil {
		t.Fatal(err)
	}
	v = versionInfo{}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Cluster == nil {
		t.Fatalf("version --cluster --json: %q (%v)", out, err)
	}
	c := v.Cluster
	if len(c.Members) != 1 || c.Members[0].Name != "c1" || !c.Members[0].Registered || c.FeatureLevel != fsm.FeatureLevel ||
		len(c.Features) != len(fsm.Features()) || !c.Features[0].Enabled {
		t.Fatalf("cluster versions %+v; want c1 registered at level %d, every feature accepted", c, fsm.FeatureLevel)
	}
	if _, err := meshd(t, "version", "--cluster"); err != nil {
		t.Fatal(err)
	}
}

package peer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/pkg/api"
)

// TestAgentStopsOnProtocolRefusal: when its stream ends and every
// coordinator then refuses the agent's protocol version, the agent stops
// with that refusal (the CLI exits with its message) instead of retrying
// for ever.
func TestAgentStopsOnProtocolRefusal(t *testing.T) {
	s := newSite(t)
	cl := s.start("c1")
	waitFor(t, "the first map", func() bool {
		st, err := cl.a.Status(context.Background())
		return err == nil && st.MapIndex == 10
	})
	refused := api.Errorf(api.CodeProtocolTooNew, "this coordinator speaks protocol %d, the agent %d: upgrade the coordinators first", api.ProtocolVersion-1, api.ProtocolVersion)
	cl.ctl.mu.Lock()
	cl.ctl.refuse = fmt.Errorf("%w: %w", controlclient.ErrProtocol, refused)
	cl.ctl.mu.Unlock()
	cl.ctl.setDown(true) // ends the open stream; the watch retries after a pause
	var err error
	s.advanceUntil(t, 100*time.Millisecond, "the agent to stop", func() bool {
		select {
		case err = <-cl.done:
			cl.done <- err // for the cleanup's stop
			return true
		default:
			return false
		}
	})
	if !errors.Is(err, controlclient.ErrProtocol) || !api.IsCode(err, api.CodeProtocolTooNew) {
		t.Fatalf("the agent stopped with %v; want the protocol refusal", err)
	}
}

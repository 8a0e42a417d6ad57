package main

import (
	"os"
	"testing"
)

// TestMain doubles as the watcher process (fleet.go), which the simulator
// starts from its own executable.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(watchChild())
	}
	os.Exit(m.Run())
}

// TestSmallSimulation runs the simulator end to end at a small N: every
// change reaches every watcher and the figures are sane.
func TestSmallSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	r, err := simulate(30)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Changes) != 4 || r.FullMapBytes == 0 || r.BurstJoinsPerSec <= 0 || r.BurstDelivered == nil {
		t.Fatalf("got %+v; want four changes, a full map, a burst rate and its delivery", r)
	}
	// 1,000 joins reached every watcher: each carries at least a random
	// 32-byte key, which no deflate shrinks and base64 makes 43 bytes.
	if r.BurstBytesPerWatcher < 1000*43 {
		t.Errorf("each watcher got %.0f bytes of the burst; want all 1,000 joins", r.BurstBytesPerWatcher)
	}
	for _, c := range r.Changes {
		if c.BytesPerPeer <= 0 || c.BytesPerPeer > 1024 || c.MaxMillis <= 0 {
			t.Errorf("%s: %+v; want a delta of at most 1 KiB per watcher", c.Kind, c)
		}
	}
}

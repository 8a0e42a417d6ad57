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
	// Small bursts keep it light: it runs beside the timing-sensitive
	// network-namespace tests.
	r, err := simulate(30, 50)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Changes) != 4 || r.FullMapBytes == 0 || len(r.Bursts) != 4 || len(r.BaselineBursts) != 3 || r.BurstJoinsPerSec <= 0 || r.BaselineJoinsPerSec <= 0 {
		t.Fatalf("got %+v; want four changes, a full map, four bursts with watches and three without", r)
	}
	for _, b := range r.Bursts {
		// Every watcher had every join: each carries at least a random
		// 32-byte key, which no deflate shrinks and base64 makes 43 bytes.
		if b.JoinsPerSec <= 0 || b.Delivered == nil || b.BytesPerWatcher < float64(b.Joins*43) {
			t.Errorf("burst of %d: %+v; want a rate, its delivery and every join at every watcher", b.Joins, b)
		}
	}
	for _, c := range r.Changes {
		if c.BytesPerPeer <= 0 || c.BytesPerPeer > 1024 || c.MaxMillis <= 0 {
			t.Errorf("%s: %+v; want a delta of at most 1 KiB per watcher", c.Kind, c)
		}
	}
}

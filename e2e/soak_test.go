package e2e

import (
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/meshlab"
)

// TestSoakNoFalseFailover runs the lab with both cores busy and checks that
// no route moves: the health timers must not mistake a loaded host for a
// dead gateway. It takes MESHD_SOAK (a duration, e.g. 5m) and is skipped
// without it (`make soak`).
func TestSoakNoFalseFailover(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("MESHD_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set MESHD_SOAK=5m to run the soak test")
	}
	l := startLab(t, meshlab.Options{})
	moves := func() int {
		n := 0
		for _, p := range meshlab.Peers {
			n += strings.Count(l.Logs(p.Name), "route moved")
		}
		return n
	}
	waitUntil(t, 30*time.Second, "routes to settle", func() bool {
		gw, _ := l.ActiveGateway("cl1", "198.19.10.0/24")
		return gw == "gwa1"
	})
	before := moves()
	var stop atomic.Bool
	for range runtime.NumCPU() { // keep every core busy
		go func() {
			x := 0
			for !stop.Load() {
				x++
			}
			_ = x
		}()
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := l.Net.Ping("cl1", "198.19.10.10", 5*time.Second); err != nil {
			t.Error(err)
		}
		time.Sleep(time.Second) // pace of the background traffic, not a wait for a condition
	}
	stop.Store(true)
	if n := moves() - before; n != 0 {
		t.Fatalf("%d route moves in %s of load with every gateway alive; want none", n, d)
	}
	t.Logf("no route moved in %s with every core busy", d)
}

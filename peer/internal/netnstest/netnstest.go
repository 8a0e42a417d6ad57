//go:build linux

// Package netnstest runs test code inside a fresh, anonymous network
// namespace, so tests can create interfaces, routes and firewall rules
// without touching the host's.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Run runs fn on an OS thread moved into a new network namespace, which
// disappears when fn returns (the thread is discarded). It skips the test
// without root, or without /dev/net/tun when tun is true.
func Run(t *testing.T, tun bool, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := os.Stat("/dev/net/tun"); tun && err != nil {
		t.Skip("no /dev/net/tun on this machine")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

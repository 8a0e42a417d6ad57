package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
)

// startPprof serves Go's profiling endpoints on a loopback port when
// MESHD_PPROF_DIR is set, writing the address to DIR/meshd-PID.addr: a
// debugging aid for measuring coordinators under load (e2e/meshsim), off
// by default.
func startPprof() {
	dir := os.Getenv("MESHD_PPROF_DIR")
	if dir == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshd: pprof:", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	path := filepath.Join(dir, fmt.Sprintf("meshd-%d.addr", os.Getpid()))
	if err := os.WriteFile(path, []byte(ln.Addr().String()), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "meshd: pprof:", err)
	}
	go http.Serve(ln, mux)
}

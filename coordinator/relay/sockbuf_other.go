//go:build !linux

package relay

import "syscall"

// Without the FORCE options, the plain ones (bounded by the system).
const (
	soRcvbufForce = syscall.SO_RCVBUF
	soSndbufForce = syscall.SO_SNDBUF
)

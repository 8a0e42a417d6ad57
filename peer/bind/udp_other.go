//go:build !linux

package bind

import (
	"net"
	"syscall"
)

func controlUDP(_, _ string, rc syscall.RawConn) error { return nil }

// setMark: firewall marks exist on Linux only.
func setMark(*net.UDPConn, uint32) error { return nil }

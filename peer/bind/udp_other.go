//go:build !linux

package bind

import (
	"net"
	"syscall"
)

func controlUDP(_, _ string, rc syscall.RawConn) error { return nil }

// setMark: firewall marks exist on Linux only.
func setMark(*net.UDPConn, uint32) error { return nil }

func udpOffload(*net.UDPConn) (tx, rx bool) { return false, false }
func gsoControl(int) []byte                 { return nil }
func groSize([]byte) int                    { return 0 }
func isGSOError(error) bool                 { return false }

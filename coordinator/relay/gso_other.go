//go:build !linux

package relay

import "net"

// Without Linux's UDP GRO and GSO the fast path reads and writes one
// datagram per message.
const oobSize = 0

func enableGRO(*net.UDPConn) bool       { return false }
func groSize([]byte) int                { return 0 }
func gsoControl(b []byte, _ int) []byte { return b[:0] }
func gsoSizeOf([]byte) int              { return 0 }

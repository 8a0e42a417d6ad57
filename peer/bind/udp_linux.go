package bind

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// udpBufferSize is the send and receive buffer of each socket: a burst at
// line rate must not overflow it.
const udpBufferSize = 7 << 20

// controlUDP sizes a socket's buffers before it is bound (the forced sizes
// need CAP_NET_ADMIN; without it the limits of net.core.*mem_max apply).
func controlUDP(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], udpBufferSize) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], udpBufferSize)
			}
		}
	})
}

// setMark sets the socket's firewall mark.
func setMark(c *net.UDPConn, mark uint32) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}

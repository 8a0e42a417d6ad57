package relay

import (
	"net"
	"syscall"
)

// SocketBuffer is the receive and send buffer size of relay sockets. A
// relayed TCP stream arrives in bursts (a sender's batch of segments at
// once); with the default buffer of about 200 KB a burst that meets a busy
// relay goroutine is dropped, and the stream collapses.
const SocketBuffer = 4 << 20

// GrowBuffers raises c's socket buffers to SocketBuffer: past the
// system's maximum when the process may (root), else as far as it allows.
func GrowBuffers(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err == nil {
		var rerr, werr error
		rc.Control(func(fd uintptr) {
			rerr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soRcvbufForce, SocketBuffer)
			werr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soSndbufForce, SocketBuffer)
		})
		if rerr == nil && werr == nil {
			return
		}
	}
	c.SetReadBuffer(SocketBuffer)
	c.SetWriteBuffer(SocketBuffer)
}

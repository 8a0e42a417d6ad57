package netlab

import "net"

// UDPEcho answers every UDP datagram to addr (host:port; an empty host
// means every IPv4 address) inside namespace name with its payload, until
// the returned connection is closed.
func (l *Lab) UDPEcho(name, addr string) (net.PacketConn, error) {
	return l.UDPEchoNet(name, "udp4", addr)
}

// UDPEchoNet is UDPEcho on network udp4 or udp6 (where an empty host
// means every IPv6 address).
func (l *Lab) UDPEchoNet(name, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := l.InNS(name, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc, nil
}

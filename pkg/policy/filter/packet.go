package filter

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers the filter reads.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// ICMP message classes, for both ICMPv4 and ICMPv6.
const (
	icmpOther = iota
	icmpEchoRequest
	icmpEchoReply
	icmpError // destination unreachable, time exceeded, parameter problem (and packet too big)
)

// packet is what the filter reads of an IP packet. parse fills it in
// place; it never allocates.
type packet struct {
	src, dst     netip.Addr
	sport, dport uint16 // for ICMP echo: sport is the identifier, dport 0
	proto        uint8
	tcpFlags     uint8
	icmp         uint8  // icmp class
	fragment     bool   // a fragment after the first: no transport header
	inner        []byte // for an ICMP error, the packet it quotes
}

// parse reads an IPv4 or IPv6 packet. It reports false for a packet too
// short or malformed to judge. A quoted packet (inner, from an ICMP
// error) may be cut short after its transport ports.
func parse(b []byte, p *packet, quoted bool) bool {
	if len(b) < 1 {
		return false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return false
		}
		if !quoted {
			total := int(binary.BigEndian.Uint16(b[2:4]))
			if total < ihl || total > len(b) {
				return false
			}
			b = b[:total]
		}
		p.proto = b[9]
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dst = netip.AddrFrom4([4]byte(b[16:20]))
		if off := binary.BigEndian.Uint16(b[6:8]) & 0x1fff; off != 0 {
			// RFC 1858: a TCP fragment at offset 8 can only be meant to
			// overwrite the header the first fragment was judged by.
			if off == 1 && p.proto == protoTCP {
				return false
			}
			p.fragment = true
			return true
		}
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return false
		}
		if !quoted {
			total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
			if total > len(b) {
				return false
			}
			b = b[:total]
		}
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
	walk:
		for range 8 {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 {
					return false
				}
				n := (int(rest[1]) + 1) * 8
				if len(rest) < n {
					return false
				}
				next, rest = rest[0], rest[n:]
				continue
			case 44: // fragment
				if len(rest) < 8 {
					return false
				}
				off := binary.BigEndian.Uint16(rest[2:4]) >> 3
				next, rest = rest[0], rest[8:]
				if off != 0 {
					p.proto = next
					p.fragment = true
					return true
				}
				continue
			}
			break walk
		}
		p.proto = next
		l4 = rest
	default:
		return false
	}
	switch p.proto {
	case protoTCP:
		if len(l4) < 14 && !quoted || len(l4) < 4 {
			return false
		}
		p.sport = binary.BigEndian.Uint16(l4[0:2])
		p.dport = binary.BigEndian.Uint16(l4[2:4])
		if len(l4) >= 14 {
			p.tcpFlags = l4[13]
		}
	case protoUDP:
		if len(l4) < 8 && !quoted || len(l4) < 4 {
			return false
		}
		p.sport = binary.BigEndian.Uint16(l4[0:2])
		p.dport = binary.BigEndian.Uint16(l4[2:4])
	case protoICMP, protoICMPv6:
		if len(l4) < 8 && !quoted || len(l4) < 6 {
			return false
		}
		p.icmp = icmpClass(p.proto, l4[0])
		switch p.icmp {
		case icmpEchoRequest, icmpEchoReply:
			p.sport = binary.BigEndian.Uint16(l4[4:6])
		case icmpError:
			if len(l4) > 8 {
				p.inner = l4[8:]
			}
		}
	}
	return true
}

func icmpClass(proto, typ uint8) uint8 {
	if proto == protoICMP {
		switch typ {
		case 8:
			return icmpEchoRequest
		case 0:
			return icmpEchoReply
		case 3, 11, 12:
			return icmpError
		}
		return icmpOther
	}
	switch typ {
	case 128:
		return icmpEchoRequest
	case 129:
		return icmpEchoReply
	case 1, 2, 3, 4:
		return icmpError
	}
	return icmpOther
}

// Package disco is the path-discovery message format peers exchange on
// their WireGuard socket and through the relay: pings that carry the
// sender's candidate addresses (so a ping through the relay is also a "call
// me" request), and pongs that echo the ping's transaction ID and say which
// address the ping came from.
//
// Every message is sealed with NaCl box between the sender's and the
// receiver's WireGuard static keys, so only the peer that owns a key can
// make a ping or pong in its name: a stranger cannot steer another peer's
// path. A pong counts only for a transaction ID the receiver sent and has
// not yet seen answered, so a replayed pong counts for nothing.
//
//	magic (8) | sender public key (32) | nonce (24) | box(type (1) | body)
//
// Bodies: ping = txid (12) | count (1) | count x addrport; pong = txid (12)
// | addrport, where addrport = family (1: 4 or 6) | addr (4 or 16) | port (2).
// Health probes (peer/liveness, on the overlay, never on the WireGuard
// socket): probe = txid (12); status = txid (12) | seq (8) | flags (1), a
// peer's statement about itself answering that probe.
// A receiver ignores bytes after the fields it knows, so later versions may
// append fields.
package disco

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/crypto/nacl/box"
)

// Magic starts every disco packet. Its first byte is none of WireGuard's
// message types (1-4, little-endian u32), no STUN message (top bits 00) and
// no TURN ChannelData (0x40-0x7f), so one socket can carry all four.
var Magic = [8]byte{0xf0, 'm', 'e', 's', 'h', 'd', 'p', 0x01}

// Sizes of the parts of a packet.
const (
	KeyLen    = 32
	NonceLen  = 24
	TxIDLen   = 12
	headerLen = len(Magic) + KeyLen + NonceLen
	// MaxAddrs caps the addresses one ping carries.
	MaxAddrs = 16
)

// Types of message.
const (
	TypePing   byte = 1
	TypePong   byte = 2
	TypeProbe  byte = 3
	TypeStatus byte = 4
)

// Flags of a status.
const (
	StatusLANOK byte = 1 << iota // the gateway's LAN check passes (or it has none)
	StatusFwdOK                  // the gateway forwards (IP forwarding on)
)

// TxID identifies a ping and the pong that answers it.
type TxID [TxIDLen]byte

// NewTxID returns a random transaction ID.
func NewTxID() TxID {
	var t TxID
	rand.Read(t[:])
	return t
}

// Message is one decoded disco message.
type Message struct {
	Type byte
	TxID TxID
	// Addrs (ping): the sender's candidate addresses, to probe back.
	Addrs []netip.AddrPort
	// Src (pong): the address the ping came from, as the ponging side saw
	// it (the pinger's reflexive address on that path).
	Src netip.AddrPort
	// Seq and Flags (status): the sender's statement number, which only
	// grows, and what it says of itself.
	Seq   uint64
	Flags byte
}

// Errors of Open.
var (
	ErrNotDisco = errors.New("disco: not a disco packet")
	ErrAuth     = errors.New("disco: message does not authenticate")
	ErrFormat   = errors.New("disco: malformed message")
)

// Looks reports whether pkt starts like a disco packet.
func Looks(pkt []byte) bool {
	return len(pkt) >= headerLen+box.Overhead+1 && [8]byte(pkt[:8]) == Magic
}

// Sender returns the sender's public key of a packet for which Looks is
// true, so the receiver can find the shared key before Open.
func Sender(pkt []byte) [KeyLen]byte {
	return [KeyLen]byte(pkt[len(Magic) : len(Magic)+KeyLen])
}

// SharedKey precomputes the box key between a private key and a peer's
// public key.
func SharedKey(priv, peerPub [KeyLen]byte) *[KeyLen]byte {
	var k [KeyLen]byte
	box.Precompute(&k, &peerPub, &priv)
	return &k
}

// Seal encodes m from sender (its public key) under the shared key.
func Seal(m *Message, senderPub [KeyLen]byte, shared *[KeyLen]byte) []byte {
	body := []byte{m.Type}
	body = append(body, m.TxID[:]...)
	switch m.Type {
	case TypePing:
		addrs := m.Addrs
		if len(addrs) > MaxAddrs {
			addrs = addrs[:MaxAddrs]
		}
		body = append(body, byte(len(addrs)))
		for _, a := range addrs {
			body = appendAddrPort(body, a)
		}
	case TypePong:
		body = appendAddrPort(body, m.Src)
	case TypeStatus:
		body = binary.BigEndian.AppendUint64(body, m.Seq)
		body = append(body, m.Flags)
	}
	var nonce [NonceLen]byte
	rand.Read(nonce[:])
	out := make([]byte, 0, headerLen+len(body)+box.Overhead)
	out = append(out, Magic[:]...)
	out = append(out, senderPub[:]...)
	out = append(out, nonce[:]...)
	return box.SealAfterPrecomputation(out, body, &nonce, shared)
}

// Open authenticates and decodes pkt under the shared key of its sender
// (see Sender).
func Open(pkt []byte, shared *[KeyLen]byte) (*Message, error) {
	if !Looks(pkt) {
		return nil, ErrNotDisco
	}
	nonce := [NonceLen]byte(pkt[len(Magic)+KeyLen : headerLen])
	body, ok := box.OpenAfterPrecomputation(nil, pkt[headerLen:], &nonce, shared)
	if !ok {
		return nil, ErrAuth
	}
	if len(body) < 1+TxIDLen {
		return nil, ErrFormat
	}
	m := &Message{Type: body[0], TxID: TxID(body[1 : 1+TxIDLen])}
	rest := body[1+TxIDLen:]
	switch m.Type {
	case TypePing:
		if len(rest) == 0 {
			return m, nil // a ping without addresses
		}
		n := int(rest[0])
		rest = rest[1:]
		if n > MaxAddrs {
			return nil, ErrFormat
		}
		for range n {
			a, r, err := readAddrPort(rest)
			if err != nil {
				return nil, err
			}
			m.Addrs, rest = append(m.Addrs, a), r
		}
	case TypePong:
		a, _, err := readAddrPort(rest)
		if err != nil {
			return nil, err
		}
		m.Src = a
	case TypeProbe:
	case TypeStatus:
		if len(rest) < 9 {
			return nil, ErrFormat
		}
		m.Seq, m.Flags = binary.BigEndian.Uint64(rest), rest[8]
	default:
		return nil, ErrFormat
	}
	return m, nil
}

func appendAddrPort(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		v := ip.As4()
		b = append(b, v[:]...)
	} else {
		b = append(b, 6)
		v := ip.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

func readAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, ErrFormat
	}
	var n int
	switch b[0] {
	case 4:
		n = 4
	case 6:
		n = 16
	default:
		return netip.AddrPort{}, nil, ErrFormat
	}
	if len(b) < 1+n+2 {
		return netip.AddrPort{}, nil, ErrFormat
	}
	ip, _ := netip.AddrFromSlice(b[1 : 1+n])
	port := binary.BigEndian.Uint16(b[1+n:])
	return netip.AddrPortFrom(ip, port), b[1+n+2:], nil
}

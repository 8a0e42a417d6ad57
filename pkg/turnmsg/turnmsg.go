// Package turnmsg reads the few TURN messages (RFC 8656) that both a
// peer's relay client and a coordinator's relay watch on their sockets to
// learn what the TURN exchange granted: ChannelBind and CreatePermission
// requests, their successes, and an Allocate success's relayed address.
// Both planes use it, so the message shapes are read in one place.
package turnmsg

import (
	"encoding/binary"
	"net/netip"

	"github.com/pion/stun/v3"
)

// Message types and attributes read here.
const (
	HeaderSize              = 20
	AllocateSuccess         = 0x0103
	CreatePermissionRequest = 0x0008
	CreatePermissionSuccess = 0x0108
	ChannelBindRequest      = 0x0009
	ChannelBindSuccess      = 0x0109
	attrChannelNumber       = 0x000C
)

// TxID is a STUN transaction ID.
type TxID [stun.TransactionIDSize]byte

// Type is p's STUN message type (0 when p is too short to be one).
func Type(p []byte) uint16 {
	if len(p) < HeaderSize {
		return 0
	}
	return binary.BigEndian.Uint16(p)
}

// TransactionID is p's transaction ID; p must be at least HeaderSize long.
func TransactionID(p []byte) TxID { return TxID(p[8:HeaderSize]) }

// Request is a ChannelBind or CreatePermission request.
type Request struct {
	Type    uint16
	TxID    TxID
	Channel uint16           // ChannelBind: the channel number
	Peers   []netip.AddrPort // the XOR-PEER-ADDRESS attributes, unmapped
}

// ParseRequest reads a ChannelBind or CreatePermission request; ok is
// false for anything else or a malformed one (a ChannelBind without its
// channel, a request without a peer address).
func ParseRequest(p []byte) (r Request, ok bool) {
	r.Type = Type(p)
	if r.Type != ChannelBindRequest && r.Type != CreatePermissionRequest {
		return r, false
	}
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	if m.Decode() != nil {
		return r, false
	}
	r.TxID = TxID(m.TransactionID)
	if r.Type == ChannelBindRequest {
		num, err := m.Get(attrChannelNumber)
		if err != nil || len(num) < 2 {
			return r, false
		}
		r.Channel = binary.BigEndian.Uint16(num)
	}
	for _, a := range m.Attributes {
		if a.Type != stun.AttrXORPeerAddress {
			continue
		}
		one := &stun.Message{TransactionID: m.TransactionID}
		one.Add(stun.AttrXORPeerAddress, a.Value)
		var xa stun.XORMappedAddress
		if xa.GetFromAs(one, stun.AttrXORPeerAddress) != nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(xa.IP); ok {
			r.Peers = append(r.Peers, netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)))
		}
	}
	return r, len(r.Peers) > 0
}

// RelayedAddress reads an Allocate success's XOR-RELAYED-ADDRESS.
func RelayedAddress(p []byte) (netip.AddrPort, bool) {
	if Type(p) != AllocateSuccess {
		return netip.AddrPort{}, false
	}
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	if m.Decode() != nil {
		return netip.AddrPort{}, false
	}
	var ra stun.XORMappedAddress
	if ra.GetFromAs(m, stun.AttrXORRelayedAddress) != nil {
		return netip.AddrPort{}, false
	}
	ip, ok := netip.AddrFromSlice(ra.IP)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(ra.Port)), true
}

package turnmsg

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/pion/stun/v3"
)

// peerAddr is a XOR-PEER-ADDRESS setter.
type peerAddr struct{ stun.XORMappedAddress }

func (a peerAddr) AddTo(m *stun.Message) error { return a.AddToAs(m, stun.AttrXORPeerAddress) }

type channel uint16

func (c channel) AddTo(m *stun.Message) error {
	m.Add(attrChannelNumber, []byte{byte(c >> 8), byte(c), 0, 0})
	return nil
}

type relayed struct{ stun.XORMappedAddress }

func (a relayed) AddTo(m *stun.Message) error { return a.AddToAs(m, stun.AttrXORRelayedAddress) }

func TestParse(t *testing.T) {
	p1 := peerAddr{stun.XORMappedAddress{IP: net.IPv4(198, 18, 0, 11), Port: 50001}}
	p2 := peerAddr{stun.XORMappedAddress{IP: net.IPv4(198, 18, 0, 12), Port: 50002}}
	bind := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodChannelBind, stun.ClassRequest), p1, channel(0x4001))
	r, ok := ParseRequest(bind.Raw)
	if !ok || r.Type != ChannelBindRequest || r.Channel != 0x4001 || r.TxID != TxID(bind.TransactionID) ||
		!slices.Equal(r.Peers, []netip.AddrPort{netip.MustParseAddrPort("198.18.0.11:50001")}) {
		t.Fatalf("ChannelBind: %+v, %v", r, ok)
	}
	perm := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest), p1, p2)
	if r, ok := ParseRequest(perm.Raw); !ok || r.Type != CreatePermissionRequest || len(r.Peers) != 2 {
		t.Fatalf("CreatePermission: %+v, %v", r, ok)
	}
	noChan := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodChannelBind, stun.ClassRequest), p1)
	if _, ok := ParseRequest(noChan.Raw); ok {
		t.Fatal("a ChannelBind without its channel was read")
	}
	if _, ok := ParseRequest([]byte{0x40, 0x01, 0, 4, 1, 2, 3, 4}); ok {
		t.Fatal("ChannelData was read as a request")
	}
	alloc := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse),
		relayed{stun.XORMappedAddress{IP: net.IPv4(198, 18, 0, 11), Port: 49152}})
	if a, ok := RelayedAddress(alloc.Raw); !ok || a != netip.MustParseAddrPort("198.18.0.11:49152") {
		t.Fatalf("relayed address %v, %v", a, ok)
	}
	if Type(alloc.Raw) != AllocateSuccess || TransactionID(alloc.Raw) != TxID(alloc.TransactionID) {
		t.Fatal("type or transaction ID misread")
	}
}

package disco

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/crypto/curve25519"
)

type keypair struct{ priv, pub [KeyLen]byte }

func newKey(t *testing.T) keypair {
	t.Helper()
	var k keypair
	rand.Read(k.priv[:])
	pub, err := curve25519.X25519(k.priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	copy(k.pub[:], pub)
	return k
}

func TestRoundTrip(t *testing.T) {
	a, b := newKey(t), newKey(t)
	ab, ba := SharedKey(a.priv, b.pub), SharedKey(b.priv, a.pub)
	tests := []struct {
		name string
		m    Message
	}{
		{"ping without addresses", Message{Type: TypePing, TxID: NewTxID()}},
		{"ping with addresses", Message{Type: TypePing, TxID: NewTxID(), Addrs: []netip.AddrPort{
			netip.MustParseAddrPort("198.18.0.5:41641"), netip.MustParseAddrPort("[2001:db8::1]:51820")}}},
		{"pong", Message{Type: TypePong, TxID: NewTxID(), Src: netip.MustParseAddrPort("198.18.0.9:1234")}},
		{"probe", Message{Type: TypeProbe, TxID: NewTxID()}},
		{"status", Message{Type: TypeStatus, TxID: NewTxID(), Seq: 1<<40 + 7, Flags: StatusLANOK | StatusFwdOK}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := Seal(&tt.m, a.pub, ab)
			if !Looks(pkt) {
				t.Fatal("Looks = false for a sealed packet")
			}
			if got := Sender(pkt); got != a.pub {
				t.Fatalf("Sender = %x; want %x", got, a.pub)
			}
			got, err := Open(pkt, ba)
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != tt.m.Type || got.TxID != tt.m.TxID || got.Src != tt.m.Src || got.Seq != tt.m.Seq || got.Flags != tt.m.Flags || !slices.Equal(got.Addrs, tt.m.Addrs) {
				t.Fatalf("got %+v; want %+v", got, tt.m)
			}
		})
	}
}

// TestForgery: a third party that knows both public keys (every peer of a
// vnet does) cannot make a message that opens as coming from a.
func TestForgery(t *testing.T) {
	a, b, mallory := newKey(t), newKey(t), newKey(t)
	ba := SharedKey(b.priv, a.pub)
	m := &Message{Type: TypePong, TxID: NewTxID(), Src: netip.MustParseAddrPort("198.18.0.66:22")}
	// Mallory claims a's public key but can only box with her own private key.
	forged := Seal(m, a.pub, SharedKey(mallory.priv, b.pub))
	if _, err := Open(forged, ba); !errors.Is(err, ErrAuth) {
		t.Fatalf("forged pong: err = %v; want ErrAuth", err)
	}
	good := Seal(m, a.pub, SharedKey(a.priv, b.pub))
	for i := headerLen; i < len(good); i++ {
		bad := slices.Clone(good)
		bad[i] ^= 1
		if _, err := Open(bad, ba); !errors.Is(err, ErrAuth) {
			t.Fatalf("flipped byte %d: err = %v; want ErrAuth", i, err)
		}
	}
	if _, err := Open(good[:len(good)-1], ba); err == nil {
		t.Fatal("truncated packet opened")
	}
}

func TestLooks(t *testing.T) {
	wgTransport := make([]byte, 64)
	wgTransport[0] = 4
	stunMsg := make([]byte, 64)
	stunMsg[0], stunMsg[1] = 0x00, 0x01
	for _, pkt := range [][]byte{nil, wgTransport, stunMsg, Magic[:]} {
		if Looks(pkt) {
			t.Fatalf("Looks(%x) = true", pkt[:min(len(pkt), 8)])
		}
	}
}

func FuzzOpen(f *testing.F) {
	var a, b [KeyLen]byte
	rand.Read(a[:])
	rand.Read(b[:])
	k := SharedKey(a, b)
	f.Add(Seal(&Message{Type: TypePing, TxID: NewTxID(), Addrs: []netip.AddrPort{netip.MustParseAddrPort("1.2.3.4:5")}}, b, k))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		Open(pkt, k) // must not panic
	})
}

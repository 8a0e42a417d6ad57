package bind

import (
	"bytes"
	"crypto/hmac"
	"crypto/subtle"
	"hash"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"

	"github.com/meshd/meshd/peer/wgcfg"
)

// Crossed handshakes. When two peers configure each other at the same
// moment (a mesh starting, a peer joining), each sends a handshake
// initiation before the other's arrives. WireGuard answers an initiation
// by replacing the handshake it started with the responder's side of the
// peer's, so each side then drops the response to its own initiation, and
// both wait as responders for a first data packet that never comes, until
// WireGuard tries again 5 s later. The bind breaks the tie the way both
// sides agree on: the peer with the lower public key keeps its initiation
// and does not let WireGuard see the other's, which the other side answers
// as usual, so one handshake completes within a round trip; and when the
// other's came first, it holds its own back while WireGuard answers that.

// CrossWindow is how long after sending an initiation that has not been
// answered an initiation from the same peer counts as crossing it.
const CrossWindow = time.Second

// CrossDropMax and CrossDropEvery limit dropping a peer's initiations: one
// for each initiation of this host's, and at most CrossDropMax in
// CrossDropEvery, so that if this host's initiations cannot reach the peer
// while the peer's reach this host, one of the peer's is soon answered.
const (
	CrossDropMax   = 3
	CrossDropEvery = 20 * time.Second
)

// dropCrossed reports whether an initiation from peer, arriving at now,
// crosses the one this host (self) sent at sent (zero: none outstanding)
// and is the one to drop: self's key is the lower one. drops are when the
// last of the peer's initiations were dropped.
func dropCrossed(self, peer wgcfg.Key, sent time.Time, drops []time.Time, now time.Time) bool {
	if sent.IsZero() || now.Sub(sent) >= CrossWindow || now.Before(sent) {
		return false
	}
	recent := 0
	for _, d := range drops {
		if !d.Before(sent) {
			return false // one already dropped for this initiation
		}
		if now.Sub(d) < CrossDropEvery {
			recent++
		}
	}
	if recent >= CrossDropMax {
		return false
	}
	return bytes.Compare(self[:], peer[:]) < 0
}

// holdCrossing reports whether this host (self) holds back an initiation
// to peer sent at now because WireGuard was handed one of the peer's at
// passed (zero: none unanswered) and is about to answer it: self's key is
// the lower one, so the peer's initiation is the one to complete (it may
// have been handed over before this host's own went out, too late for
// dropCrossed). The held initiation goes out later if no answer does (the
// peer's was not one WireGuard could take).
func holdCrossing(self, peer wgcfg.Key, passed, now time.Time) bool {
	if passed.IsZero() || now.Sub(passed) >= CrossWindow || now.Before(passed) {
		return false
	}
	return bytes.Compare(self[:], peer[:]) < 0
}

// resendDelay is how long this host (self) waits before sending again an
// initiation the peer could not take: ResendAfter for the lower key, twice
// that for the higher, so that when both kept one the lower key's goes
// first, the other side answers it, and that answer cancels its own (two
// resent together would cross again).
func resendDelay(self, peer wgcfg.Key) time.Duration {
	if bytes.Compare(self[:], peer[:]) < 0 {
		return ResendAfter
	}
	return 2 * ResendAfter
}

// initOpener finds which peer sent a handshake initiation: it checks the
// message's mac1 and opens its encrypted static key as the responder
// (WireGuard's Noise_IKpsk2 first message), without touching WireGuard's
// own state.
type initOpener struct {
	priv    [32]byte
	mac1Key [blake2s.Size]byte
	hash    [blake2s.Size]byte // H after the responder's static key
	chain   [blake2s.Size]byte // C after the construction
}

func newInitOpener(priv, pub [32]byte) *initOpener {
	o := &initOpener{priv: priv}
	o.chain = blake2s.Sum256([]byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"))
	o.hash = mix(o.chain, []byte("WireGuard v1 zx2c4 Jason@zx2c4.com"))
	o.hash = mix(o.hash, pub[:])
	o.mac1Key = blake2s.Sum256(append([]byte("mac1----"), pub[:]...))
	return o
}

// sender returns the static public key in initiation pkt, and false for
// anything that is not a well-formed initiation to this host.
func (o *initOpener) sender(pkt []byte) (wgcfg.Key, bool) {
	if len(pkt) != wgInitiationSz || !isWG(pkt, wgInitiation) {
		return wgcfg.Key{}, false
	}
	const (
		ephOff    = 8
		staticOff = ephOff + 32
		macOff    = staticOff + 32 + 16 + 12 + 16
	)
	m, _ := blake2s.New128(o.mac1Key[:])
	m.Write(pkt[:macOff])
	if subtle.ConstantTimeCompare(m.Sum(nil), pkt[macOff:macOff+16]) != 1 {
		return wgcfg.Key{}, false
	}
	eph := pkt[ephOff:staticOff]
	chain := kdf(o.chain[:], eph, 1)[0]
	h := mix(o.hash, eph)
	ss, err := curve25519.X25519(o.priv[:], eph)
	if err != nil {
		return wgcfg.Key{}, false
	}
	key := kdf(chain[:], ss, 2)[1]
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return wgcfg.Key{}, false
	}
	var nonce [chacha20poly1305.NonceSize]byte
	static, err := aead.Open(nil, nonce[:], pkt[staticOff:staticOff+32+16], h[:])
	if err != nil || len(static) != 32 {
		return wgcfg.Key{}, false
	}
	return wgcfg.Key(static), true
}

// mix is HASH(h || data).
func mix(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	var out [blake2s.Size]byte
	d.Sum(out[:0])
	return out
}

// kdf is WireGuard's HKDF over HMAC-BLAKE2s, returning n outputs.
func kdf(chain, input []byte, n int) [][blake2s.Size]byte {
	newHash := func() hash.Hash { d, _ := blake2s.New256(nil); return d }
	mac := func(key []byte, parts ...[]byte) []byte {
		m := hmac.New(newHash, key)
		for _, p := range parts {
			m.Write(p)
		}
		return m.Sum(nil)
	}
	prk := mac(chain, input)
	out := make([][blake2s.Size]byte, n)
	var prev []byte
	for i := range n {
		prev = mac(prk, prev, []byte{byte(i + 1)})
		copy(out[i][:], prev)
	}
	return out
}

// Package wgcfg is the desired WireGuard configuration of one interface: the
// private key, the listen port and the whole set of peers. The agent computes
// a Config from the network map; an engine applies the difference from the
// Config it applied before.
package wgcfg

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// Key is a Curve25519 key, private or public.
type Key [32]byte

// ErrInvalidKey is returned for a key that is not 32 bytes of base64.
var ErrInvalidKey = errors.New("invalid WireGuard key")

// GenerateKey returns a new private key, clamped as WireGuard does.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// ParseKey decodes the standard base64 form used by wg(8).
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("%w: %q", ErrInvalidKey, s)
	}
	copy(k[:], b)
	return k, nil
}

// String is the base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Hex is the form the UAPI protocol uses.
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is unset.
func (k Key) IsZero() bool { return k == Key{} }

// Public derives the public key of a private key.
func (k Key) Public() Key {
	var pub Key
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil { // only for a low-order input, which a clamped key is not
		return pub
	}
	copy(pub[:], out)
	return pub
}

// Config is the whole desired configuration of one interface.
type Config struct {
	PrivateKey Key
	ListenPort uint16
	// Peers are kept sorted by public key (Normalize).
	Peers []Peer
}

// Peer is one WireGuard peer.
type Peer struct {
	PublicKey  Key
	Endpoint   netip.AddrPort // zero: no endpoint known (the peer may still reach us)
	AllowedIPs []netip.Prefix // sorted
	// PersistentKeepalive in seconds; 0 disables.
	PersistentKeepalive uint16
	// Roaming: the peer's endpoint is learned from its packets, never
	// configured (a device: a stock WireGuard client that speaks no path
	// probes). An engine whose socket layer picks the paths of the other
	// peers leaves this one's endpoint to WireGuard.
	Roaming bool
}

func (p *Peer) equal(o *Peer) bool {
	return p.PublicKey == o.PublicKey && p.Endpoint == o.Endpoint && p.Roaming == o.Roaming &&
		p.PersistentKeepalive == o.PersistentKeepalive && slices.Equal(p.AllowedIPs, o.AllowedIPs)
}

// Normalize sorts peers by key and each peer's allowed IPs, so that Equal and
// the UAPI difference do not depend on the order a map was built in.
func (c *Config) Normalize() {
	slices.SortFunc(c.Peers, func(a, b Peer) int { return strings.Compare(string(a.PublicKey[:]), string(b.PublicKey[:])) })
	for i := range c.Peers {
		slices.SortFunc(c.Peers[i].AllowedIPs, comparePrefix)
		c.Peers[i].AllowedIPs = slices.Compact(c.Peers[i].AllowedIPs)
	}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Equal reports whether c and o configure the same thing. Both must be
// normalized.
func (c *Config) Equal(o *Config) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c.PrivateKey == o.PrivateKey && c.ListenPort == o.ListenPort &&
		slices.EqualFunc(c.Peers, o.Peers, func(a, b Peer) bool { return a.equal(&b) })
}

// Clone returns a deep copy.
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	out := *c
	out.Peers = make([]Peer, len(c.Peers))
	for i, p := range c.Peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		out.Peers[i] = p
	}
	return &out
}

// Peer returns the peer with key k, or nil.
func (c *Config) Peer(k Key) *Peer {
	for i := range c.Peers {
		if c.Peers[i].PublicKey == k {
			return &c.Peers[i]
		}
	}
	return nil
}

// UAPI returns the wireguard UAPI "set" text that turns an interface
// configured as old into want; old nil means the interface's current state is
// unknown, so the whole configuration replaces it. An empty string means
// nothing changes.
//
// Only what changed is sent: a peer whose configured endpoint did not change
// keeps the endpoint WireGuard has learned from its packets (roaming), and a
// peer whose allowed IPs did not change keeps its sessions untouched.
func UAPI(old, want *Config) string {
	return UAPIWith(old, want, func(p *Peer) string {
		if p.Endpoint.IsValid() {
			return p.Endpoint.String()
		}
		return ""
	})
}

// UAPIWith is UAPI with the endpoint of each peer given by endpoint ("":
// none), for an engine whose socket layer names endpoints its own way.
func UAPIWith(old, want *Config, endpoint func(*Peer) string) string {
	var b strings.Builder
	if old == nil {
		fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", want.PrivateKey.Hex(), want.ListenPort)
		for i := range want.Peers {
			writePeer(&b, nil, &want.Peers[i], endpoint)
		}
		return b.String()
	}
	if old.PrivateKey != want.PrivateKey {
		fmt.Fprintf(&b, "private_key=%s\n", want.PrivateKey.Hex())
	}
	if old.ListenPort != want.ListenPort {
		fmt.Fprintf(&b, "listen_port=%d\n", want.ListenPort)
	}
	for i := range old.Peers {
		if want.Peer(old.Peers[i].PublicKey) == nil {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", old.Peers[i].PublicKey.Hex())
		}
	}
	for i := range want.Peers {
		p := &want.Peers[i]
		o := old.Peer(p.PublicKey)
		if o != nil && o.equal(p) {
			continue
		}
		writePeer(&b, o, p, endpoint)
	}
	return b.String()
}

func writePeer(b *strings.Builder, old, p *Peer, endpoint func(*Peer) string) {
	fmt.Fprintf(b, "public_key=%s\n", p.PublicKey.Hex())
	if ep := endpoint(p); ep != "" && (old == nil || endpoint(old) != ep) {
		fmt.Fprintf(b, "endpoint=%s\n", ep)
	}
	if old == nil || old.PersistentKeepalive != p.PersistentKeepalive {
		fmt.Fprintf(b, "persistent_keepalive_interval=%d\n", p.PersistentKeepalive)
	}
	if old == nil || !slices.Equal(old.AllowedIPs, p.AllowedIPs) {
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(b, "allowed_ip=%s\n", a)
		}
	}
}

// Package token is the format of meshd's self-contained credentials: join
// tokens, the admin token and per-peer credentials.
//
// A token is "meshd" + a kind letter + "_" + base64url(body), where body is
//
//	version(1) | kind(1) | pin(32) | id(len-prefixed) | secret(32) | n(1) | n x url(len-prefixed)
//
// and lengths are one byte. The pin is the SHA-256 of the coordinators' API
// CA public key; the URLs are the coordinators' API endpoints. Only the
// secret's hash is stored by the coordinators.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Kind says what a token lets its holder do.
type Kind byte

// Token kinds.
const (
	KindJoin  Kind = 'j'
	KindAdmin Kind = 'a'
	KindPeer  Kind = 'p'
)

const (
	version    = 1
	prefix     = "meshd"
	secretLen  = 32
	pinLen     = 32
	maxURLs    = 16
	maxURLLen  = 255
	maxIDLen   = 64
	MaxEncoded = 8192 // MaxEncoded is the longest token string Parse accepts.
)

// Errors returned by Parse.
var (
	ErrMalformed = errors.New("malformed token")
	ErrKind      = errors.New("wrong kind of token")
)

// Token is a parsed credential.
type Token struct {
	Kind   Kind
	Pin    [pinLen]byte
	ID     string
	Secret [secretLen]byte
	URLs   []string
}

// New returns a token of kind with a random secret.
func New(kind Kind, id string, pin [32]byte, urls []string) (*Token, error) {
	t := &Token{Kind: kind, Pin: pin, ID: id, URLs: append([]string(nil), urls...)}
	if _, err := rand.Read(t.Secret[:]); err != nil {
		return nil, err
	}
	return t, t.validate()
}

// NewID returns a random identifier: 16 hex characters.
func NewID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// HashSecret is the stored form of a secret.
func HashSecret(secret [32]byte) string {
	h := sha256.Sum256(secret[:])
	return hex.EncodeToString(h[:])
}

// SecretHash is the stored form of t's secret.
func (t *Token) SecretHash() string { return HashSecret(t.Secret) }

// MatchesHash reports, in constant time, whether t's secret hashes to hash.
func (t *Token) MatchesHash(hash string) bool {
	h := t.SecretHash()
	return subtle.ConstantTimeCompare([]byte(h), []byte(hash)) == 1
}

func (t *Token) validate() error {
	switch t.Kind {
	case KindJoin, KindAdmin, KindPeer:
	default:
		return fmt.Errorf("%w: unknown kind %q", ErrMalformed, byte(t.Kind))
	}
	if t.ID == "" || len(t.ID) > maxIDLen {
		return fmt.Errorf("%w: id must be 1 to %d bytes", ErrMalformed, maxIDLen)
	}
	for _, c := range t.ID {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: id has a character outside [a-z0-9-]", ErrMalformed)
		}
	}
	if len(t.URLs) > maxURLs {
		return fmt.Errorf("%w: more than %d coordinator URLs", ErrMalformed, maxURLs)
	}
	for _, u := range t.URLs {
		if err := checkURL(u); err != nil {
			return err
		}
	}
	return nil
}

func checkURL(s string) error {
	if len(s) == 0 || len(s) > maxURLLen {
		return fmt.Errorf("%w: coordinator URL must be 1 to %d bytes", ErrMalformed, maxURLLen)
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%w: coordinator URL %q is not https://host:port", ErrMalformed, s)
	}
	return nil
}

// String encodes t.
func (t *Token) String() string {
	b := make([]byte, 0, 2+pinLen+1+len(t.ID)+secretLen+1+64*len(t.URLs))
	b = append(b, version, byte(t.Kind))
	b = append(b, t.Pin[:]...)
	b = append(b, byte(len(t.ID)))
	b = append(b, t.ID...)
	b = append(b, t.Secret[:]...)
	b = append(b, byte(len(t.URLs)))
	for _, u := range t.URLs {
		b = append(b, byte(len(u)))
		b = append(b, u...)
	}
	return prefix + string(t.Kind) + "_" + base64.RawURLEncoding.EncodeToString(b)
}

// Parse decodes a token string of any kind. Surrounding white space is
// ignored.
func Parse(s string) (*Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxEncoded {
		return nil, fmt.Errorf("%w: longer than %d characters", ErrMalformed, MaxEncoded)
	}
	if len(s) < len(prefix)+2 || !strings.HasPrefix(s, prefix) || s[len(prefix)+1] != '_' {
		return nil, fmt.Errorf("%w: does not start with %q", ErrMalformed, prefix)
	}
	kind := Kind(s[len(prefix)])
	b, err := base64.RawURLEncoding.DecodeString(s[len(prefix)+2:])
	if err != nil {
		return nil, fmt.Errorf("%w: bad encoding", ErrMalformed)
	}
	r := reader{b: b}
	if v := r.byte(); v != version {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrMalformed, v)
	}
	t := &Token{Kind: Kind(r.byte())}
	if t.Kind != kind {
		return nil, fmt.Errorf("%w: kind mismatch", ErrMalformed)
	}
	copy(t.Pin[:], r.n(pinLen))
	t.ID = string(r.n(int(r.byte())))
	copy(t.Secret[:], r.n(secretLen))
	n := int(r.byte())
	for i := 0; i < n && !r.bad; i++ {
		t.URLs = append(t.URLs, string(r.n(int(r.byte()))))
	}
	if r.bad || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: truncated or trailing bytes", ErrMalformed)
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// ParseKind is Parse that also checks the kind.
func ParseKind(s string, kind Kind) (*Token, error) {
	t, err := Parse(s)
	if err != nil {
		return nil, err
	}
	if t.Kind != kind {
		return nil, fmt.Errorf("%w: this is a %s token, not a %s token", ErrKind, t.Kind, kind)
	}
	return t, nil
}

func (k Kind) String() string {
	switch k {
	case KindJoin:
		return "join"
	case KindAdmin:
		return "admin"
	case KindPeer:
		return "peer"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

type reader struct {
	b   []byte
	bad bool
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) n(n int) []byte {
	if len(r.b) < n {
		r.bad = true
		r.b = nil
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

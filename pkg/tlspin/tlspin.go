// Package tlspin verifies a coordinator's TLS identity against a pin: the
// SHA-256 of the public key of the CA that issued its certificate (or of the
// certificate's own key). Tokens carry the pin, so a peer or admin needs no
// CA file and cannot be fooled by an impostor with another key.
package tlspin

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ErrMismatch is returned when no certificate in the chain matches the pin.
var ErrMismatch = errors.New("server certificate does not match the pin in the token")

// Of returns the pin of cert: SHA-256 of its SubjectPublicKeyInfo.
func Of(cert *x509.Certificate) [32]byte {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}

// Verify checks a presented chain: either the leaf's key is pinned, or some
// certificate in the chain is pinned and signed the leaf.
func Verify(rawCerts [][]byte, pin [32]byte) error {
	if len(rawCerts) == 0 {
		return fmt.Errorf("%w: no certificate presented", ErrMismatch)
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return fmt.Errorf("parse coordinator certificate: %w", err)
		}
		certs = append(certs, c)
	}
	leaf := certs[0]
	if Of(leaf) == pin {
		return nil
	}
	for _, ca := range certs[1:] {
		if Of(ca) != pin {
			continue
		}
		if err := leaf.CheckSignatureFrom(ca); err != nil {
			return fmt.Errorf("%w: leaf not signed by pinned key: %v", ErrMismatch, err)
		}
		return nil
	}
	return ErrMismatch
}

// ClientConfig returns a TLS client config that accepts only servers whose
// chain matches pin. Host names are not checked: the pin is the identity.
func ClientConfig(pin [32]byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			return Verify(raw, pin)
		},
	}
}

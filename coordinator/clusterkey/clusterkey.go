// Package clusterkey is the one shared secret of a coordinator cluster and
// everything derived from it: the Raft CA (mutual TLS between coordinators),
// the API CA (whose public key is the pin in every token), the admin secret,
// the key that authenticates coordinator-to-coordinator API calls and the
// shared secret of the built-in TURN relays.
//
// Every coordinator derives the same CA keys from the secret, so the cluster
// needs no certificate distribution; a host without the secret can neither
// join the Raft cluster nor impersonate a coordinator to a peer.
package clusterkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

const header = "meshd-cluster-key-v1"

// RaftServerName is the name every Raft certificate carries and every Raft
// client checks, independent of addresses.
const RaftServerName = "raft.meshd.internal"

// Key is the cluster secret.
type Key struct{ secret [32]byte }

// Generate returns a new random key.
func Generate() (Key, error) {
	var k Key
	_, err := rand.Read(k.secret[:])
	return k, err
}

// String is the file form of the key.
func (k Key) String() string {
	return header + " " + base64.StdEncoding.EncodeToString(k.secret[:]) + "\n"
}

// Parse reads the file form of a key.
func Parse(s string) (Key, error) {
	var k Key
	f := strings.Fields(s)
	if len(f) != 2 || f[0] != header {
		return k, errors.New("cluster key: not a meshd cluster key (make one with `meshd coordinator keygen`)")
	}
	b, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(b) != 32 {
		return k, errors.New("cluster key: bad key material (make one with `meshd coordinator keygen`)")
	}
	copy(k.secret[:], b)
	return k, nil
}

// Load reads a key file.
func Load(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("read cluster key: %w", err)
	}
	return Parse(string(b))
}

func (k Key) derive(label string) []byte {
	b, err := hkdf.Key(sha256.New, k.secret[:], nil, label, 32)
	if err != nil {
		panic(err)
	}
	return b
}

// AdminSecret is the secret in the admin token.
func (k Key) AdminSecret() [32]byte { return [32]byte(k.derive("meshd admin token v1")) }

// InternalSecret authenticates coordinator-to-coordinator API calls.
func (k Key) InternalSecret() [32]byte { return [32]byte(k.derive("meshd internal api v1")) }

// RelaySecret is the TURN REST shared secret of the coordinators' built-in
// relays: every coordinator derives the same one, so each accepts the relay
// credentials the others hand out.
func (k Key) RelaySecret() [32]byte { return [32]byte(k.derive("meshd turn relay secret v1")) }

// CA is a certificate authority derived from the key.
type CA struct {
	Cert *x509.Certificate
	key  ed25519.PrivateKey
}

func (k Key) ca(label, cn string) *CA {
	priv := ed25519.NewKeyFromSeed(k.derive(label))
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"meshd"}},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2120, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return &CA{Cert: cert, key: priv}
}

// RaftCA signs the certificates coordinators present to each other.
func (k Key) RaftCA() *CA { return k.ca("meshd raft ca v1", "meshd raft CA") }

// APICA signs the coordinators' API certificates; its pin is in every token.
func (k Key) APICA() *CA { return k.ca("meshd api ca v1", "meshd API CA") }

// Pin is the SHA-256 of the CA's public key.
func (ca *CA) Pin() [32]byte { return sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo) }

// Issue makes a fresh leaf key and certificate for hosts (IP addresses or
// DNS names), valid for client and server authentication.
func (ca *CA) Issue(cn string, hosts []string) (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	return ca.issue(cn, hosts, pub, priv)
}

// IssueECDSA is Issue with an ECDSA P-256 leaf key, for clients that do
// not take Ed25519 leaf keys: web browsers on the dashboard. A server that
// lists it after the Ed25519 one serves each client the first it supports,
// so meshd's own clients still get the Ed25519 leaf. Both chain to the same
// CA, so the pin holds for either.
func (ca *CA) IssueECDSA(cn string, hosts []string) (tls.Certificate, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	return ca.issue(cn, hosts, &priv.PublicKey, priv)
}

func (ca *CA) issue(cn string, hosts []string, pub crypto.PublicKey, priv crypto.Signer) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"meshd"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: priv}, nil
}

// Pool is a cert pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// RaftTLS returns the server and client configs for mutually authenticated
// Raft traffic: both sides must present a certificate from the Raft CA.
func (k Key) RaftTLS(nodeName string) (server, client *tls.Config, err error) {
	ca := k.RaftCA()
	cert, err := ca.Issue(nodeName, []string{RaftServerName})
	if err != nil {
		return nil, nil, err
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca.Pool(),
		ServerName:   RaftServerName,
	}
	return server, client, nil
}

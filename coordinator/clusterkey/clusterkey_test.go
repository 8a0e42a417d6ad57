package clusterkey

import (
	"crypto/tls"
	"testing"

	"github.com/meshd/meshd/pkg/tlspin"
)

// TestAPICertificates: the API serves an Ed25519 leaf to clients that take
// one (meshd's own) and an ECDSA leaf to browsers, which take no Ed25519
// leaf; both carry the API CA's pin.
func TestAPICertificates(t *testing.T) {
	key, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca := key.APICA()
	hosts := []string{"198.18.99.11", "localhost"}
	ed, err := ca.Issue("c1", hosts)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ca.IssueECDSA("c1", hosts)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]tls.Certificate{"ed25519": ed, "ecdsa": ec} {
		if err := tlspin.Verify(c.Certificate, ca.Pin()); err != nil {
			t.Fatalf("%s leaf: %v; want the API CA's pin to hold", name, err)
		}
	}
	hello := func(schemes ...tls.SignatureScheme) *tls.ClientHelloInfo {
		return &tls.ClientHelloInfo{
			SignatureSchemes: schemes, SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
			SupportedCurves: []tls.CurveID{tls.X25519, tls.CurveP256}, SupportedPoints: []uint8{0},
			CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		}
	}
	browser := hello(tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256, tls.PKCS1WithSHA256)
	if err := browser.SupportsCertificate(&ed); err == nil {
		t.Fatal("a client without Ed25519 accepts the Ed25519 leaf; want it refused (why browsers need the ECDSA one)")
	}
	if err := browser.SupportsCertificate(&ec); err != nil {
		t.Fatalf("a browser's hello does not take the ECDSA leaf: %v", err)
	}
	if err := hello(tls.Ed25519, tls.ECDSAWithP256AndSHA256).SupportsCertificate(&ed); err != nil {
		t.Fatalf("a Go client's hello does not take the Ed25519 leaf: %v", err)
	}
}

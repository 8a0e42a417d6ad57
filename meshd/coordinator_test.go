package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/clusterkey"
)

func TestParseBytes(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"12345", 12345, true},
		{"500K", 500_000, true},
		{"10M", 10_000_000, true},
		{"100MB", 100_000_000, true},
		{"1.5g", 1_500_000_000, true},
		{"", 0, false},
		{"M", 0, false},
		{"-1M", 0, false},
		{"10Mbit", 0, false},
		{"9999999G", 0, false},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseBytes(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("got %d, %v; want %d, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tt := range []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"49152-65535", 49152, 65535, true},
		{"50000-50000", 50000, 50000, true},
		{"0", 0, 0, true},
		{"50001-50000", 0, 0, false},
		{"0-100", 0, 0, false},
		{"50000", 0, 0, false},
		{"1-70000", 0, 0, false},
	} {
		t.Run(tt.in, func(t *testing.T) {
			lo, hi, err := parsePortRange(tt.in)
			if (err == nil) != tt.ok || lo != tt.lo || hi != tt.hi {
				t.Fatalf("got %d-%d, %v; want %d-%d, ok %v", lo, hi, err, tt.lo, tt.hi, tt.ok)
			}
		})
	}
}

// TestRelayConfig: the TLS relay's default address follows --listen and may
// fall back to an ephemeral port; external relays need their secret.
func TestRelayConfig(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "relay.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		listen   string
		tlsSet   bool
		tls      string
		urls     []string
		file     string
		wantTLS  string
		fallback bool
		err      string
	}{
		{"default follows --listen", "10.0.0.1:8443", false, "", nil, "", "10.0.0.1:5349", true, ""},
		{"default on every address", ":8443", false, "", nil, "", ":5349", true, ""},
		{"default on IPv6", "[2001:db8::1]:8443", false, "", nil, "", "[2001:db8::1]:5349", true, ""},
		{"chosen", "10.0.0.1:8443", true, "10.0.0.1:15349", nil, "", "10.0.0.1:15349", false, ""},
		{"off", "10.0.0.1:8443", true, "off", nil, "", "", false, ""},
		{"external", "10.0.0.1:8443", false, "", []string{"turn:t.example:3478"}, secret, "10.0.0.1:5349", true, ""},
		{"external without a secret", "10.0.0.1:8443", false, "", []string{"turn:t.example:3478"}, "", "", false, "--relay-secret-file"},
		{"a secret without external relays", "10.0.0.1:8443", false, "", nil, secret, "", false, "--relay-url"},
		{"an empty secret", "10.0.0.1:8443", false, "", []string{"turn:t.example:3478"}, empty, "", false, "empty"},
		{"a missing secret file", "10.0.0.1:8443", false, "", []string{"turn:t.example:3478"}, filepath.Join(dir, "nope"), "", false, "--relay-secret-file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := coordinator.Config{APIListen: tt.listen, RelayURLs: tt.urls}
			err := relayConfig(&cfg, tt.tlsSet, tt.tls, "49152-65535", "10M", tt.file)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v; want an error about %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.RelayTLSListen != tt.wantTLS || cfg.RelayTLSFallback != tt.fallback {
				t.Fatalf("TLS relay %q fallback %v; want %q %v", cfg.RelayTLSListen, cfg.RelayTLSFallback, tt.wantTLS, tt.fallback)
			}
			if cfg.RelayBandwidth != 10_000_000 || cfg.RelayPortMin != 49152 || cfg.RelayPortMax != 65535 {
				t.Fatalf("got bandwidth %d ports %d-%d", cfg.RelayBandwidth, cfg.RelayPortMin, cfg.RelayPortMax)
			}
			if tt.file != "" && string(cfg.RelaySecret) != "s3cret" {
				t.Fatalf("secret %q; want the file's contents without the newline", cfg.RelaySecret)
			}
		})
	}
}

// TestSTUNListenDefault: by default STUN follows --listen's host, so three
// coordinators on one host (each on its own address) can all start.
func TestSTUNListenDefault(t *testing.T) {
	tests := []struct {
		name, flag string
		given      bool
		api, want  string
	}{
		{"default follows the API host", "", false, "127.0.0.2:8443", "127.0.0.2:3478"},
		{"wildcard API host", "", false, ":8443", ":3478"},
		{"IPv6 API host", "", false, "[::1]:8443", "[::1]:3478"},
		{"given", "10.0.0.1:3479", true, "127.0.0.2:8443", "10.0.0.1:3479"},
		{"off", "off", true, "127.0.0.2:8443", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := stunListen(tt.flag, tt.given, tt.api)
			if err != nil || got != tt.want {
				t.Fatalf("stunListen = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := stunListen("", false, "no-port"); err == nil {
		t.Fatal("a --listen without a port was accepted")
	}
}

// TestAPICA: `coordinator api-ca` prints the CA whose pin tokens carry, so
// a client verifying with it trusts exactly the coordinators tokens trust.
func TestAPICA(t *testing.T) {
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(path, []byte(key.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs([]string{"coordinator", "api-ca", "--cluster-key-file", path})
	if err := root.Execute(); err != nil {
		t.Fatalf("api-ca: %v (%s)", err, errOut.String())
	}
	block, rest := pem.Decode(out.Bytes())
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("api-ca printed %q; want one PEM certificate", out.String())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sha256.Sum256(cert.RawSubjectPublicKeyInfo), key.APICA().Pin(); got != want || !cert.IsCA {
		t.Fatalf("api-ca certificate pin %x (CA %t); want the tokens' pin %x", got, cert.IsCA, want)
	}
}

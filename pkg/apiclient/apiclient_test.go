package apiclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
)

// coordinator is a fake coordinator that refuses the client's protocol
// (as an older one would) or answers, and counts the calls it got.
type coordinator struct {
	srv   *httptest.Server
	calls atomic.Int32
}

func fakeCoordinator(t *testing.T, refuse bool) *coordinator {
	c := &coordinator{}
	c.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.calls.Add(1)
		if r.Header.Get(api.HeaderProtocol) != strconv.Itoa(api.ProtocolVersion) {
			t.Errorf("request without the protocol header")
		}
		w.Header().Set("Content-Type", "application/json")
		if refuse {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeProtocolTooNew, "this coordinator speaks protocol %d, the agent %d: upgrade the coordinators first", api.ProtocolVersion-1, api.ProtocolVersion)})
			return
		}
		w.Write([]byte("{}\n"))
	}))
	t.Cleanup(c.srv.Close)
	return c
}

// TestProtocolRefusal: a coordinator that refuses the client's protocol
// sends it on to the next (one may be upgraded already); the refusal is
// the answer only when every coordinator gave it, and a coordinator that
// did not answer at all may still speak the version (retry).
func TestProtocolRefusal(t *testing.T) {
	ctx := context.Background()
	old, current := fakeCoordinator(t, true), fakeCoordinator(t, false)
	pin := tlspin.Of(old.srv.Certificate()) // httptest servers share one certificate
	down := httptest.NewTLSServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	for _, tt := range []struct {
		name    string
		urls    []string
		refused bool // the protocol refusal is the answer
		ok      bool
	}{
		{name: "refused, then served", urls: []string{old.srv.URL, current.srv.URL}, ok: true},
		{name: "every one refuses", urls: []string{old.srv.URL, old.srv.URL}, refused: true},
		{name: "refused, the other down", urls: []string{old.srv.URL, downURL}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := New(tt.urls, pin, "")
			for _, call := range []struct {
				name string
				do   func() error
			}{
				{"Do", func() error { return c.Do(ctx, http.MethodGet, "/v1/relay", nil, nil) }},
				{"Stream", func() error {
					resp, err := c.Stream(ctx, "/v1/netmap")
					if err == nil {
						resp.Body.Close()
					}
					return err
				}},
			} {
				err := call.do()
				switch {
				case tt.ok && err != nil:
					t.Errorf("%s: %v; want served by the current coordinator", call.name, err)
				case tt.refused && !api.IsCode(err, api.CodeProtocolTooNew):
					t.Errorf("%s: %v; want the refusal", call.name, err)
				case !tt.ok && !tt.refused && (api.IsProtocol(err) || !errors.Is(err, ErrUnreachable)):
					t.Errorf("%s: %v; want %v (a retry may reach a coordinator that speaks it)", call.name, err, ErrUnreachable)
				}
			}
		})
	}
	if current.calls.Load() != 2 {
		t.Errorf("the current coordinator got %d calls; want 2 (one Do, one Stream)", current.calls.Load())
	}
}

// selfSigned is a TLS certificate of a key of its own: a server that is
// not a coordinator of the cluster whose pin the client holds.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestErrorsNameEveryCoordinator: when no coordinator serves a call, the
// error names each one tried with its own reason; a server whose
// certificate does not match the pin is called not a coordinator of this
// cluster.
func TestErrorsNameEveryCoordinator(t *testing.T) {
	busy := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeUnavailable, "coordinator c2 is catching up")})
	}))
	defer busy.Close()
	stray := httptest.NewUnstartedServer(http.NotFoundHandler())
	stray.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	stray.StartTLS()
	defer stray.Close()
	down := httptest.NewTLSServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()

	c := New([]string{downURL, stray.URL, busy.URL}, tlspin.Of(busy.Certificate()), "")
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"Do": func() error { return c.Do(ctx, http.MethodGet, "/v1/x", nil, nil) },
		"Stream": func() error {
			resp, err := c.Stream(ctx, "/v1/x")
			if err == nil {
				resp.Body.Close()
			}
			return err
		},
	} {
		err := call()
		var ue *UnreachableError
		if !errors.As(err, &ue) || !errors.Is(err, ErrUnreachable) || !api.IsCode(err, api.CodeUnavailable) {
			t.Fatalf("%s: %v; want an UnreachableError that matches %v and %s", name, err, ErrUnreachable, api.CodeUnavailable)
		}
		if len(ue.Attempts) != 3 {
			t.Fatalf("%s: %d attempts; want 3", name, len(ue.Attempts))
		}
		msg := err.Error()
		for _, want := range []string{
			downURL + ": dial tcp",
			"the server at " + stray.URL + " is not a coordinator of this cluster (its certificate does not match the pin in the token/admin credential)",
			busy.URL + ": coordinator c2 is catching up (unavailable)",
		} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %q lacks %q", name, msg, want)
			}
		}
		if strings.Count(msg, "\n") != 3 {
			t.Errorf("%s: %q; want a header line and one line per coordinator", name, msg)
		}
	}
}

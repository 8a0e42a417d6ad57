package controlclient

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// fakeJoin serves POST /v1/join; answer decides, per attempt, what to do.
func fakeJoin(t *testing.T, answer func(n int, req api.JoinRequest, w http.ResponseWriter)) (joinToken string) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.JoinRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("decode join: %v", err)
			return
		}
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		answer(k, req, w)
	}))
	t.Cleanup(srv.Close)
	tok, err := token.New(token.KindJoin, "tok1", tlspin.Of(srv.Certificate()), []string{srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return tok.String()
}

// credentialFor answers a join with a credential made of the secret the
// peer sent.
func credentialFor(t *testing.T, req api.JoinRequest, w http.ResponseWriter) {
	cred := &token.Token{Kind: token.KindPeer, ID: "peer1"}
	if req.CredentialSecret != "" {
		b, err := hex.DecodeString(req.CredentialSecret)
		if err != nil || len(b) != 32 {
			t.Errorf("credential secret %q", req.CredentialSecret)
		}
		copy(cred.Secret[:], b)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.JoinResponse{PeerID: "peer1", Name: req.Name, VNet: "default", OverlayIP: "100.96.0.1", Credential: cred.String()})
}

// TestJoinRepeatsLostAnswer: when the answer to a join is lost, the join is
// repeated with the same credential secret, which is what lets the
// coordinators give the identity back without a fresh token use.
func TestJoinRepeatsLostAnswer(t *testing.T) {
	var secrets []string
	joinToken := fakeJoin(t, func(n int, req api.JoinRequest, w http.ResponseWriter) {
		secrets = append(secrets, req.CredentialSecret)
		if n == 1 { // applied, but the answer never arrives
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		credentialFor(t, req, w)
	})
	id, _, err := Join(context.Background(), joinToken, api.JoinRequest{Name: "laptop", PublicKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets) != 2 || secrets[0] == "" || secrets[0] != secrets[1] {
		t.Fatalf("attempts carried secrets %q; want two attempts with one secret", secrets)
	}
	cred, err := token.ParseKind(id.Credential, token.KindPeer)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(cred.Secret[:]) != secrets[0] {
		t.Fatal("the saved credential is not the one the peer chose")
	}
}

// TestJoinOlderCoordinator: a coordinator that does not know
// credential_secret refuses it as an unknown field; the join is repeated
// without it.
func TestJoinOlderCoordinator(t *testing.T) {
	joinToken := fakeJoin(t, func(n int, req api.JoinRequest, w http.ResponseWriter) {
		if req.CredentialSecret != "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeInvalidJSON, `request body is not valid JSON for this call: json: unknown field "credential_secret"`)})
			return
		}
		credentialFor(t, req, w)
	})
	if _, _, err := Join(context.Background(), joinToken, api.JoinRequest{Name: "laptop", PublicKey: "k"}); err != nil {
		t.Fatal(err)
	}
}

// TestJoinRefusalNotRepeated: a refusal is an answer; it is not repeated.
func TestJoinRefusalNotRepeated(t *testing.T) {
	attempts := 0
	joinToken := fakeJoin(t, func(n int, req api.JoinRequest, w http.ResponseWriter) {
		attempts++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeTokenRevoked, "join token tok1 was revoked")})
	})
	_, _, err := Join(context.Background(), joinToken, api.JoinRequest{Name: "laptop", PublicKey: "k"})
	if !api.IsCode(err, api.CodeTokenRevoked) || attempts != 1 {
		t.Fatalf("got %v after %d attempts; want %s after 1", err, attempts, api.CodeTokenRevoked)
	}
}

package coordinator

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// The tests in this file are the attacks of issue 13's hardening findings,
// run against one coordinator through its public API.

func randomSecret() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// TestJoinRetryCannotStealIdentity: a join that repeats a victim's name
// and public key (every peer of the vnet sees both) with the token the
// victim joined with must not re-issue the victim's credential once that
// token is revoked, expired or used up. The victim's own repeat (the same
// credential secret, as after a lost answer) still gets its identity back.
func TestJoinRetryCannotStealIdentity(t *testing.T) {
	var skew atomic.Int64 // the coordinator's clock runs this far ahead
	srv, admin, _ := startSingleWith(t, func(c *Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		uses  int
		spoil func(t *testing.T, tok api.CreateTokenResponse)
		code  string
	}{
		{name: "revoked", uses: 5, code: api.CodeTokenRevoked, spoil: func(t *testing.T, tok api.CreateTokenResponse) {
			if err := admin.Do(ctx, http.MethodPost, "/v1/tokens/"+tok.ID+"/revoke", nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "used up", uses: 1, code: api.CodeTokenUsedUp},
		{name: "expired", uses: 5, code: api.CodeTokenExpired, spoil: func(*testing.T, api.CreateTokenResponse) {
			skew.Add(int64(61 * time.Second)) // past the token's 1m, within the retry window
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tok api.CreateTokenResponse
			if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: tt.uses, TTL: "1m"}, &tok); err != nil {
				t.Fatal(err)
			}
			name := "victim-" + tt.name[:4]
			victimReq := api.JoinRequest{Name: name, PublicKey: wgKey(), CredentialSecret: randomSecret()}
			victim, err := apiclient.Join(ctx, tok.Token, victimReq)
			if err != nil {
				t.Fatal(err)
			}
			if tt.spoil != nil {
				tt.spoil(t, tok)
			}
			before := srv.Store().Dump()
			// The attacker holds the token and read name and key from the map.
			stolen, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: victimReq.PublicKey})
			if !api.IsCode(err, tt.code) {
				t.Fatalf("attacker's join: got %+v, %v; want code %s", stolen, err, tt.code)
			}
			stolen, err = apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: victimReq.PublicKey, CredentialSecret: randomSecret()})
			if !api.IsCode(err, tt.code) {
				t.Fatalf("attacker's join with a secret of its own: got %+v, %v; want code %s", stolen, err, tt.code)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("a refused join changed the state")
			}
			vc := apiclient.New(admin.URLs(), srv.Pin(), victim.Credential)
			if err := vc.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{}, nil); err != nil {
				t.Fatalf("the victim's credential after the attack: %v; want it accepted", err)
			}
			// The victim's repeat of its own join (its answer lost) proves
			// the credential and gets the same identity.
			again, err := apiclient.Join(ctx, tok.Token, victimReq)
			if err != nil {
				t.Fatalf("the victim's repeated join: %v", err)
			}
			if again.PeerID != victim.PeerID || again.Credential != victim.Credential || again.OverlayIP != victim.OverlayIP {
				t.Fatalf("repeated join gave %s %s; want %s %s and the same credential", again.PeerID, again.OverlayIP, victim.PeerID, victim.OverlayIP)
			}
		})
	}

	t.Run("still valid token", func(t *testing.T) {
		// A repeat without the credential that takes a fresh use of a
		// valid token replaces the credential (peers that pick none).
		var tok api.CreateTokenResponse
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 2}, &tok); err != nil {
			t.Fatal(err)
		}
		req := api.JoinRequest{Name: "old-agent", PublicKey: wgKey()}
		first, err := apiclient.Join(ctx, tok.Token, req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := apiclient.Join(ctx, tok.Token, req)
		if err != nil || again.PeerID != first.PeerID {
			t.Fatalf("got %+v, %v; want the identity %s again", again, err, first.PeerID)
		}
		var toks []api.Token
		if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
			t.Fatal(err)
		}
		for _, x := range toks {
			if x.ID == tok.ID && x.UsesLeft != 0 {
				t.Fatalf("token has %d uses left; want 0 (the repeat took one)", x.UsesLeft)
			}
		}
	})
}

// joinPeer joins a peer with a fresh single-use token and returns its
// answer and a client holding its credential.
func joinPeer(t *testing.T, srv *Server, admin *apiclient.Client, name string, endpoints ...string) (*api.JoinResponse, *apiclient.Client) {
	t.Helper()
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
		t.Fatal(err)
	}
	j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: wgKey(), Endpoints: endpoints, OmitMap: true})
	if err != nil {
		t.Fatal(err)
	}
	return j, apiclient.New(admin.URLs(), srv.Pin(), j.Credential)
}

func peerEndpoints(srv *Server, id string) []string {
	var eps []string
	srv.Store().Read(func(t *state.Tables, _ uint64) {
		if p, ok := t.Peers[id]; ok {
			eps = slices.Clone(p.Endpoints)
		}
	})
	return eps
}

// TestEndpointsValidated: an endpoint no other peer can (or should) send
// WireGuard packets to is refused, in a heartbeat and in a join, and
// changes nothing.
func TestEndpointsValidated(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	j, pc := joinPeer(t, srv, admin, "roamer", "192.0.2.10:51820")
	for _, tt := range []struct {
		ep string
		ok bool
	}{
		{"127.0.0.1:22", false},
		{"127.1.2.3:51820", false},
		{"[::1]:51820", false},
		{"[::ffff:127.0.0.1]:51820", false},
		{"224.0.0.251:5353", false},
		{"[ff02::1]:51820", false},
		{"0.0.0.0:51820", false},
		{"0.1.2.3:51820", false},
		{"[::]:51820", false},
		{"169.254.1.1:51820", false},
		{"[fe80::1]:51820", false},
		{"255.255.255.255:51820", false},
		{"192.0.2.1:0", false},
		{"10.99.0.21:51820", true},
		{"192.168.1.20:41641", true},
		{"203.0.113.5:1", true},
		{"[2001:db8::1]:51820", true},
	} {
		t.Run(tt.ep, func(t *testing.T) {
			before := srv.Store().Dump()
			err := pc.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: []string{"192.0.2.10:51820", tt.ep}}, nil)
			if tt.ok {
				if err != nil {
					t.Fatalf("heartbeat with %s: %v; want it accepted", tt.ep, err)
				}
				return
			}
			if !api.IsCode(err, api.CodeInvalidArgument) || !strings.Contains(err.Error(), tt.ep) {
				t.Fatalf("heartbeat with %s: got %v; want %s naming the endpoint", tt.ep, err, api.CodeInvalidArgument)
			}
			if string(srv.Store().Dump()) != string(before) {
				t.Fatal("a refused heartbeat changed the state")
			}
			var tok api.CreateTokenResponse
			if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok); err != nil {
				t.Fatal(err)
			}
			_, err = apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "bad-ep", PublicKey: wgKey(), Endpoints: []string{tt.ep}})
			if !api.IsCode(err, api.CodeInvalidArgument) {
				t.Fatalf("join with %s: got %v; want %s", tt.ep, err, api.CodeInvalidArgument)
			}
		})
	}
	_ = j
}

// TestHeartbeatWritesRateLimited: 200 heartbeats, each with a new
// endpoint, cost a handful of Raft writes instead of 200; the latest
// endpoint is in the state within about a second; a change after a quiet
// spell (a laptop that roamed) is written before the heartbeat is
// answered; an unchanged heartbeat writes nothing.
func TestHeartbeatWritesRateLimited(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	j, pc := joinPeer(t, srv, admin, "roamer", "192.0.2.10:51820")
	beat := func(eps ...string) {
		t.Helper()
		if err := pc.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: eps}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Let the join's own writes (watch marks, last seen) settle.
	waitFor(t, 10*time.Second, "the peer's first endpoint write to be an interval old", func() bool {
		srv.reportMu.Lock()
		defer srv.reportMu.Unlock()
		return len(srv.reports) == 0
	})

	// Map changes, not the Raft index: background writes that change no
	// map (last-seen times, watch marks) may land meanwhile.
	before := srv.Store().MapChanges()
	beat("192.0.2.10:51820") // unchanged
	if got := srv.Store().MapChanges(); got != before {
		t.Fatalf("an unchanged heartbeat made %d map changes; want none", got-before)
	}

	// Roaming: the first change is written before the answer.
	beforeIdx := srv.Raft().AppliedIndex()
	beat("198.51.100.7:51820")
	if got := peerEndpoints(srv, j.PeerID); !slices.Equal(got, []string{"198.51.100.7:51820"}) {
		t.Fatalf("endpoints right after the first change: %v; want the new one", got)
	}

	start := time.Now()
	const n = 200
	last := ""
	for i := range n {
		last = fmt.Sprintf("203.0.113.%d:%d", i%250+1, 40000+i)
		beat(last)
	}
	took := time.Since(start)
	waitFor(t, 3*time.Second, "the latest endpoint to be written", func() bool {
		return slices.Equal(peerEndpoints(srv, j.PeerID), []string{last})
	})
	landed := time.Since(start) - took
	writes := srv.Raft().AppliedIndex() - beforeIdx
	// One write a second, plus the first change, plus the odd batch of
	// last-seen times.
	if limit := uint64(took/endpointWriteEvery) + 6; writes > limit {
		t.Fatalf("%d heartbeats with changing endpoints over %s made %d Raft writes; want at most %d", n, took.Round(time.Millisecond), writes, limit)
	}
	if landed > 1500*time.Millisecond {
		t.Fatalf("the latest endpoint was written %s after the last heartbeat; want within about %s", landed, endpointWriteEvery)
	}
	t.Logf("%d heartbeats in %s: %d Raft writes; latest endpoint written %s after the last", n, took.Round(time.Millisecond), writes, landed.Round(time.Millisecond))
}

// dialAPI opens a TLS connection to the API that speaks HTTP/1.1.
func dialAPI(t *testing.T, srv *Server) *tls.Conn {
	t.Helper()
	u, _ := url.Parse(srv.APIURL())
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", u.Host, tlspin.ClientConfig(srv.Pin()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAPITimeouts: a request body trickled a byte at a time is cut off, an
// idle kept-alive connection is closed, and a network-map watch outlives
// both limits.
func TestAPITimeouts(t *testing.T) {
	const limit = 500 * time.Millisecond
	srv, admin, _ := startSingleWith(t, func(c *Config) { c.APIReadTimeout, c.APIIdleTimeout = limit, limit })
	ctx := context.Background()

	t.Run("trickled body", func(t *testing.T) {
		before := srv.Store().Dump()
		c := dialAPI(t, srv)
		start := time.Now()
		fmt.Fprintf(c, "POST /v1/vnets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{", admin.Auth())
		stop := make(chan struct{})
		defer close(stop)
		go func() { // a byte every 100 ms, until the server hangs up
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := c.Write([]byte(" ")); err != nil {
						return
					}
				}
			}
		}()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		took := time.Since(start)
		if err == nil {
			resp.Body.Close()
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a body trickled a byte every 100 ms was still being read after %s; want it cut off after about %s", took.Round(time.Millisecond), limit)
		}
		if took > 4*limit {
			t.Fatalf("the trickled request ended after %s; want about %s", took.Round(time.Millisecond), limit)
		}
		if err == nil && resp.StatusCode < 400 {
			t.Fatalf("status %d; want an error", resp.StatusCode)
		}
		if string(srv.Store().Dump()) != string(before) {
			t.Fatal("the cut-off request changed the state")
		}
		t.Logf("trickled request ended after %s (%v)", took.Round(time.Millisecond), err)
	})

	t.Run("idle connection", func(t *testing.T) {
		c := dialAPI(t, srv)
		fmt.Fprint(c, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		start := time.Now()
		_, err = br.ReadByte()
		if took := time.Since(start); err == nil || took > 4*limit {
			t.Fatalf("idle kept-alive connection: read gave %v after %s; want it closed after about %s", err, took.Round(time.Millisecond), limit)
		}
	})

	t.Run("watch outlives the limits", func(t *testing.T) {
		_, pc := joinPeer(t, srv, admin, "watcher")
		resp, err := pc.Stream(ctx, "/v1/netmap")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := make(chan api.MapUpdate, 16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var u api.MapUpdate
				if json.Unmarshal(sc.Bytes(), &u) == nil {
					lines <- u
				}
			}
		}()
		if _, ok := <-lines; !ok {
			t.Fatal("watch ended before its first map")
		}
		// Three read timeouts and an idle timeout pass with nothing on
		// the stream; then a change must still arrive.
		select {
		case _, ok := <-lines:
			if !ok {
				t.Fatalf("the watch ended within %s", 3*limit)
			}
		case <-time.After(3 * limit):
		}
		newcomer, _ := joinPeer(t, srv, admin, "newcomer")
		deadline := time.After(5 * time.Second)
		for {
			select {
			case u, ok := <-lines:
				if !ok {
					t.Fatal("the watch ended instead of carrying the change")
				}
				for _, p := range u.Peers {
					if p.ID == newcomer.PeerID {
						return
					}
				}
			case <-deadline:
				t.Fatal("the change did not reach the watch")
			}
		}
	})
}

// TestWatchCapPerCredential: one peer credential holds at most
// maxWatchesPerPeer watches; one more is refused while the others are
// young, and ends the oldest once that has been open for a while (the
// half-dead stream of an agent that reconnected).
func TestWatchCapPerCredential(t *testing.T) {
	srv, admin := startSingle(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, pc := joinPeer(t, srv, admin, "greedy")
	type stream struct {
		body  io.ReadCloser
		ended chan struct{}
	}
	open := func() (*stream, error) {
		resp, err := pc.Stream(ctx, "/v1/netmap")
		if err != nil {
			return nil, err
		}
		st := &stream{body: resp.Body, ended: make(chan struct{})}
		br := bufio.NewReader(resp.Body)
		if _, err := br.ReadBytes('\n'); err != nil {
			t.Fatalf("first map: %v", err)
		}
		go func() { io.Copy(io.Discard, br); close(st.ended) }()
		t.Cleanup(func() { resp.Body.Close() })
		return st, nil
	}
	var streams []*stream
	for i := range maxWatchesPerPeer {
		st, err := open()
		if err != nil {
			t.Fatalf("watch %d: %v", i+1, err)
		}
		streams = append(streams, st)
	}
	if _, err := open(); !api.IsCode(err, api.CodeTooMany) {
		t.Fatalf("watch %d while the others are young: got %v; want %s", maxWatchesPerPeer+1, err, api.CodeTooMany)
	}
	status, e := rawCall(t, srv, http.MethodGet, "/v1/netmap", nil, pc.Auth())
	if status != http.StatusTooManyRequests || e == nil || e.Code != api.CodeTooMany {
		t.Fatalf("got %d %+v; want 429 %s", status, e, api.CodeTooMany)
	}
	// The others grow old enough to be taken for abandoned.
	srv.watchMu.Lock()
	srv.watchEvictAfter = 0
	srv.watchMu.Unlock()
	if _, err := open(); err != nil {
		t.Fatalf("a watch past the cap once the oldest is old: %v; want it accepted", err)
	}
	select {
	case <-streams[0].ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the oldest watch was not ended")
	}
	for i, st := range streams[1:] {
		select {
		case <-st.ended:
			t.Fatalf("watch %d ended; want only the oldest to make way", i+2)
		default:
		}
	}
	srv.watchMu.Lock()
	n := len(srv.watches[peerIDOf(t, pc.Auth())])
	srv.watchMu.Unlock()
	if n != maxWatchesPerPeer {
		t.Fatalf("%d watches registered; want %d", n, maxWatchesPerPeer)
	}
}

func peerIDOf(t *testing.T, cred string) string {
	t.Helper()
	tok, err := token.ParseKind(cred, token.KindPeer)
	if err != nil {
		t.Fatal(err)
	}
	return tok.ID
}

// Package apiclient talks to the coordinators' HTTPS API: it verifies their
// TLS identity against the pin carried by every meshd token, and moves on to
// the next coordinator it knows when one does not answer.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/tlspin"
	"github.com/meshd/meshd/pkg/token"
)

// Client calls the coordinator API.
type Client struct {
	hc   *http.Client // no overall timeout: watches are long-lived
	auth string

	mu   sync.Mutex
	urls []string // guarded by mu
	cur  int      // guarded by mu: index of the coordinator that last answered
}

// New returns a client for urls whose coordinators must match pin. auth, if
// not empty, is sent as the bearer credential.
func New(urls []string, pin [32]byte, auth string) *Client {
	tr := &http.Transport{
		TLSClientConfig:     tlspin.ClientConfig(pin),
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr}, auth: auth, urls: append([]string(nil), urls...)}
}

// FromToken returns a client that uses the coordinators and pin of tok and
// authenticates with it.
func FromToken(tok string) (*Client, *token.Token, error) {
	t, err := token.Parse(tok)
	if err != nil {
		return nil, nil, err
	}
	return New(t.URLs, t.Pin, tok), t, nil
}

// SetDialContext replaces how the client opens connections (tests and
// benchmarks that reach coordinators inside a network namespace).
func (c *Client) SetDialContext(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	c.hc.Transport.(*http.Transport).DialContext = dial
}

// CloseIdle closes the client's idle connections.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

// Auth is the credential the client sends.
func (c *Client) Auth() string { return c.auth }

// SetURLs replaces the coordinators the client knows (from a network map).
func (c *Client) SetURLs(urls []string) {
	if len(urls) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := ""
	if c.cur < len(c.urls) {
		cur = c.urls[c.cur]
	}
	c.urls = append([]string(nil), urls...)
	c.cur = 0
	for i, u := range c.urls {
		if u == cur {
			c.cur = i
		}
	}
}

// URLs returns the coordinators the client knows, the current one first.
func (c *Client) URLs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.urls))
	for i := range c.urls {
		out = append(out, c.urls[(c.cur+i)%len(c.urls)])
	}
	return out
}

func (c *Client) setCurrent(u string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.urls {
		if x == u {
			c.cur = i
		}
	}
}

// AttemptTimeout bounds one request to one coordinator.
var AttemptTimeout = 10 * time.Second

// ErrUnreachable wraps the last failure when no coordinator answered.
var ErrUnreachable = errors.New("no coordinator reachable")

// nextOnError reports whether an answer from one coordinator sends the
// client on to the next: it was unavailable, or it does not speak the
// client's protocol (another may be upgraded already, in a rolling upgrade).
func nextOnError(ae *api.Error) bool {
	return ae.Code == api.CodeUnavailable || api.IsProtocol(ae)
}

// Do sends a request with a JSON body in (nil for none) and decodes a JSON
// answer into out (nil to discard). API errors come back as *api.Error; when
// a coordinator cannot be reached, is unavailable or does not speak this
// protocol version, the next is tried.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	urls := c.URLs()
	if len(urls) == 0 {
		return fmt.Errorf("%w: no coordinator address known", ErrUnreachable)
	}
	var attempts []Attempt
	refused := 0
	for _, u := range urls {
		err := c.once(ctx, u, method, path, body, out)
		if err == nil {
			c.setCurrent(u)
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && !nextOnError(ae) {
			c.setCurrent(u)
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if api.IsProtocol(err) {
			refused++
		}
		attempts = append(attempts, Attempt{URL: u, Err: err})
	}
	// A protocol refusal is the answer only when every coordinator gave
	// it: one that did not answer may speak this version already.
	if refused == len(urls) {
		return attempts[len(attempts)-1].Err
	}
	return &UnreachableError{Attempts: attempts}
}

// Attempt is one coordinator tried and why it did not serve the call.
type Attempt struct {
	URL string
	Err error
}

// UnreachableError says that no coordinator served a call, and why each
// did not. It matches ErrUnreachable (errors.Is) and each attempt's error
// but a protocol refusal: that one is the answer only when every
// coordinator gave it (api.IsProtocol is false, as a retry may reach one
// that speaks the version).
type UnreachableError struct {
	Attempts []Attempt
}

func (e *UnreachableError) Error() string {
	if len(e.Attempts) == 1 {
		a := e.Attempts[0]
		return fmt.Sprintf("%v: %s", ErrUnreachable, Describe(a.URL, a.Err))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%v; tried %d:", ErrUnreachable, len(e.Attempts))
	for _, a := range e.Attempts {
		fmt.Fprintf(&b, "\n  %s", Describe(a.URL, a.Err))
	}
	return b.String()
}

// Unwrap gives ErrUnreachable and every attempt's error but protocol
// refusals.
func (e *UnreachableError) Unwrap() []error {
	out := []error{ErrUnreachable}
	for _, a := range e.Attempts {
		if !api.IsProtocol(a.Err) {
			out = append(out, a.Err)
		}
	}
	return out
}

// Describe says in a line why the coordinator at url did not serve a
// call: "https://10.0.0.1:8443: connect: connection refused". A server
// whose certificate does not match the pin is most often something else
// listening on that address (a stray host, another cluster's
// coordinator), so it is described as that and not as an attack.
func Describe(url string, err error) string {
	var ae *api.Error
	var ue *neturl.Error
	switch {
	case errors.Is(err, tlspin.ErrMismatch):
		return fmt.Sprintf("the server at %s is not a coordinator of this cluster (its certificate does not match the pin in the token/admin credential)", url)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("%s: no answer within %s", url, AttemptTimeout)
	case errors.As(err, &ae):
		return fmt.Sprintf("%s: %s (%s)", url, ae.Message, ae.Code)
	case errors.As(err, &ue):
		// "Get \"https://...\": dial tcp ...": the URL once is enough.
		return fmt.Sprintf("%s: %v", url, ue.Err)
	}
	return fmt.Sprintf("%s: %v", url, err)
}

func (c *Client) newRequest(ctx context.Context, base, method, path string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(api.HeaderProtocol, strconv.Itoa(api.ProtocolVersion))
	if c.auth != "" {
		req.Header.Set("Authorization", "Bearer "+c.auth)
	}
	return req, nil
}

func (c *Client) once(ctx context.Context, base, method, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, AttemptTimeout)
	defer cancel()
	req, err := c.newRequest(ctx, base, method, path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out)
}

func decodeResponse(resp *http.Response, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != nil {
			return eb.Error
		}
		return api.Errorf(api.CodeUnavailable, "coordinator answered %s", resp.Status)
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// Stream opens a long-lived GET (a network-map watch) on the first
// coordinator that answers with 200 and returns the response; the caller
// reads and closes its body.
func (c *Client) Stream(ctx context.Context, path string) (*http.Response, error) {
	var attempts []Attempt
	refused := 0
	urls := c.URLs()
	if len(urls) == 0 {
		return nil, fmt.Errorf("%w: no coordinator address known", ErrUnreachable)
	}
	for _, u := range urls {
		req, err := c.newRequest(ctx, u, http.MethodGet, path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			attempts = append(attempts, Attempt{URL: u, Err: err})
			continue
		}
		if resp.StatusCode != http.StatusOK {
			err := decodeResponse(resp, nil)
			resp.Body.Close()
			var ae *api.Error
			if errors.As(err, &ae) && !nextOnError(ae) {
				return nil, err
			}
			if api.IsProtocol(err) {
				refused++
			}
			attempts = append(attempts, Attempt{URL: u, Err: err})
			continue
		}
		c.setCurrent(u)
		return resp, nil
	}
	if refused == len(urls) { // as in Do
		return nil, attempts[len(attempts)-1].Err
	}
	return nil, &UnreachableError{Attempts: attempts}
}

// Join presents a join token and returns the new peer's identity.
func Join(ctx context.Context, joinToken string, req api.JoinRequest) (*api.JoinResponse, error) {
	t, err := token.ParseKind(joinToken, token.KindJoin)
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	c := New(t.URLs, t.Pin, "")
	req.Token = joinToken
	req.ProtocolVersion = api.ProtocolVersion
	var resp api.JoinResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/join", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

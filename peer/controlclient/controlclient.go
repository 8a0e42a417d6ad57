// Package controlclient is the peer's side of the coordinator API: it joins
// with a token, keeps the peer's identity in its state dir, holds the
// network-map watch (resuming from the last index it saw) and reports
// heartbeats and endpoints.
package controlclient

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

// Files in the state dir. Both are written with mode 0600.
const (
	KeyFile      = "private.key"
	IdentityFile = "identity.json"
)

// Errors that end the agent rather than being retried.
var (
	// ErrRemoved: the coordinators removed this peer.
	ErrRemoved = errors.New("this peer was removed from the mesh by an administrator; join again with a new token to come back")
	// ErrCredentialRefused: the coordinators no longer accept this peer's
	// credential (removed while the agent was down, or another cluster).
	ErrCredentialRefused = errors.New("the coordinators refused this peer's credential: it was removed or belongs to another cluster; remove the state dir and join again with a new token")
	// ErrProtocol: every coordinator refused this agent's protocol
	// version. The error wraps the coordinator's *api.Error, which says
	// which side to upgrade (api.CodeProtocolTooNew: the coordinators).
	ErrProtocol = errors.New("the coordinators refused this agent's protocol version")
)

// protocolRefused turns a coordinator's refusal of this agent's protocol
// version into an error wrapping ErrProtocol and the refusal; other errors
// pass unchanged.
func protocolRefused(err error) error {
	if !api.IsProtocol(err) {
		return err
	}
	return fmt.Errorf("%w %d: %w", ErrProtocol, api.ProtocolVersion, err)
}

// WatchIdleTimeout ends a watch that has been silent for this long; the
// coordinators send a keepalive line every 15 s.
const WatchIdleTimeout = 40 * time.Second

// Identity is what a peer keeps between runs: with it, a restart needs no
// token and comes back with the same key and overlay address.
type Identity struct {
	PeerID    string `json:"peer_id"`
	Name      string `json:"name"`
	VNet      string `json:"vnet"`
	OverlayIP string `json:"overlay_ip"`
	Overlay   string `json:"overlay"`
	// OverlayIP6 and Overlay6 are set in a dual-stack vnet.
	OverlayIP6   string   `json:"overlay_ip6,omitempty"`
	Overlay6     string   `json:"overlay6,omitempty"`
	Credential   string   `json:"credential"`
	Coordinators []string `json:"coordinators"`
}

// LoadIdentity reads the identity in dir; an error wrapping os.ErrNotExist
// means the peer has not joined yet.
func LoadIdentity(dir string) (*Identity, error) {
	b, err := os.ReadFile(filepath.Join(dir, IdentityFile))
	if err != nil {
		return nil, err
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, IdentityFile), err)
	}
	if _, err := token.ParseKind(id.Credential, token.KindPeer); err != nil {
		return nil, fmt.Errorf("read %s: credential: %w", filepath.Join(dir, IdentityFile), err)
	}
	return &id, nil
}

// Save writes the identity to dir.
func (id *Identity) Save(dir string) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(filepath.Join(dir, IdentityFile), append(b, '\n'))
}

// WriteFile writes a private file (0600) atomically.
func WriteFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// JoinRetryFor is how long Join keeps repeating a join whose outcome is
// unknown (no coordinator answered, or the answer was lost).
var JoinRetryFor = 30 * time.Second

// Join presents joinToken and returns the identity to save and the first
// network map.
//
// The peer picks its credential's secret itself (unless req carries one)
// and sends the same one with every attempt: a join whose answer was lost
// is repeated, on this coordinator or another, until one answers or
// JoinRetryFor has passed, and the repeat proves it comes from the peer
// that joined, so it gets the same identity back even from a single-use
// token that the lost attempt used up.
func Join(ctx context.Context, joinToken string, req api.JoinRequest) (*Identity, *api.JoinResponse, error) {
	tok, err := token.ParseKind(joinToken, token.KindJoin)
	if err != nil {
		return nil, nil, fmt.Errorf("join token: %w", err)
	}
	if req.CredentialSecret == "" {
		var secret [32]byte
		if _, err := rand.Read(secret[:]); err != nil {
			return nil, nil, err
		}
		req.CredentialSecret = hex.EncodeToString(secret[:])
	}
	resp, err := joinRetrying(ctx, joinToken, req)
	if err != nil {
		return nil, nil, fmt.Errorf("join: %w", protocolRefused(err))
	}
	id := &Identity{
		PeerID: resp.PeerID, Name: resp.Name, VNet: resp.VNet, OverlayIP: resp.OverlayIP,
		Overlay: resp.Overlay, OverlayIP6: resp.OverlayIP6, Overlay6: resp.Overlay6, Credential: resp.Credential, Coordinators: tok.URLs,
	}
	if resp.Map != nil && len(resp.Map.Coordinators) > 0 {
		id.Coordinators = resp.Map.Coordinators
	}
	return id, resp, nil
}

// joinRetrying repeats the join with the same request while no coordinator
// gives an answer, for up to JoinRetryFor.
func joinRetrying(ctx context.Context, joinToken string, req api.JoinRequest) (*api.JoinResponse, error) {
	deadline := time.Now().Add(JoinRetryFor)
	backoff := 250 * time.Millisecond
	for {
		resp, err := apiclient.Join(ctx, joinToken, req)
		if err != nil && req.CredentialSecret != "" && api.IsCode(err, api.CodeInvalidJSON) && strings.Contains(err.Error(), "credential_secret") {
			// A coordinator from before credential_secret: it picks
			// the credential, and a repeat needs a valid token.
			req.CredentialSecret = ""
			continue
		}
		var ae *api.Error
		if err == nil || errors.As(err, &ae) && ae.Code != api.CodeUnavailable || ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 4*time.Second)
	}
}

// Client talks to the coordinators as one joined peer.
type Client struct {
	api *apiclient.Client
	pin [32]byte
}

// New returns a client for the peer id.
func New(id *Identity) (*Client, error) {
	cred, err := token.ParseKind(id.Credential, token.KindPeer)
	if err != nil {
		return nil, fmt.Errorf("peer credential: %w", err)
	}
	return &Client{api: apiclient.New(id.Coordinators, cred.Pin, id.Credential), pin: cred.Pin}, nil
}

// Pin is the coordinators' TLS identity pin (their relays over TLS use
// the same certificate).
func (c *Client) Pin() [32]byte { return c.pin }

// Relay fetches the relays this peer may use and its credential for them.
func (c *Client) Relay(ctx context.Context) (*api.RelayConfig, error) {
	var out api.RelayConfig
	err := c.api.Do(ctx, http.MethodGet, "/v1/relay", nil, &out)
	if api.IsCode(err, api.CodeUnauthorized) {
		return nil, ErrCredentialRefused
	}
	if err != nil {
		return nil, protocolRefused(err)
	}
	return &out, nil
}

// SetCoordinators replaces the coordinator URLs the client tries.
func (c *Client) SetCoordinators(urls []string) { c.api.SetURLs(urls) }

// Coordinators returns the URLs the client knows, the one in use first.
func (c *Client) Coordinators() []string { return c.api.URLs() }

// Heartbeat tells the coordinators the peer is alive; endpoints, when not
// nil, replace the endpoints it reported before.
// relay, when not nil, replaces its relayed address.
func (c *Client) Heartbeat(ctx context.Context, endpoints []string, relay *string) error {
	err := c.api.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: endpoints, Relay: relay}, nil)
	if api.IsCode(err, api.CodeUnauthorized) {
		return ErrCredentialRefused
	}
	return protocolRefused(err)
}

// Watch holds one network-map stream that resumes after index since (0: the
// whole map first) and calls fn with every update, in order, until the
// stream ends or ctx is done. It returns ErrRemoved when the peer was removed,
// ErrCredentialRefused when its credential is refused and ErrProtocol when
// every coordinator refuses this agent's protocol version; other errors are
// worth retrying.
func (c *Client) Watch(ctx context.Context, since uint64, fn func(*api.MapUpdate)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Large deltas (a fleet joining at once) come deflated.
	path := "/v1/netmap?" + api.WatchCompressParam + "=1"
	if since > 0 {
		path += "&since=" + strconv.FormatUint(since, 10)
	}
	resp, err := c.api.Stream(ctx, path)
	if err != nil {
		if api.IsCode(err, api.CodeUnauthorized) {
			return ErrCredentialRefused
		}
		return protocolRefused(err)
	}
	defer resp.Body.Close()
	// A stream that stays silent past the keepalive interval is dead.
	idle := time.AfterFunc(WatchIdleTimeout, cancel)
	defer idle.Stop()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), api.MaxUpdateBytes)
	for sc.Scan() {
		idle.Reset(WatchIdleTimeout)
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		line, err := api.ExpandLine(line)
		if err != nil {
			return fmt.Errorf("network map: %w", err)
		}
		var upd api.MapUpdate
		if err := json.Unmarshal(line, &upd); err != nil {
			return fmt.Errorf("network map: %w", err)
		}
		if upd.SelfRemoved {
			return ErrRemoved
		}
		fn(&upd)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("network map stream: %w", err)
	}
	return errors.New("network map stream ended")
}

// Leave removes this peer from the mesh (DELETE /v1/self): its credential
// stops working and every other peer drops it. A peer that never came up
// (it never opened its network-map watch) leaves soon after its join gives
// the join token its use back. ErrCredentialRefused means it was gone
// already.
func (c *Client) Leave(ctx context.Context) error {
	err := c.api.Do(ctx, http.MethodDelete, "/v1/self", nil, nil)
	if api.IsCode(err, api.CodeUnauthorized) {
		return ErrCredentialRefused
	}
	return err
}

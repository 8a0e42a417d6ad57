// Package api holds the wire types shared by the coordinators, the peers and
// the admin CLI, the protocol version, and the API error type with its stable
// codes.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// ProtocolVersion is the version of the coordinator/peer protocol. A peer
// sends it with every request (HeaderProtocol) and in its join; a
// coordinator serves agents from MinProtocolVersion to ProtocolVersion
// (CheckProtocol), so agents may lag the coordinators by a version, and
// refuses newer ones: coordinators are upgraded first. It grows when an
// agent starts to rely on something older coordinators lack.
const ProtocolVersion = 1

// MinProtocolVersion is the oldest agent protocol coordinators of this
// version still serve.
const MinProtocolVersion = 1

// HeaderProtocol carries ProtocolVersion on every request.
const HeaderProtocol = "Meshd-Protocol"

// MaxBodyBytes caps every request body the API accepts.
const MaxBodyBytes = 64 << 10

// DefaultVNet is the vnet that exists from bootstrap, with DefaultOverlay.
const (
	DefaultVNet    = "default"
	DefaultOverlay = "100.96.0.0/12"
)

// Roles of a peer.
const (
	RoleClient  = "client"
	RoleGateway = "gateway"
	// RoleDevice is a peer without the agent (meshd peer export): a
	// stock WireGuard client. It announces no routes, sends no health
	// gossip nor probes, and its endpoint is learned from its packets.
	RoleDevice = "device"
)

// Error codes: stable strings a program can switch on. The message beside
// them is for people.
const (
	CodeBadRequest       = "bad_request"
	CodeInvalidJSON      = "invalid_json"
	CodeBodyTooLarge     = "body_too_large"
	CodeInvalidName      = "invalid_name"
	CodeInvalidCIDR      = "invalid_cidr"
	CodeInvalidKey       = "invalid_key"
	CodeInvalidArgument  = "invalid_argument"
	CodeOverlap          = "overlap"
	CodeConflict         = "conflict"
	CodeNotFound         = "not_found"
	CodeUnauthorized     = "unauthorized"
	CodeForbidden        = "forbidden"
	CodeTokenUnknown     = "token_unknown"
	CodeTokenExpired     = "token_expired"
	CodeTokenRevoked     = "token_revoked"
	CodeTokenUsedUp      = "token_used_up"
	CodeVNetDeleted      = "vnet_deleted"
	CodeRouteNotAllowed  = "route_not_allowed"
	CodeExhausted        = "address_pool_exhausted"
	CodeVersion          = "unsupported_protocol"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeTooMany: a limit on concurrent or repeated requests was reached;
	// retry after a moment.
	CodeTooMany = "too_many_requests"
	// CodeProtocolTooNew: the agent speaks a newer protocol than the
	// coordinator; upgrade the coordinators first. (CodeVersion: older
	// than the coordinator still serves; coordinators from before
	// MinProtocolVersion answer it to newer agents too.)
	CodeProtocolTooNew = "protocol_too_new"
	// CodeUpgradeRequired: a coordinator of the cluster runs a version
	// that cannot apply the command asked for (Error.Coordinators names
	// them); upgrade every coordinator first.
	CodeUpgradeRequired = "upgrade_required"
	// CodeStorageFailed: a coordinator could not write its Raft log (its
	// disk is full or failing); the write was not made. HTTP 507.
	CodeStorageFailed = "storage_failed"
	// CodeOutcomeUnknown: a write was handed to Raft (or passed on to the
	// leader) but its answer was lost: leadership moved, the leader went
	// quiet or no answer came in time. It may or may not have been made;
	// read (list) to check before retrying. HTTP 503. (CodeUnavailable
	// says nothing was changed: retrying is safe.)
	CodeOutcomeUnknown = "outcome_unknown"
)

// Error is an API error: a stable code and a sentence a user can act on.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Details lists the problems one by one when there are several (a
	// policy's, each naming its rule and field); optional.
	Details []string `json:"details,omitempty"`
	// Coordinators names the coordinators an error is about (those to
	// upgrade, with CodeUpgradeRequired); optional.
	Coordinators []string `json:"coordinators,omitempty"`
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return e.Message }

// Status is the HTTP status that carries the error.
func (e *Error) Status() int {
	switch e.Code {
	case CodeUnauthorized, CodeTokenUnknown, CodeTokenExpired, CodeTokenRevoked, CodeTokenUsedUp:
		return http.StatusUnauthorized
	case CodeForbidden, CodeRouteNotAllowed:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict, CodeOverlap, CodeVNetDeleted, CodeExhausted, CodeUpgradeRequired, CodeCatchingUp, CodeAlreadyRevoked:
		return http.StatusConflict
	case CodeBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeTooMany:
		return http.StatusTooManyRequests
	case CodeUnavailable, CodeOutcomeUnknown:
		return http.StatusServiceUnavailable
	case CodeInternal:
		return http.StatusInternalServerError
	case CodeStorageFailed:
		return http.StatusInsufficientStorage
	default:
		return http.StatusBadRequest
	}
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// VNet is a virtual network.
type VNet struct {
	Name      string    `json:"name"`
	Overlay   string    `json:"overlay"`
	CreatedAt time.Time `json:"created_at"`
	Peers     int       `json:"peers"`
	// Overlay6 is the IPv6 overlay of a dual-stack vnet (Overlay is then
	// the IPv4 one); absent otherwise.
	Overlay6 string `json:"overlay6,omitempty"`
}

// CreateVNetRequest creates a vnet. Overlay is one CIDR, or an IPv4 and
// an IPv6 CIDR separated by a comma (dual-stack); a coordinator from
// before IPv6 overlays refuses the list rather than drop a part of it.
type CreateVNetRequest struct {
	Name    string `json:"name"`
	Overlay string `json:"overlay"`
}

// Route is one subnet announcement by one gateway.
type Route struct {
	Prefix   string `json:"prefix"`
	Priority int    `json:"priority"`
}

// Token is a join token as listed: never its secret.
type Token struct {
	ID          string    `json:"id"`
	VNet        string    `json:"vnet"`
	Uses        int       `json:"uses"`
	UsesLeft    int       `json:"uses_left"`
	Expires     time.Time `json:"expires"`
	Tags        []string  `json:"tags"`
	AllowRoutes []string  `json:"allow_routes"`
	Ephemeral   bool      `json:"ephemeral"`
	Revoked     bool      `json:"revoked"`
	Expired     bool      `json:"expired"`
	CreatedAt   time.Time `json:"created_at"`
	// MaxPriority is the highest route priority a gateway joining with it
	// may claim; absent: no cap.
	MaxPriority *int `json:"max_priority,omitempty"`
	// CreatedBy names the admin credential that created it; absent for
	// tokens created before this was recorded.
	CreatedBy string `json:"created_by,omitempty"`
}

// CreateTokenRequest asks for a join token. Zero Uses means 1; an empty TTL
// means 24h.
type CreateTokenRequest struct {
	VNet        string   `json:"vnet"`
	Uses        int      `json:"uses"`
	TTL         string   `json:"ttl"`
	Tags        []string `json:"tags"`
	AllowRoutes []string `json:"allow_routes"`
	Ephemeral   bool     `json:"ephemeral"`
	// MaxPriority caps the route priority a gateway joining with the
	// token may claim (a join announcing more is refused); nil: no cap.
	// Sent only when set, so a coordinator that predates it is asked
	// nothing it would ignore.
	MaxPriority *int `json:"max_priority,omitempty"`
}

// AdminToken is a named admin credential as listed: never its secret.
// Bootstrap marks the credential DATA_DIR/admin.token holds (id and name
// "admin").
type AdminToken struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	ReadOnly  bool       `json:"read_only"`
	Bootstrap bool       `json:"bootstrap,omitempty"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
	CreatedBy string     `json:"created_by,omitempty"`
	Revoked   bool       `json:"revoked"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
}

// CreateAdminTokenRequest asks for a named admin credential; ReadOnly
// ones may call only the admin endpoints that change nothing (GET).
type CreateAdminTokenRequest struct {
	Name     string `json:"name"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// CreateAdminTokenResponse carries the admin credential, shown once: the
// cluster keeps only its hash.
type CreateAdminTokenResponse struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	ReadOnly bool   `json:"read_only"`
	Token    string `json:"token"`
}

// CreateTokenResponse carries the opaque token string, shown once.
type CreateTokenResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// Peer is a peer as the admin sees it.
type Peer struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	VNet      string `json:"vnet"`
	Role      string `json:"role"`
	PublicKey string `json:"public_key"`
	OverlayIP string `json:"overlay_ip"`
	// OverlayIP6 is the peer's IPv6 address in a dual-stack vnet.
	OverlayIP6 string    `json:"overlay_ip6,omitempty"`
	Online     bool      `json:"online"`
	Routes     []Route   `json:"routes"`
	Endpoints  []string  `json:"endpoints"`
	Tags       []string  `json:"tags"`
	Ephemeral  bool      `json:"ephemeral"`
	CreatedAt  time.Time `json:"created_at"`
	LastSeen   time.Time `json:"last_seen"`
	Drained    bool      `json:"drained,omitempty"`
	// GatewayState is a gateway's state across its routes (package
	// gateway, Summary): active when it carries any, else offline,
	// unhealthy, drained or standby. Empty for a peer without routes.
	GatewayState string `json:"gateway_state,omitempty"`
	// Relay is the peer's relayed address (its TURN allocation), through
	// which peers that cannot reach it directly send; absent when none.
	Relay string `json:"relay,omitempty"`
}

// JoinRequest is what a new peer presents: the token string, its WireGuard
// public key (base64) and its name.
type JoinRequest struct {
	ProtocolVersion int      `json:"protocol_version"`
	Token           string   `json:"token"`
	Name            string   `json:"name"`
	PublicKey       string   `json:"public_key"`
	Routes          []Route  `json:"routes"`
	Endpoints       []string `json:"endpoints"`
	// OmitMap leaves the network map out of the answer: the peer reads it
	// from its watch, which it opens right after joining. In a large vnet
	// the map is most of the cost of a join.
	OmitMap bool `json:"omit_map,omitempty"`
	// CredentialSecret is the secret of the credential the peer will hold
	// (64 hex digits, chosen at random by the peer); optional, without it
	// the coordinator picks one. A peer that repeats a join whose answer
	// was lost sends the same secret again and so proves it is the peer
	// that joined: the repeat gets the same identity and credential even
	// after the token was used up, revoked or expired. A repeat with
	// another secret (or none) needs a fresh use of a token that is still
	// valid.
	CredentialSecret string `json:"credential_secret,omitempty"`
}

// JoinResponse is what a peer receives when it joins.
type JoinResponse struct {
	PeerID    string `json:"peer_id"`
	Name      string `json:"name"`
	VNet      string `json:"vnet"`
	OverlayIP string `json:"overlay_ip"`
	Overlay   string `json:"overlay"`
	// OverlayIP6 and Overlay6: the peer's IPv6 address and the vnet's
	// IPv6 overlay in a dual-stack vnet; absent otherwise.
	OverlayIP6 string     `json:"overlay_ip6,omitempty"`
	Overlay6   string     `json:"overlay6,omitempty"`
	Credential string     `json:"credential"`
	GossipKeys [][]byte   `json:"gossip_keys"`
	Map        *MapUpdate `json:"map"`
}

// MapPeer is another peer as a peer's network map shows it.
type MapPeer struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Role      string `json:"role"`
	PublicKey string `json:"public_key"`
	OverlayIP string `json:"overlay_ip"`
	// OverlayIP6 is the peer's IPv6 address in a dual-stack vnet; agents
	// from before dual-stack ignore it and reach the peer over IPv4.
	OverlayIP6 string   `json:"overlay_ip6,omitempty"`
	Endpoints  []string `json:"endpoints,omitempty"`
	Routes     []Route  `json:"routes,omitempty"`
	Tags       []string `json:"tags,omitempty"`
	// Drained gateways carry their routes only when no other can.
	Drained bool `json:"drained,omitempty"`
	// Relay is the peer's relayed address (host:port of its TURN
	// allocation): packets sent there through a relay reach it when no
	// direct path does.
	Relay string `json:"relay,omitempty"`
}

// MapUpdate is one message of a network-map watch. Full means Peers is the
// whole set of other peers and replaces what the receiver had; otherwise
// Peers are upserts and Removed are peer IDs to drop. Index is the state
// index the receiver resumes from.
type MapUpdate struct {
	Index   uint64 `json:"index"`
	Full    bool   `json:"full,omitempty"`
	VNet    string `json:"vnet,omitempty"`
	Overlay string `json:"overlay,omitempty"`
	// Overlay6 is the vnet's IPv6 overlay when it is dual-stack, sent
	// with Overlay.
	Overlay6     string    `json:"overlay6,omitempty"`
	Self         *MapPeer  `json:"self,omitempty"`
	Peers        []MapPeer `json:"peers,omitempty"`
	Removed      []string  `json:"removed,omitempty"`
	GossipKeys   [][]byte  `json:"gossip_keys,omitempty"`
	Coordinators []string  `json:"coordinators,omitempty"`
	// STUNServers are the coordinators' STUN addresses (host:port), sent
	// with Coordinators.
	STUNServers []string `json:"stun_servers,omitempty"`
	// SelfRemoved tells the receiver it was removed; the stream ends.
	SelfRemoved bool `json:"self_removed,omitempty"`
	// Policy is the vnet's access policy in force, in full maps only
	// (a policy change sends every peer of the vnet a full map); absent,
	// the vnet has none and every peer may reach every other. The
	// receiver enforces it on what reaches it through the mesh.
	Policy json.RawMessage `json:"policy,omitempty"`
}

// HeartbeatRequest is sent by a peer periodically; Endpoints, when not nil,
// replaces its reported endpoints.
type HeartbeatRequest struct {
	Endpoints []string `json:"endpoints"`
	// Relay, when not nil, replaces the peer's relayed address (host:port
	// of its TURN allocation; "" clears it).
	Relay *string `json:"relay,omitempty"`
}

// RelayServer is one TURN server (RFC 8656) a peer may allocate a relayed
// address on, with a TURN REST credential: Username is
// "EXPIRY_UNIX:PEER_ID" and Password is base64(HMAC-SHA1(secret,
// Username)), the form coturn's use-auth-secret checks.
type RelayServer struct {
	// URL is turn:HOST:PORT?transport=udp, turn:HOST:PORT?transport=tcp
	// or turns:HOST:PORT?transport=tcp (TLS; a coordinator's is pinned like
	// its API).
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
	// Pinned says a turns: server is a coordinator, whose TLS certificate
	// is checked against the cluster pin like its API's; without it a
	// turns: server is checked with the system roots and the URL's host.
	Pinned bool `json:"pinned,omitempty"`
}

// RelayConfig answers GET /v1/relay: the relays a peer may use and until
// when its credential is good. Peers fetch a new one before Expires.
type RelayConfig struct {
	Servers []RelayServer `json:"servers"`
	Expires time.Time     `json:"expires"`
}

// Member is one coordinator.
type Member struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIURL   string `json:"api_url"`
	Role     string `json:"role"`
	// Reachable is whether the member answers: as the leader's Raft
	// heartbeats tell (the answering coordinator asks the leader when it
	// does not lead), or, with no leader to ask, whether it answered the
	// answering coordinator; absent when nothing tells.
	Reachable *bool `json:"reachable,omitempty"`
	// LastContactMS is how long ago, in milliseconds, the leader last
	// heard from the member over Raft (0: within the last heartbeat); for
	// the leader's own row as seen from a follower, how long ago that
	// follower last heard from it. Absent when unknown.
	LastContactMS *int64 `json:"last_contact_ms,omitempty"`
	// AppliedIndex is the last Raft index the member applied, from its
	// own answer; absent when it did not answer in time.
	AppliedIndex *uint64 `json:"applied_index,omitempty"`
	// Lag is how many entries the member's applied index trails the
	// leader's commit index; absent when either is unknown.
	Lag *uint64 `json:"lag,omitempty"`
	// Error says why the member's own answer is missing.
	Error string `json:"error,omitempty"`
}

// LeadershipTransfer answers `meshd cluster transfer-leadership`: the
// coordinator that led and the one that leads now.
type LeadershipTransfer struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// ClusterStatus answers `meshd cluster status`.
type ClusterStatus struct {
	Leader           string   `json:"leader"`
	Members          []Member `json:"members"`
	LastAppliedIndex uint64   `json:"last_applied_index"`
	// Term is the Raft term the answering coordinator is in: it grows by
	// one (or more) with every election, so two readings tell whether the
	// leadership changed in between.
	Term   uint64 `json:"term"`
	Server string `json:"server"`
	// CommitIndex is the leader's commit index (the lag of every member is
	// measured against it); 0 when no leader answered.
	CommitIndex uint64 `json:"commit_index,omitempty"`
}

// Gateway is one gateway announcing a route, as the coordinators see it.
// Healthy is the coordinators' view (the agent holds its network-map watch);
// Drained says an admin drained it: it carries the route only when no
// undrained healthy gateway can (see package gateway).
type Gateway struct {
	Name     string `json:"name"`
	Priority int    `json:"priority"`
	Healthy  bool   `json:"healthy"`
	Drained  bool   `json:"drained,omitempty"`
	// State is its state for this route in one word (package gateway):
	// active, standby, drained, unhealthy or offline; Reason says why.
	// Empty from coordinators that predate them.
	State  string `json:"state,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RouteInfo is one (vnet, prefix) with its gateways.
type RouteInfo struct {
	VNet          string    `json:"vnet"`
	Prefix        string    `json:"prefix"`
	ActiveGateway string    `json:"active_gateway"`
	Gateways      []Gateway `json:"gateways"`
}

// LookupResult answers `meshd route lookup IP|CIDR` in one vnet. Prefix
// is nil when no route covers the address (or all of the CIDR); then
// ActiveGateway is empty and Gateways too.
type LookupResult struct {
	// IP is what was looked up, as given: an address or a CIDR.
	IP            string    `json:"ip"`
	VNet          string    `json:"vnet"`
	Prefix        *string   `json:"prefix"`
	ActiveGateway string    `json:"active_gateway"`
	Gateways      []Gateway `json:"gateways"`
	// Why is the active gateway's state and reason ("active:
	// highest-priority healthy gateway"), or why there is none.
	Why string `json:"why,omitempty"`
	// Network is the CIDR looked up, masked (absent for an address).
	Network string `json:"network,omitempty"`
	// Covering are the routes that contain all of it, longest first:
	// Prefix is the first.
	Covering []RouteInfo `json:"covering,omitempty"`
	// Inside are, for a CIDR, the routes more specific than it, which
	// carry part of it.
	Inside []RouteInfo `json:"inside,omitempty"`
}

// Overlap is a pair of announced prefixes that overlap.
type Overlap struct {
	A RoutePlace `json:"a"`
	B RoutePlace `json:"b"`
	// SameVNet is true when both lie in one vnet (longest prefix decides);
	// otherwise the vnets keep them apart.
	SameVNet bool `json:"same_vnet"`
	// MoreSpecific is "a" or "b" when that prefix lies strictly inside the
	// other in the same vnet: its gateways carry the addresses it covers,
	// whatever the other's priority. Absent for equal prefixes and for
	// separate vnets.
	MoreSpecific string `json:"more_specific,omitempty"`
	// SpecificGateways are the gateways announcing the more specific
	// prefix, each saying whether its join token lists that exact prefix.
	SpecificGateways []OverlapGateway `json:"specific_gateways,omitempty"`
	// Unauthorized: a gateway of the more specific prefix does not have it
	// listed exactly by its join token, and another gateway announces the
	// wider prefix: it takes traffic from that gateway on the strength of
	// a wider allowed route. Joins are refused such routes; this flags the
	// ones announced before the wider route, or before the rule.
	Unauthorized bool `json:"unauthorized,omitempty"`
}

// OverlapGateway is a gateway announcing the more specific prefix of an
// Overlap.
type OverlapGateway struct {
	Name string `json:"name"`
	// AllowedExactly: its join token lists this exact prefix (not only a
	// wider one).
	AllowedExactly bool `json:"allowed_exactly"`
}

// RoutePlace is a prefix in a vnet.
type RoutePlace struct {
	VNet   string `json:"vnet"`
	Prefix string `json:"prefix"`
}

// GossipRing describes one vnet's gossip keyring (never the keys): how many
// keys its peers accept, the primary included.
type GossipRing struct {
	VNet string `json:"vnet"`
	Keys int    `json:"keys"`
}

// RotateGossipKeyResponse answers POST /v1/gossip/rotate-key (every vnet, or
// one with ?vnet=NAME): the vnets that got a new primary key, and how long
// their previous keys stay accepted (a Go duration, such as "1m0s").
type RotateGossipKeyResponse struct {
	Index uint64       `json:"index"`
	VNets []GossipRing `json:"vnets"`
	Grace string       `json:"grace"`
}

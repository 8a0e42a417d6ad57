package state

import (
	"crypto/subtle"
	"encoding/base64"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/coordinator/ipam"
	"github.com/meshd/meshd/pkg/api"
)

// Limits on user input.
const (
	MaxTokenUses = 1_000_000
	MaxTTL       = 365 * 24 * time.Hour
	MaxTags      = 32
	MaxRoutes    = 256
	MaxEndpoints = 16
	MaxPriority  = 1_000_000
	// JoinRetryWindow is how long after joining a peer may repeat the same
	// join (same token, name and key) and get its identity again.
	JoinRetryWindow = 2 * time.Minute
	minOverlayLen   = 8
	maxOverlayLen   = 30
	minOverlay6Len  = 16
	maxOverlay6Len  = 120
)

var tagRE = regexp.MustCompile(`^[a-z0-9][a-z0-9:_.-]{0,62}$`)

// ValidName checks a vnet or peer name: a DNS label (api.ValidName).
func ValidName(kind, name string) error { return api.ValidName(kind, name) }

// ParsePrefix parses a CIDR that must be a network address.
func ParsePrefix(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, api.Errorf(api.CodeInvalidCIDR, "%s %q is not a CIDR prefix such as 10.1.0.0/24", what, s)
	}
	if p.Masked() != p {
		return p, api.Errorf(api.CodeInvalidCIDR, "%s %q has host bits set; did you mean %s?", what, s, p.Masked())
	}
	return p, nil
}

// ValidKey checks a base64 WireGuard public key.
func ValidKey(k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		return api.Errorf(api.CodeInvalidKey, "public key %q is not a base64 WireGuard key of 32 bytes", k)
	}
	if [32]byte(b) == [32]byte{} {
		return api.Errorf(api.CodeInvalidKey, "public key is all zeros")
	}
	return nil
}

func validTags(tags []string) error {
	if len(tags) > MaxTags {
		return api.Errorf(api.CodeInvalidArgument, "at most %d tags", MaxTags)
	}
	for _, t := range tags {
		if !tagRE.MatchString(t) {
			return api.Errorf(api.CodeInvalidArgument, "tag %q is invalid: use lower-case letters, digits and : _ . -", t)
		}
	}
	return nil
}

// ValidEndpoints checks reported endpoints: ip:port each.
func ValidEndpoints(eps []string) error {
	if len(eps) > MaxEndpoints {
		return api.Errorf(api.CodeInvalidArgument, "at most %d endpoints", MaxEndpoints)
	}
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is not an ip:port", e)
		}
	}
	return nil
}

// ValidPeerEndpoints checks endpoints a peer reports through the API: on
// top of ValidEndpoints, each must be an address other peers can send
// WireGuard packets to, so none is loopback, unspecified, multicast,
// broadcast, link-local or in 0.0.0.0/8, and no port is 0. Every peer of
// the vnet sends handshakes to what a peer reports; an address of their
// own host or a multicast group would turn the mesh against itself. The
// FSM applies the looser ValidEndpoints, so entries logged before this
// check replay as they did.
func ValidPeerEndpoints(eps []string) error {
	if err := ValidEndpoints(eps); err != nil {
		return err
	}
	for _, e := range eps {
		a := netip.MustParseAddrPort(e).Addr().Unmap() // checked above
		switch {
		case a.IsLoopback():
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is a loopback address: other peers cannot reach it", e)
		case a.IsMulticast():
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is a multicast address", e)
		case a.IsLinkLocalUnicast():
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is a link-local address: other peers cannot reach it", e)
		case a.Is4() && (a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || a.As4()[0] == 0):
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is not a unicast address", e)
		case !a.IsGlobalUnicast():
			return api.Errorf(api.CodeInvalidArgument, "endpoint %q is not a unicast address other peers can reach", e)
		}
	}
	return nil
}

// ValidRelay checks a reported relayed address: ip:port, or "" (none).
func ValidRelay(r string) error {
	if r == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(r)
	if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
		return api.Errorf(api.CodeInvalidArgument, "relayed address %q is not an ip:port", r)
	}
	return nil
}

func overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

// Bootstrap creates the default vnet and the gossip keyring once; later calls
// change nothing.
func (s *Store) Bootstrap(now time.Time, gossipKey []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t.Bootstrapped {
		return nil
	}
	if len(gossipKey) != 32 {
		return api.Errorf(api.CodeInvalidArgument, "gossip key must be 32 bytes")
	}
	ov := netip.MustParsePrefix(api.DefaultOverlay)
	if _, ok := s.t.VNets[api.DefaultVNet]; !ok {
		s.t.VNets[api.DefaultVNet] = &VNet{Name: api.DefaultVNet, Overlay: ov, CreatedAt: now, NextIP: ipam.First(ov)}
	}
	s.t.GossipKeys = [][]byte{slices.Clone(gossipKey)}
	s.t.Bootstrapped = true
	s.record("", "")
	return nil
}

// CreateVNet adds a vnet with one IPv4 overlay that overlaps no other
// vnet's. It refuses an IPv6 overlay, as versions before dual-stack vnets
// did, so the entries they logged replay as they applied then
// (CreateVNetIPv6 takes IPv6).
func (s *Store) CreateVNet(name, overlay string, now time.Time) error {
	return s.createVNet(name, []string{overlay}, false, now)
}

// CreateVNetIPv6 adds a vnet whose overlays are an IPv4 prefix, an IPv6
// prefix, or one of each (dual-stack), none overlapping another vnet's.
func (s *Store) CreateVNetIPv6(name string, overlays []string, now time.Time) error {
	return s.createVNet(name, overlays, true, now)
}

// ValidOverlay checks one overlay prefix: IPv4 from /8 to /30, or, with
// ipv6, a unicast IPv6 prefix from /16 to /120.
func ValidOverlay(overlay string, ipv6 bool) (netip.Prefix, error) {
	p, err := ParsePrefix("overlay", overlay)
	if err != nil {
		return p, err
	}
	if p.Addr().Is6() && ipv6 {
		a := p.Addr()
		if a.Is4In6() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() || p.Bits() < minOverlay6Len || p.Bits() > maxOverlay6Len {
			return p, api.Errorf(api.CodeInvalidCIDR, "overlay %s must be a unicast IPv6 prefix from /%d to /%d, such as a unique local fd00::/8 one (fd7a:115c:a1e0::/48)", p, minOverlay6Len, maxOverlay6Len)
		}
		return p, nil
	}
	if !p.Addr().Is4() || p.Bits() < minOverlayLen || p.Bits() > maxOverlayLen {
		return p, api.Errorf(api.CodeInvalidCIDR, "overlay %s must be an IPv4 prefix from /%d to /%d", p, minOverlayLen, maxOverlayLen)
	}
	return p, nil
}

func (s *Store) createVNet(name string, overlays []string, ipv6 bool, now time.Time) error {
	if err := ValidName("vnet", name); err != nil {
		return err
	}
	if len(overlays) == 0 || len(overlays) > 2 {
		return api.Errorf(api.CodeInvalidCIDR, "a vnet has one overlay per address family: an IPv4 prefix, an IPv6 prefix, or one of each")
	}
	var v4, v6 netip.Prefix
	for _, o := range overlays {
		p, err := ValidOverlay(o, ipv6)
		if err != nil {
			return err
		}
		switch {
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p
		case p.Addr().Is6() && !v6.IsValid():
			v6 = p
		default:
			return api.Errorf(api.CodeInvalidCIDR, "overlays %s: a vnet has one overlay per address family", strings.Join(overlays, ","))
		}
	}
	v := &VNet{Name: name, Overlay: v4, CreatedAt: now, Overlay6: v6}
	switch {
	case !v4.IsValid():
		v.Overlay, v.Overlay6 = v6, netip.Prefix{} // an IPv6-only vnet
		v.NextIP = ipam.First(v6)
	case v6.IsValid():
		v.NextIP, v.NextIP6 = ipam.First(v4), ipam.First(v6)
	default:
		v.NextIP = ipam.First(v4)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.VNets[name]; ok {
		return api.Errorf(api.CodeConflict, "vnet %q already exists", name)
	}
	for _, p := range v.Overlays() {
		for _, o := range s.sortedVNets() {
			if q, ok := o.overlapping(p); ok {
				return api.Errorf(api.CodeOverlap, "overlay %s overlaps vnet %q (%s); overlays must be disjoint", p, o.Name, q)
			}
		}
	}
	s.t.VNets[name] = v
	return nil
}

func (s *Store) sortedVNets() []*VNet {
	out := make([]*VNet, 0, len(s.t.VNets))
	for _, v := range s.t.VNets {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *VNet) int { return cmpString(a.Name, b.Name) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DeleteVNet removes an empty vnet. Its tokens stay listed but no longer
// admit anyone.
func (s *Store) DeleteVNet(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.VNets[name]; !ok {
		return api.Errorf(api.CodeNotFound, "vnet %q does not exist", name)
	}
	if n := len(s.byName[name]); n > 0 {
		return api.Errorf(api.CodeConflict, "vnet %q still has %d peers; remove them first", name, n)
	}
	delete(s.t.VNets, name)
	delete(s.t.Policies, name) // a vnet created later under this name starts open
	delete(s.t.GossipRings, name)
	return nil
}

// TokenSpec is a join token to create.
type TokenSpec struct {
	ID          string    `json:"id"`
	SecretHash  string    `json:"secret_hash"`
	VNet        string    `json:"vnet"`
	Uses        int       `json:"uses"`
	Expires     time.Time `json:"expires"`
	Tags        []string  `json:"tags"`
	AllowRoutes []string  `json:"allow_routes"`
	Ephemeral   bool      `json:"ephemeral"`
	// MaxPriority caps the route priority a gateway joining with the
	// token may claim; nil: no cap.
	MaxPriority *int `json:"max_priority,omitempty"`
	// CreatedBy names the admin credential that asked.
	CreatedBy string `json:"created_by,omitempty"`
}

// CreateToken stores a join token.
func (s *Store) CreateToken(spec TokenSpec, now time.Time) error {
	if spec.ID == "" || len(spec.SecretHash) != 64 {
		return api.Errorf(api.CodeInvalidArgument, "token id and secret hash are required")
	}
	if spec.Uses < 1 || spec.Uses > MaxTokenUses {
		return api.Errorf(api.CodeInvalidArgument, "uses must be from 1 to %d, not %d", MaxTokenUses, spec.Uses)
	}
	if !spec.Expires.After(now) || spec.Expires.Sub(now) > MaxTTL {
		return api.Errorf(api.CodeInvalidArgument, "ttl must be positive and at most %s", MaxTTL)
	}
	if err := validTags(spec.Tags); err != nil {
		return err
	}
	if spec.MaxPriority != nil && (*spec.MaxPriority < 0 || *spec.MaxPriority > MaxPriority) {
		return api.Errorf(api.CodeInvalidArgument, "max priority must be from 0 to %d, not %d", MaxPriority, *spec.MaxPriority)
	}
	if len(spec.CreatedBy) > maxSetByLen {
		return api.Errorf(api.CodeInvalidArgument, "created_by is longer than %d bytes", maxSetByLen)
	}
	if len(spec.AllowRoutes) > MaxRoutes {
		return api.Errorf(api.CodeInvalidArgument, "at most %d allowed routes", MaxRoutes)
	}
	allow := make([]netip.Prefix, 0, len(spec.AllowRoutes))
	for _, r := range spec.AllowRoutes {
		p, err := ParsePrefix("allowed route", r)
		if err != nil {
			return err
		}
		allow = append(allow, p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.t.VNets[spec.VNet]
	if !ok {
		return api.Errorf(api.CodeNotFound, "vnet %q does not exist", spec.VNet)
	}
	for _, p := range allow {
		if o, ok := v.overlapping(p); ok {
			return api.Errorf(api.CodeOverlap, "allowed route %s overlaps vnet %q's overlay %s", p, v.Name, o)
		}
	}
	if _, ok := s.t.Tokens[spec.ID]; ok {
		return api.Errorf(api.CodeConflict, "token id %q already exists", spec.ID)
	}
	s.t.Tokens[spec.ID] = &Token{
		ID: spec.ID, SecretHash: spec.SecretHash, VNet: spec.VNet,
		Uses: spec.Uses, UsesLeft: spec.Uses, Expires: spec.Expires,
		Tags: slices.Clone(spec.Tags), AllowRoutes: allow, Ephemeral: spec.Ephemeral,
		CreatedAt: now, MaxPriority: clonePtr(spec.MaxPriority), CreatedBy: spec.CreatedBy,
	}
	return nil
}

// RevokeToken makes a token unusable from now on (zero: when is not
// recorded, as entries of older versions). A token revoked already is
// refused with api.CodeAlreadyRevoked and stays as it was.
func (s *Store) RevokeToken(id string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.t.Tokens[id]
	if !ok {
		return api.Errorf(api.CodeNotFound, "token %q does not exist", id)
	}
	if t.Revoked {
		return api.Errorf(api.CodeAlreadyRevoked, "token %q is revoked already; nothing changed", id)
	}
	t.Revoked = true
	t.RevokedAt = now
	return nil
}

// JoinSpec is a peer joining with a token.
type JoinSpec struct {
	TokenID    string      `json:"token_id"`
	SecretHash string      `json:"secret_hash"`
	PeerID     string      `json:"peer_id"`
	Name       string      `json:"name"`
	PublicKey  string      `json:"public_key"`
	Routes     []api.Route `json:"routes"`
	Endpoints  []string    `json:"endpoints"`
	CredHash   string      `json:"cred_hash"`
	// StrictRetry is set by coordinators that admit a repeated join (same
	// token, name and key, within JoinRetryWindow) only when it proves
	// possession of the peer's credential (the same CredHash: the peer
	// chose its credential's secret and sends it again) or takes a fresh
	// use of a token that is still valid. Log entries written before it
	// existed apply as they did then, so a replayed log gives the state it
	// gave.
	StrictRetry bool `json:"strict_retry,omitempty"`
	// RouteAuthority is set by coordinators that refuse a route strictly
	// inside another gateway's route in the vnet unless the join token
	// lists that exact prefix (checkRouteAuthority). Log entries written
	// before it existed apply as they did then.
	RouteAuthority bool `json:"route_authority,omitempty"`
}

// CheckToken says why a token cannot admit a peer now, or returns it; s.mu
// must be held.
func (s *Store) checkToken(id, secretHash string, now time.Time) (*Token, *VNet, error) {
	t, ok := s.t.Tokens[id]
	if !ok || t.SecretHash != secretHash {
		return nil, nil, api.Errorf(api.CodeTokenUnknown, "join token is not known to this cluster")
	}
	if t.Revoked {
		return nil, nil, api.Errorf(api.CodeTokenRevoked, "join token %s was revoked", id)
	}
	if !now.Before(t.Expires) {
		return nil, nil, api.Errorf(api.CodeTokenExpired, "join token %s expired at %s", id, t.Expires.UTC().Format(time.RFC3339))
	}
	if t.UsesLeft <= 0 {
		return nil, nil, api.Errorf(api.CodeTokenUsedUp, "join token %s has been used %d of %d times", id, t.Uses, t.Uses)
	}
	v, ok := s.t.VNets[t.VNet]
	if !ok {
		return nil, nil, api.Errorf(api.CodeVNetDeleted, "join token %s is for vnet %q, which no longer exists", id, t.VNet)
	}
	return t, v, nil
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// parseRoutes checks announced routes against the vnet and what the join
// token allows: prefixes inside allow, priorities up to maxPrio (nil: up
// to MaxPriority).
func parseRoutes(rs []api.Route, v *VNet, allow []netip.Prefix, maxPrio *int) ([]Route, error) {
	if len(rs) > MaxRoutes {
		return nil, api.Errorf(api.CodeInvalidArgument, "at most %d routes", MaxRoutes)
	}
	out := make([]Route, 0, len(rs))
	seen := map[netip.Prefix]bool{}
	for _, r := range rs {
		p, err := ParsePrefix("route", r.Prefix)
		if err != nil {
			return nil, err
		}
		if r.Priority < 0 || r.Priority > MaxPriority {
			return nil, api.Errorf(api.CodeInvalidArgument, "route %s priority must be from 0 to %d", p, MaxPriority)
		}
		if maxPrio != nil && r.Priority > *maxPrio {
			return nil, api.Errorf(api.CodeRouteNotAllowed, "route %s priority %d is above %d, the highest the join token lets its gateways claim (token create --max-priority); announce it with --gateway-priority %d or less", p, r.Priority, *maxPrio, *maxPrio)
		}
		if seen[p] {
			return nil, api.Errorf(api.CodeInvalidArgument, "route %s is announced twice", p)
		}
		seen[p] = true
		if o, ok := v.overlapping(p); ok {
			return nil, api.Errorf(api.CodeOverlap, "route %s overlaps vnet %q's overlay %s", p, v.Name, o)
		}
		ok := false
		for _, a := range allow {
			if a.Bits() <= p.Bits() && a.Contains(p.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return nil, api.Errorf(api.CodeRouteNotAllowed, "route %s is not allowed by the join token (allowed: %v)", p, allow)
		}
		out = append(out, Route{Prefix: p, Priority: r.Priority})
	}
	slices.SortFunc(out, func(a, b Route) int { return cmpString(a.Prefix.String(), b.Prefix.String()) })
	return out, nil
}

// checkRouteAuthority refuses a route strictly inside a route another
// gateway of vnet announces (longest prefix match would hand it that part
// of the other gateway's traffic) unless the join token lists that exact
// prefix: a token that allows 10.1.0.0/16 does not let its holder take
// 10.1.2.0/24 from the gateway that announces 10.1.0.0/16. Equal prefixes
// (an HA pair) and wider ones are not takeovers: the highest priority
// (capped by the token) and the longest prefix decide as before. The
// announcing peer is new (routes are set at join), so every gateway in
// the table is another. s.mu must be held.
func (s *Store) checkRouteAuthority(vnet string, routes []Route, allow []netip.Prefix) error {
	for _, r := range routes {
		if slices.Contains(allow, r.Prefix) {
			continue
		}
		var by *Peer
		var wider netip.Prefix
		for _, id := range s.byName[vnet] {
			q := s.t.Peers[id]
			for _, qr := range q.Routes {
				if qr.Prefix.Bits() < r.Prefix.Bits() && qr.Prefix.Contains(r.Prefix.Addr()) {
					// The same answer on every replica: the first gateway by name.
					if by == nil || q.Name < by.Name || q.Name == by.Name && qr.Prefix.Bits() > wider.Bits() {
						by, wider = q, qr.Prefix
					}
				}
			}
		}
		if by != nil {
			return api.Errorf(api.CodeRouteNotAllowed, "route %s is inside %s, which gateway %q announces in vnet %q: a more specific route would take that traffic from it; a join token must list %s exactly in --allow-routes to announce it", r.Prefix, wider, by.Name, vnet, r.Prefix)
		}
	}
	return nil
}

// Join admits a peer: the token is checked and its uses decremented, the
// peer gets the next free overlay address of the token's vnet.
func (s *Store) Join(j JoinSpec, now time.Time) (*Peer, error) {
	if err := ValidName("peer", j.Name); err != nil {
		return nil, err
	}
	if err := ValidKey(j.PublicKey); err != nil {
		return nil, err
	}
	if err := ValidEndpoints(j.Endpoints); err != nil {
		return nil, err
	}
	if j.PeerID == "" || len(j.CredHash) != 64 {
		return nil, api.Errorf(api.CodeInvalidArgument, "peer id and credential hash are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.byKey[j.PublicKey]; ok {
		// A repeat of a join whose answer was lost: same token, name and
		// key, soon after. Name and key are no secret (every peer of the
		// vnet sees them), so the repeat must also prove possession of the
		// credential the first join set (it presents the same one, which
		// changes nothing) or take a fresh use of a token that is still
		// valid (which replaces the credential). A revoked, expired or
		// used-up token never re-issues one.
		p := s.t.Peers[id]
		t, ok := s.t.Tokens[j.TokenID]
		if ok && t.SecretHash == j.SecretHash && p.TokenID == j.TokenID && p.Name == j.Name && now.Sub(p.CreatedAt) < JoinRetryWindow {
			if !j.StrictRetry {
				p.CredHash = j.CredHash
				return p, nil
			}
			if subtle.ConstantTimeCompare([]byte(p.CredHash), []byte(j.CredHash)) == 1 {
				return p, nil
			}
			if _, _, err := s.checkToken(j.TokenID, j.SecretHash, now); err != nil {
				return nil, err
			}
			t.UsesLeft--
			t.LastUsed = now
			p.CredHash = j.CredHash
			return p, nil
		}
	}
	t, v, err := s.checkToken(j.TokenID, j.SecretHash, now)
	if err != nil {
		return nil, err
	}
	routes, err := parseRoutes(j.Routes, v, t.AllowRoutes, t.MaxPriority)
	if err != nil {
		return nil, err
	}
	if j.RouteAuthority {
		if err := s.checkRouteAuthority(v.Name, routes, t.AllowRoutes); err != nil {
			return nil, err
		}
	}
	if _, ok := s.byName[v.Name][j.Name]; ok {
		return nil, api.Errorf(api.CodeConflict, "peer name %q is taken in vnet %q", j.Name, v.Name)
	}
	if _, ok := s.byKey[j.PublicKey]; ok {
		return nil, api.Errorf(api.CodeConflict, "public key is already used by another peer")
	}
	if _, ok := s.t.Peers[j.PeerID]; ok {
		return nil, api.Errorf(api.CodeConflict, "peer id %q already exists", j.PeerID)
	}
	ips := s.byIP[v.Name]
	addrs, cursors, full, err := ipam.AllocateEach(v.pools(), func(a netip.Addr) bool { _, ok := ips[a]; return ok })
	if err != nil {
		return nil, api.Errorf(api.CodeExhausted, "vnet %q has no free overlay address in %s", v.Name, full)
	}
	role := api.RoleClient
	if len(routes) > 0 {
		role = api.RoleGateway
	}
	p := &Peer{
		ID: j.PeerID, Name: j.Name, VNet: v.Name, Role: role, PublicKey: j.PublicKey,
		Endpoints: slices.Clone(j.Endpoints), Tags: slices.Clone(t.Tags),
		Routes: routes, AllowRoutes: slices.Clone(t.AllowRoutes), Ephemeral: t.Ephemeral,
		MaxPriority: clonePtr(t.MaxPriority), CredHash: j.CredHash, TokenID: t.ID, CreatedAt: now, LastSeen: now,
	}
	p.setAddrs(addrs)
	v.setCursors(cursors)
	t.UsesLeft--
	t.LastUsed = now
	s.t.Peers[p.ID] = p
	s.indexPeer(p)
	s.record(v.Name, p.ID)
	return p, nil
}

// RemovePeer deletes a peer; its address is free again. With a gossip seed
// (a removal written before rotation on removal has none), its vnet's
// gossip key is rotated in the same step, so the removed peer's key stops
// working once the previous key's grace is over.
func (s *Store) RemovePeer(id string, now time.Time, gossipSeed []byte) error {
	if gossipSeed != nil {
		if err := validSeed(gossipSeed); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.t.Peers[id]
	if !ok {
		return api.Errorf(api.CodeNotFound, "peer %q does not exist", id)
	}
	s.removePeerLocked(p, now, gossipSeed)
	return nil
}

// removePeerLocked deletes p and, with a gossip seed, rotates its vnet's
// gossip key; s.mu must be held.
func (s *Store) removePeerLocked(p *Peer, now time.Time, gossipSeed []byte) {
	s.unindexPeer(p)
	delete(s.t.Peers, p.ID)
	s.record(p.VNet, p.ID)
	if gossipSeed != nil {
		s.rotateLocked(p.VNet, gossipSeed, now)
	}
}

// PeerUpdate changes what a peer reports; nil fields are left alone.
type PeerUpdate struct {
	PeerID    string       `json:"peer_id"`
	Endpoints *[]string    `json:"endpoints,omitempty"`
	Routes    *[]api.Route `json:"routes,omitempty"`
	Drained   *bool        `json:"drained,omitempty"`
	// Relay replaces the peer's relayed address ("" clears it).
	Relay *string `json:"relay,omitempty"`
	// WatchedBy sets who holds the peer's watch; with IfWatchedBy, only if
	// that is the current holder (a coordinator clears only its own).
	// Coordinators now write watch marks in batches (MarkWatches); these
	// stay for log entries written before that.
	WatchedBy   *string `json:"watched_by,omitempty"`
	IfWatchedBy *string `json:"if_watched_by,omitempty"`
	// Seen, when later than the peer's LastSeen, replaces it: the end of a
	// watch carries the time it ended.
	Seen *time.Time `json:"seen,omitempty"`
}

// UpdatePeer applies a PeerUpdate. Routes must stay within what the peer's
// token allowed.
func (s *Store) UpdatePeer(u PeerUpdate) error {
	if u.Endpoints != nil {
		if err := ValidEndpoints(*u.Endpoints); err != nil {
			return err
		}
	}
	if u.Relay != nil {
		if err := ValidRelay(*u.Relay); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.t.Peers[u.PeerID]
	if !ok {
		return api.Errorf(api.CodeNotFound, "peer %q does not exist", u.PeerID)
	}
	var routes []Route
	if u.Routes != nil {
		var err error
		if routes, err = parseRoutes(*u.Routes, s.t.VNets[p.VNet], p.AllowRoutes, p.MaxPriority); err != nil {
			return err
		}
	}
	changed := false
	if u.Endpoints != nil && !slices.Equal(p.Endpoints, *u.Endpoints) {
		p.Endpoints = slices.Clone(*u.Endpoints)
		changed = true
	}
	if u.Routes != nil && !slices.Equal(p.Routes, routes) {
		p.Routes = routes
		p.Role = api.RoleClient
		if len(routes) > 0 {
			p.Role = api.RoleGateway
		}
		changed = true
	}
	if u.WatchedBy != nil && (u.IfWatchedBy == nil || *u.IfWatchedBy == p.WatchedBy) {
		// Not part of the network map: no delta for the other peers.
		p.WatchedBy = *u.WatchedBy
		if p.WatchedBy != "" {
			p.Watcher = true
		}
	}
	if u.Seen != nil && u.Seen.After(p.LastSeen) {
		p.LastSeen = *u.Seen // not part of the network map
	}
	if u.Relay != nil && p.Relay != *u.Relay {
		p.Relay = *u.Relay
		changed = true
	}
	if u.Drained != nil && p.Drained != *u.Drained {
		p.Drained = *u.Drained
		changed = true
	}
	if changed {
		s.record(p.VNet, p.ID)
	}
	return nil
}

// MarkWatches records, for one coordinator, the watches it holds now and
// the ones that ended there (with the time each ended). A release clears
// the mark only when coord still holds it: a peer that moved to another
// coordinator keeps that one's mark. Unknown ids are skipped (the peer may
// have been removed meanwhile). It changes no map.
func (s *Store) MarkWatches(coord string, held []string, released map[string]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range held {
		if p, ok := s.t.Peers[id]; ok {
			p.WatchedBy, p.Watcher = coord, true
		}
	}
	for id, ended := range released {
		p, ok := s.t.Peers[id]
		if !ok {
			continue
		}
		if p.WatchedBy == coord {
			p.WatchedBy = ""
		}
		if ended.After(p.LastSeen) {
			p.LastSeen = ended
		}
	}
}

// TouchPeers records when peers were last heard from. Unknown ids are
// skipped (the peer may have been removed meanwhile). It changes no map.
func (s *Store) TouchPeers(seen map[string]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range seen {
		if p, ok := s.t.Peers[id]; ok && t.After(p.LastSeen) {
			p.LastSeen = t
		}
	}
}

// RegisterCoordinator records a coordinator's addresses.
func (s *Store) RegisterCoordinator(c Coordinator) error {
	if err := ValidName("coordinator", c.Name); err != nil {
		return err
	}
	if c.RaftAddr == "" || c.APIURL == "" {
		return api.Errorf(api.CodeInvalidArgument, "coordinator %q needs a raft address and an API URL", c.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.t.Coordinators[c.Name]; ok && *old == c {
		return nil
	}
	s.t.Coordinators[c.Name] = &c
	s.record("", "")
	return nil
}

// DeregisterCoordinator drops a coordinator removed from the cluster from
// the coordinators the maps list; an unknown name changes nothing.
func (s *Store) DeregisterCoordinator(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.Coordinators[name]; !ok {
		return
	}
	delete(s.t.Coordinators, name)
	s.record("", "")
}

// ExpireTokens deletes tokens that expired longer than TokenRetention ago.
// It returns how many went.
func (s *Store) ExpireTokens(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, t := range s.t.Tokens {
		if now.Sub(t.Expires) > TokenRetention {
			delete(s.t.Tokens, id)
			n++
		}
	}
	return n
}

// ReapEphemeral removes ephemeral peers not seen for longer than grace and
// returns their ids, sorted. A peer whose watch a coordinator holds is
// being seen now, whatever its LastSeen (which records when a watch ended).
// With a gossip seed of the right length, the gossip key of every vnet that
// lost a peer is rotated (RemovePeer).
func (s *Store) ReapEphemeral(now time.Time, grace time.Duration, gossipSeed []byte) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for id, p := range s.t.Peers {
		if p.Ephemeral && p.WatchedBy == "" && now.Sub(p.LastSeen) > grace {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	rotate := map[string]bool{}
	for _, id := range gone {
		p := s.t.Peers[id]
		s.unindexPeer(p)
		delete(s.t.Peers, id)
		s.record(p.VNet, id)
		rotate[p.VNet] = true
	}
	if validSeed(gossipSeed) == nil {
		for _, v := range s.sortedVNets() {
			if rotate[v.Name] {
				s.rotateLocked(v.Name, gossipSeed, now)
			}
		}
	}
	return gone
}

// RotateGossipKey puts key first in the keyring and keeps the previous
// primary as a secondary so members switch without a gap.
func (s *Store) RotateGossipKey(key []byte) error {
	if len(key) != 32 {
		return api.Errorf(api.CodeInvalidArgument, "gossip key must be 32 bytes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ring := [][]byte{slices.Clone(key)}
	if len(s.t.GossipKeys) > 0 {
		ring = append(ring, s.t.GossipKeys[0])
	}
	s.t.GossipKeys = ring
	s.record("", "")
	return nil
}

// Package state holds the coordinators' replicated tables (vnets, peers, join
// tokens, admin credentials, policies, the gossip keyring and the
// coordinators themselves) in memory. It knows nothing of Raft: the FSM calls
// its mutators in log order with the time carried by each command, so every
// replica computes the same result.
// Every mutator validates its whole input before it changes anything, and
// returns an *api.Error that names the problem.
//
// Readers take a consistent view with Read; watchers wait on WatchCh and ask
// ChangesSince which peers changed after the index they last saw.
package state

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/meshd/meshd/coordinator/ipam"
)

// TokenRetention is how long an expired token stays listed before the
// leader's loop deletes it.
const TokenRetention = 24 * time.Hour

// maxChanges bounds the change log; a watcher further behind gets a full map.
const maxChanges = 65536

// VNet is a virtual network.
type VNet struct {
	Name      string       `json:"name"`
	Overlay   netip.Prefix `json:"overlay"`
	CreatedAt time.Time    `json:"created_at"`
	// NextIP is where address allocation resumes.
	NextIP netip.Addr `json:"next_ip"`
	// Overlay6 is the IPv6 overlay of a dual-stack vnet (Overlay then
	// holds the IPv4 one; a vnet with an IPv6 overlay alone holds it in
	// Overlay); NextIP6 is where its allocation resumes. Absent in vnets
	// without one, so their encoding is unchanged.
	Overlay6 netip.Prefix `json:"overlay6,omitzero"`
	NextIP6  netip.Addr   `json:"next_ip6,omitzero"`
}

// Overlays lists the vnet's overlay prefixes: Overlay, then Overlay6 when
// the vnet is dual-stack.
func (v *VNet) Overlays() []netip.Prefix {
	if v.Overlay6.IsValid() {
		return []netip.Prefix{v.Overlay, v.Overlay6}
	}
	return []netip.Prefix{v.Overlay}
}

// overlapping returns the overlay of v that p overlaps, if any.
func (v *VNet) overlapping(p netip.Prefix) (netip.Prefix, bool) {
	for _, o := range v.Overlays() {
		if o.IsValid() && o.Overlaps(p) {
			return o, true
		}
	}
	return netip.Prefix{}, false
}

// pools are the vnet's address pools, one per overlay.
func (v *VNet) pools() []ipam.Pool {
	ps := []ipam.Pool{{Prefix: v.Overlay, Next: v.NextIP}}
	if v.Overlay6.IsValid() {
		ps = append(ps, ipam.Pool{Prefix: v.Overlay6, Next: v.NextIP6})
	}
	return ps
}

// setCursors records where each pool's allocation resumes (AllocateEach).
func (v *VNet) setCursors(c []netip.Addr) {
	v.NextIP = c[0]
	if len(c) > 1 {
		v.NextIP6 = c[1]
	}
}

// Route is a subnet announced by a gateway.
type Route struct {
	Prefix   netip.Prefix `json:"prefix"`
	Priority int          `json:"priority"`
}

// Peer is a member of a vnet.
type Peer struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	VNet      string     `json:"vnet"`
	Role      string     `json:"role"`
	PublicKey string     `json:"public_key"`
	OverlayIP netip.Addr `json:"overlay_ip"`
	// OverlayIP6 is the peer's IPv6 address in a dual-stack vnet (absent
	// otherwise).
	OverlayIP6  netip.Addr     `json:"overlay_ip6,omitzero"`
	Endpoints   []string       `json:"endpoints"`
	Tags        []string       `json:"tags"`
	Routes      []Route        `json:"routes"`
	AllowRoutes []netip.Prefix `json:"allow_routes"`
	Ephemeral   bool           `json:"ephemeral"`
	CredHash    string         `json:"cred_hash"`
	TokenID     string         `json:"token_id"`
	CreatedAt   time.Time      `json:"created_at"`
	LastSeen    time.Time      `json:"last_seen"`
	// Drained: an admin moved this gateway's routes to its standbys.
	Drained bool `json:"drained,omitempty"`
	// Relay is the peer's relayed address (ip:port of its TURN
	// allocation); "" when it has none.
	Relay string `json:"relay,omitempty"`
	// WatchedBy names the coordinator holding the peer's network-map watch
	// ("" when none); Watcher is set once the peer has ever watched, after
	// which an agent without a watch counts as offline at once.
	WatchedBy string `json:"watched_by,omitempty"`
	Watcher   bool   `json:"watcher,omitempty"`
	// MaxPriority is the highest route priority the peer's join token
	// let it claim; nil: no cap.
	MaxPriority *int `json:"max_priority,omitempty"`
}

// Addrs lists the peer's overlay addresses: OverlayIP, then OverlayIP6
// when it has one.
func (p *Peer) Addrs() []netip.Addr {
	if p.OverlayIP6.IsValid() {
		return []netip.Addr{p.OverlayIP, p.OverlayIP6}
	}
	return []netip.Addr{p.OverlayIP}
}

// Token is a join token; only the hash of its secret is kept.
type Token struct {
	ID          string         `json:"id"`
	SecretHash  string         `json:"secret_hash"`
	VNet        string         `json:"vnet"`
	Uses        int            `json:"uses"`
	UsesLeft    int            `json:"uses_left"`
	Expires     time.Time      `json:"expires"`
	Tags        []string       `json:"tags"`
	AllowRoutes []netip.Prefix `json:"allow_routes"`
	Ephemeral   bool           `json:"ephemeral"`
	Revoked     bool           `json:"revoked"`
	CreatedAt   time.Time      `json:"created_at"`
	// MaxPriority caps the route priority its gateways may claim; nil:
	// no cap (up to MaxPriority).
	MaxPriority *int `json:"max_priority,omitempty"`
	// CreatedBy names the admin credential that created it; empty for
	// tokens created before this was recorded.
	CreatedBy string `json:"created_by,omitempty"`
	// RevokedAt is when it was revoked; zero if it is not, or if it was
	// revoked by a version that did not record when.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// LastUsed is when a peer last joined with it; zero if none has, or
	// if the join was applied by a version that did not record it.
	LastUsed time.Time `json:"last_used,omitzero"`
}

// Coordinator is one member of the coordinator cluster.
type Coordinator struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIURL   string `json:"api_url"`
	// STUNAddr is where the coordinator answers STUN (host:port); empty
	// when it does not.
	STUNAddr string `json:"stun_addr,omitempty"`
	// RelayIP is the address of the relayed addresses its TURN server
	// allocates (TURN runs on STUNAddr); empty when it allocates none
	// (relaying off, an external relay configured, or a version without
	// one).
	RelayIP string `json:"relay_ip,omitempty"`
	// RelayTLSAddr is where it serves TURN over TLS (host:port); empty
	// when it does not.
	RelayTLSAddr string `json:"relay_tls_addr,omitempty"`
	// FeatureLevel is the feature level of the coordinator's version
	// (fsm.FeatureLevel: which command types it can apply); 0 in records
	// of versions from before levels were recorded.
	FeatureLevel int `json:"feature_level,omitempty"`
	// Version is the coordinator's build version; empty when unknown.
	Version string `json:"version,omitempty"`
}

// Tables is the replicated state. Readers get it through Read and must not
// modify it.
type Tables struct {
	Bootstrapped bool                    `json:"bootstrapped"`
	VNets        map[string]*VNet        `json:"vnets"`
	Peers        map[string]*Peer        `json:"peers"`
	Tokens       map[string]*Token       `json:"tokens"`
	GossipKeys   [][]byte                `json:"gossip_keys"`
	GossipRings  map[string][]GossipKey  `json:"gossip_rings,omitempty"` // per vnet; else GossipKeys (gossipkeys.go)
	Coordinators map[string]*Coordinator `json:"coordinators"`
	// Policies are the vnets' access policies (policy.go), by vnet name;
	// absent from snapshots taken before there were any.
	Policies map[string]*VNetPolicy `json:"policies,omitempty"`
	// AdminTokens are the named admin credentials (admin.go), by id;
	// absent from snapshots taken before there were any.
	AdminTokens map[string]*AdminToken `json:"admin_tokens,omitempty"`
}

func newTables() Tables {
	return Tables{
		VNets:        map[string]*VNet{},
		Peers:        map[string]*Peer{},
		Tokens:       map[string]*Token{},
		Coordinators: map[string]*Coordinator{},
		Policies:     map[string]*VNetPolicy{},
		AdminTokens:  map[string]*AdminToken{},
	}
}

// Change records that a peer changed at Index; with an empty PeerID, the
// vnet-wide part of its peers' maps (such as the gossip keys), or with
// Policy, who sees whom in that vnet (its policy); with an empty VNet too,
// the cluster-wide part of every map.
type Change struct {
	Index  uint64
	VNet   string
	PeerID string
	Policy bool
}

// Store is the in-memory state.
type Store struct {
	mu sync.RWMutex // guards every field below

	index uint64 // the last index readers may see
	// applying is the index of the command being applied (SetIndex).
	applying uint64
	t        Tables
	byName   map[string]map[string]string     // vnet -> name -> peer id
	byIP     map[string]map[netip.Addr]string // vnet -> overlay ip -> peer id
	byKey    map[string]string                // public key -> peer id

	changes []Change // oldest first, Index ascending
	// horizon: a watcher that saw index >= horizon can be caught up from
	// changes; one that saw less needs a full map.
	horizon uint64
	// recorded counts the network-map changes recorded so far.
	recorded uint64
	notify   chan struct{}
}

// New returns an empty store.
func New() *Store {
	s := &Store{notify: make(chan struct{})}
	s.reset(newTables())
	return s
}

// reset installs t and rebuilds the indexes; s.mu must be held (or s unshared).
func (s *Store) reset(t Tables) {
	s.t = t
	s.byName = map[string]map[string]string{}
	s.byIP = map[string]map[netip.Addr]string{}
	s.byKey = map[string]string{}
	for _, p := range t.Peers {
		s.indexPeer(p)
	}
	if s.t.Policies == nil {
		s.t.Policies = map[string]*VNetPolicy{}
	}
	for _, vp := range s.t.Policies {
		vp.decode()
	}
	if s.t.AdminTokens == nil {
		s.t.AdminTokens = map[string]*AdminToken{}
	}
	s.changes = nil
	s.horizon = s.index
}

func (s *Store) indexPeer(p *Peer) {
	if s.byName[p.VNet] == nil {
		s.byName[p.VNet] = map[string]string{}
		s.byIP[p.VNet] = map[netip.Addr]string{}
	}
	s.byName[p.VNet][p.Name] = p.ID
	for _, a := range p.Addrs() {
		s.byIP[p.VNet][a] = p.ID
	}
	s.byKey[p.PublicKey] = p.ID
}

func (s *Store) unindexPeer(p *Peer) {
	delete(s.byName[p.VNet], p.Name)
	for _, a := range p.Addrs() {
		delete(s.byIP[p.VNet], a)
	}
	delete(s.byKey, p.PublicKey)
}

// SetIndex records the log index of the command about to be applied.
// Readers do not see it until Applied, when the command is done: the
// changes it records carry this index, so a reader that saw index N-1
// while the command was half applied asks again for everything after N-1
// and gets all of them. Were N visible with the first change, a fan-out
// round could read N before a second change at N (a removal and the key
// rotation it causes) was recorded, and never ask for it again.
func (s *Store) SetIndex(idx uint64) {
	s.mu.Lock()
	s.applying = idx
	s.mu.Unlock()
}

// Applied makes the index of the command just applied visible to readers.
func (s *Store) Applied(idx uint64) {
	s.mu.Lock()
	if idx > s.index {
		s.index = idx
	}
	s.mu.Unlock()
}

// Index is the index of the last applied command.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// WatchCh returns a channel closed at the next Notify.
func (s *Store) WatchCh() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.notify
}

// Notify wakes every watcher. The FSM calls it once per batch of commands.
func (s *Store) Notify() {
	s.mu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
}

// Read calls fn with the tables under a read lock and the current index.
func (s *Store) Read(fn func(t *Tables, index uint64)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(&s.t, s.index)
}

// PeerIDByName returns the id of the named peer in vnet.
func (s *Store) PeerIDByName(vnet, name string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.byName[vnet][name]
	return id, ok
}

// ReadPeer calls fn under a read lock with the named peer of vnet, and
// reports whether there is one: the lookup by name and the read are one
// step, so a removal cannot fall between them.
func (s *Store) ReadPeer(vnet, name string, fn func(p *Peer)) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := s.t.Peers[s.byName[vnet][name]]
	if p == nil {
		return false
	}
	fn(p)
	return true
}

// PeerIDByKey returns the id of the peer with this WireGuard public key.
func (s *Store) PeerIDByKey(key string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.byKey[key]
	return id, ok
}

// ChangesSince returns the ids of vnet's peers that changed after index
// since, and whether the cluster-wide or vnet-wide part changed. ok is false
// when since is too old to be caught up from the log, or when the vnet's
// policy changed after it (what each peer may see changed at once): the
// caller sends a full map.
func (s *Store) ChangesSince(vnet string, since uint64) (peerIDs []string, global bool, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changesLocked(vnet, since)
}

// ReadChanges is Read and ChangesSince under one lock, so the changes and
// the tables agree.
func (s *Store) ReadChanges(vnet string, since uint64, fn func(t *Tables, index uint64, changed []string, global, ok bool)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids, global, ok := s.changesLocked(vnet, since)
	fn(&s.t, s.index, ids, global, ok)
}

func (s *Store) changesLocked(vnet string, since uint64) (peerIDs []string, global bool, ok bool) {
	if since < s.horizon {
		return nil, false, false
	}
	i := sort.Search(len(s.changes), func(i int) bool { return s.changes[i].Index > since })
	seen := map[string]bool{}
	for _, c := range s.changes[i:] {
		switch {
		case c.VNet == "":
			global = true
		case c.VNet != vnet:
		case c.Policy:
			return nil, false, false
		case c.PeerID == "":
			global = true
		case !seen[c.PeerID]:
			seen[c.PeerID] = true
			peerIDs = append(peerIDs, c.PeerID)
		}
	}
	return peerIDs, global, true
}

// record appends a change at the current index; s.mu must be held.
func (s *Store) record(vnet, peerID string) { s.recordChange(Change{VNet: vnet, PeerID: peerID}) }

// recordPolicy records that vnet's policy changed; s.mu must be held.
func (s *Store) recordPolicy(vnet string) { s.recordChange(Change{VNet: vnet, Policy: true}) }

func (s *Store) recordChange(c Change) {
	if len(s.changes) >= maxChanges {
		drop := len(s.changes) / 4
		s.horizon = s.changes[drop-1].Index
		s.changes = append(s.changes[:0:0], s.changes[drop:]...)
	}
	c.Index = max(s.applying, s.index) // visible to readers at Applied
	s.changes = append(s.changes, c)
	s.recorded++
}

// MapChanges counts the network-map changes applied so far: a peer joined,
// changed or left, or something every map carries. Writes that change no
// map (watch marks, last-seen times) do not count.
func (s *Store) MapChanges() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.recorded
}

// snapshot is the serialized form: the tables and the index they reflect.
type snapshot struct {
	Index  uint64 `json:"index"`
	Tables Tables `json:"tables"`
}

// Snapshot encodes the whole state. The encoding is deterministic: equal
// states give equal bytes.
func (s *Store) Snapshot() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return json.Marshal(snapshot{Index: s.index, Tables: s.t})
}

// Dump encodes the tables alone (not the index): two stores that hold the same
// data dump the same bytes.
func (s *Store) Dump() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := json.Marshal(s.t)
	if err != nil {
		panic(err)
	}
	return b
}

// Restore replaces the state with a snapshot and wakes every watcher (they
// get full maps).
func (s *Store) Restore(data []byte) error {
	var snap snapshot
	snap.Tables = newTables()
	if err := json.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	if snap.Tables.VNets == nil || snap.Tables.Peers == nil || snap.Tables.Tokens == nil || snap.Tables.Coordinators == nil {
		return fmt.Errorf("restore state: snapshot lacks a table")
	}
	s.mu.Lock()
	s.index, s.applying = snap.Index, snap.Index
	s.reset(snap.Tables)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// setAddrs sets the peer's overlay addresses from AllocateEach's answer
// for its vnet's pools.
func (p *Peer) setAddrs(addrs []netip.Addr) {
	p.OverlayIP = addrs[0]
	if len(addrs) > 1 {
		p.OverlayIP6 = addrs[1]
	}
}

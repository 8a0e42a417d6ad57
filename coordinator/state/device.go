package state

import (
	"net/netip"
	"time"

	"github.com/meshd/meshd/coordinator/ipam"
	"github.com/meshd/meshd/pkg/api"
)

// LeavePeer removes peer id at its own request (its credential asked), as
// RemovePeer does. A peer that never came up, that is one that never held
// a network-map watch and leaves within JoinRetryWindow of its join, gives
// its join token the use back (up to the token's uses): its agent undoes a
// join whose first start failed, and the retry must be able to join with
// the same token. It reports whether the use was given back.
func (s *Store) LeavePeer(id string, now time.Time, gossipSeed []byte) (refunded bool, err error) {
	if gossipSeed != nil {
		if err := validSeed(gossipSeed); err != nil {
			return false, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.t.Peers[id]
	if !ok {
		return false, api.Errorf(api.CodeNotFound, "peer %q does not exist", id)
	}
	if t, ok := s.t.Tokens[p.TokenID]; ok && !p.Watcher && now.Sub(p.CreatedAt) < JoinRetryWindow && t.UsesLeft < t.Uses {
		t.UsesLeft++
		refunded = true
	}
	s.removePeerLocked(p, now, gossipSeed)
	return refunded, nil
}

// DeviceSpec is a device to add: a peer without the agent (a stock
// WireGuard client) whose configuration an admin exports.
type DeviceSpec struct {
	PeerID    string   `json:"peer_id"`
	Name      string   `json:"name"`
	VNet      string   `json:"vnet"`
	PublicKey string   `json:"public_key"`
	Tags      []string `json:"tags,omitempty"`
}

// AddDevice adds a peer of role device to a vnet with the next free
// overlay address. A device has no credential (it never calls the API),
// announces no routes and reports no endpoints: the agents learn its
// endpoint from its packets.
func (s *Store) AddDevice(d DeviceSpec, now time.Time) (*Peer, error) {
	if err := ValidName("peer", d.Name); err != nil {
		return nil, err
	}
	if err := ValidKey(d.PublicKey); err != nil {
		return nil, err
	}
	if err := validTags(d.Tags); err != nil {
		return nil, err
	}
	if d.PeerID == "" {
		return nil, api.Errorf(api.CodeInvalidArgument, "peer id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.t.VNets[d.VNet]
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "vnet %q does not exist", d.VNet)
	}
	if _, ok := s.byName[v.Name][d.Name]; ok {
		return nil, api.Errorf(api.CodeConflict, "peer name %q is taken in vnet %q", d.Name, v.Name)
	}
	if _, ok := s.byKey[d.PublicKey]; ok {
		return nil, api.Errorf(api.CodeConflict, "public key is already used by another peer")
	}
	if _, ok := s.t.Peers[d.PeerID]; ok {
		return nil, api.Errorf(api.CodeConflict, "peer id %q already exists", d.PeerID)
	}
	ips := s.byIP[v.Name]
	addrs, cursors, full, err := ipam.AllocateEach(v.pools(), func(a netip.Addr) bool { _, ok := ips[a]; return ok })
	if err != nil {
		return nil, api.Errorf(api.CodeExhausted, "vnet %q has no free overlay address in %s", v.Name, full)
	}
	p := &Peer{
		ID: d.PeerID, Name: d.Name, VNet: v.Name, Role: api.RoleDevice, PublicKey: d.PublicKey,
		Tags: append([]string{}, d.Tags...), CreatedAt: now, LastSeen: now,
	}
	p.setAddrs(addrs)
	v.setCursors(cursors)
	s.t.Peers[p.ID] = p
	s.indexPeer(p)
	s.record(v.Name, p.ID)
	return p, nil
}

package state

import (
	"crypto/hmac"
	"crypto/sha256"
	"slices"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// Gossip keyrings are per vnet. Each vnet's ring (Tables.GossipRings) lists
// its keys primary first; a secondary carries the time, taken from the
// command that replaced it, at which it stopped being primary. The leader
// writes a PruneGossipKeys command once a secondary has been superseded for
// the grace period, and every replica drops the same keys.
//
//	created (CreateVNet with a seed) or first rotation --> [K1]
//	rotation (peer removed, ephemeral peer reaped, admin) --> [K2, K1 superseded at T]
//	prune at T + grace --> [K2]
//
// A vnet without a ring of its own (state written before rings were per
// vnet, or a vnet created by an entry without a seed) uses the cluster-wide
// legacy ring Tables.GossipKeys until its first rotation, which takes the
// legacy keys in as secondaries so the vnet's members switch without a gap.
//
// The randomness comes from the leader: commands carry a seed of 32 random
// bytes, and a vnet's new key is HMAC-SHA256(seed, vnet name), so one seed
// gives every vnet a command touches a key of its own while every replica
// derives the same keys.

// GossipSeedBytes is the length of the seed a rotating command carries.
const GossipSeedBytes = 32

// MaxGossipKeys bounds a vnet's ring: a burst of removals inside the grace
// period drops the oldest secondaries first. Agents keep encrypting with
// the key they use until they switch, whatever the ring lists, so a short
// ring never cuts a member off.
const MaxGossipKeys = 8

// GossipKey is one key of a vnet's gossip ring.
type GossipKey struct {
	Key []byte `json:"key"`
	// Superseded is when a newer key became primary (the time carried by
	// that command); zero for the primary.
	Superseded time.Time `json:"superseded,omitzero"`
}

// DeriveGossipKey is the gossip key of vnet made from a command's seed.
func DeriveGossipKey(seed []byte, vnet string) []byte {
	m := hmac.New(sha256.New, seed)
	m.Write([]byte("meshd gossip key v1\x00"))
	m.Write([]byte(vnet))
	return m.Sum(nil)
}

// ValidGossipSeed checks a command's seed: none, or GossipSeedBytes long.
func ValidGossipSeed(seed []byte) error {
	if seed == nil {
		return nil
	}
	return validSeed(seed)
}

func validSeed(seed []byte) error {
	if len(seed) != GossipSeedBytes {
		return api.Errorf(api.CodeInvalidArgument, "gossip key seed must be %d bytes, not %d", GossipSeedBytes, len(seed))
	}
	return nil
}

// VNetGossipKeys is the keyring the peers of vnet get, primary first: the
// vnet's own ring, or the cluster-wide one while it has none.
func (t *Tables) VNetGossipKeys(vnet string) [][]byte {
	ring, ok := t.GossipRings[vnet]
	if !ok {
		out := make([][]byte, len(t.GossipKeys))
		for i, k := range t.GossipKeys {
			out[i] = slices.Clone(k)
		}
		return out
	}
	out := make([][]byte, len(ring))
	for i, k := range ring {
		out[i] = slices.Clone(k.Key)
	}
	return out
}

// NextGossipKeyExpiry is the earliest time a secondary key of any vnet is
// due to be pruned with this grace; zero when there is none.
func (t *Tables) NextGossipKeyExpiry(grace time.Duration) time.Time {
	var next time.Time
	for _, ring := range t.GossipRings {
		for _, k := range ring {
			if k.Superseded.IsZero() {
				continue
			}
			if at := k.Superseded.Add(grace); next.IsZero() || at.Before(next) {
				next = at
			}
		}
	}
	return next
}

// InitGossipRing gives a new vnet a ring of its own: one key derived from
// seed. A vnet that already has a ring keeps it.
func (s *Store) InitGossipRing(vnet string, seed []byte) error {
	if err := validSeed(seed); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.VNets[vnet]; !ok {
		return api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet)
	}
	if _, ok := s.t.GossipRings[vnet]; ok {
		return nil
	}
	if s.t.GossipRings == nil {
		s.t.GossipRings = map[string][]GossipKey{}
	}
	s.t.GossipRings[vnet] = []GossipKey{{Key: DeriveGossipKey(seed, vnet)}}
	s.record(vnet, "")
	return nil
}

// RotateGossipKeys makes a key derived from seed the primary of vnet's ring
// ("" rotates every vnet, each with its own key) and marks the previous
// keys superseded at now. It returns the vnets rotated, sorted.
func (s *Store) RotateGossipKeys(vnet string, seed []byte, now time.Time) ([]string, error) {
	if err := validSeed(seed); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	if vnet == "" {
		for _, v := range s.sortedVNets() {
			names = append(names, v.Name)
		}
	} else {
		if _, ok := s.t.VNets[vnet]; !ok {
			return nil, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet)
		}
		names = []string{vnet}
	}
	for _, n := range names {
		s.rotateLocked(n, seed, now)
	}
	return names, nil
}

// rotateLocked puts vnet's key from seed first; s.mu is held.
func (s *Store) rotateLocked(vnet string, seed []byte, now time.Time) {
	old, ok := s.t.GossipRings[vnet]
	if !ok { // first rotation: the legacy keys stay accepted for the grace
		for _, k := range s.t.GossipKeys {
			old = append(old, GossipKey{Key: k})
		}
	}
	key := DeriveGossipKey(seed, vnet)
	ring := []GossipKey{{Key: key}}
	for _, k := range old {
		if string(k.Key) == string(key) {
			continue
		}
		if k.Superseded.IsZero() {
			k.Superseded = now
		}
		ring = append(ring, k)
	}
	if len(ring) > MaxGossipKeys {
		ring = ring[:MaxGossipKeys]
	}
	if s.t.GossipRings == nil {
		s.t.GossipRings = map[string][]GossipKey{}
	}
	s.t.GossipRings[vnet] = ring
	s.record(vnet, "")
}

// PruneGossipKeys drops every secondary key superseded grace or longer
// before now and returns the vnets whose ring changed, sorted.
func (s *Store) PruneGossipKeys(now time.Time, grace time.Duration) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []string
	for vnet, ring := range s.t.GossipRings {
		kept := slices.DeleteFunc(slices.Clone(ring), func(k GossipKey) bool {
			return !k.Superseded.IsZero() && !now.Before(k.Superseded.Add(grace))
		})
		if len(kept) == len(ring) {
			continue
		}
		s.t.GossipRings[vnet] = kept
		changed = append(changed, vnet)
	}
	slices.Sort(changed)
	for _, vnet := range changed {
		s.record(vnet, "")
	}
	return changed
}

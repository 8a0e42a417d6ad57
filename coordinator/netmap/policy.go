package netmap

import (
	"net/netip"
	"slices"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

// Directory is vnet's peers as its policy sees them (name, tags, overlay
// address, announced subnets), sorted by name, with ids[i] the id of the
// i-th. The tags of the vnet's join tokens count as known, so a policy may
// name a tag before any peer carries it.
func Directory(t *state.Tables, vnet string) (d *policy.Directory, ids []string) {
	var ps []*state.Peer
	for _, p := range t.Peers {
		if p.VNet == vnet {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b *state.Peer) int { return compare(a.Name, b.Name) })
	peers := make([]policy.Peer, len(ps))
	ids = make([]string, len(ps))
	for i, p := range ps {
		peers[i] = dirPeer(p)
		ids[i] = p.ID
	}
	var tags []string
	for _, tok := range t.Tokens {
		if tok.VNet == vnet {
			tags = append(tags, tok.Tags...)
		}
	}
	slices.Sort(tags)
	return policy.NewDirectory(peers, slices.Compact(tags)...), ids
}

func dirPeer(p *state.Peer) policy.Peer {
	dp := policy.Peer{Name: p.Name, Tags: p.Tags}
	for _, a := range p.Addrs() {
		if a.IsValid() {
			dp.Addrs = append(dp.Addrs, a)
		}
	}
	for _, r := range p.Routes {
		dp.Subnets = append(dp.Subnets, r.Prefix)
	}
	return dp
}

// View is who may see whom in one vnet at one index: the vnet's policy
// applied to its peers (policy.Visibility). A peer's map holds only the
// peers it sees. A vnet without a policy has no View (nil): every peer
// sees every other, and every method of a nil *View says so.
type View struct {
	Index uint64
	ids   []string       // directory index -> peer id
	byID  map[string]int // peer id -> directory index
	dir   *policy.Directory
	vis   *policy.Visibility
}

// NewView computes vnet's View at index; nil when the vnet has no policy.
// The cost is one pass over the vnet's peers and one over the policy's
// rules with bitset operations.
func NewView(t *state.Tables, index uint64, vnet string) *View {
	pol := t.Policy(vnet)
	if pol == nil {
		return nil
	}
	d, ids := Directory(t, vnet)
	v := &View{Index: index, ids: ids, byID: make(map[string]int, len(ids)), dir: d, vis: pol.Visibility(d)}
	for i, id := range ids {
		v.byID[id] = i
	}
	linkGateways(d, v.vis)
	return v
}

// linkGateways lets gateways that announce the same subnet (an HA pair)
// see each other whatever the policy says: they watch each other's health
// and hand the subnet over.
func linkGateways(d *policy.Directory, vis *policy.Visibility) {
	var gws []int
	for i := range d.Len() {
		if len(d.Peer(i).Subnets) > 0 {
			gws = append(gws, i)
		}
	}
	for x, i := range gws {
		for _, j := range gws[x+1:] {
			if shareAny(d.Peer(i).Subnets, d.Peer(j).Subnets) {
				vis.Link(i, j)
			}
		}
	}
}

func shareAny(a, b []netip.Prefix) bool {
	for _, p := range a {
		for _, q := range b {
			if p == q {
				return true
			}
		}
	}
	return false
}

// Reuse returns v as the View at index when the peers that changed since
// v's index (changed, in t at index) are the same to the policy as in v
// and the policy did not change (the caller knows): endpoint changes and
// the like, most of a vnet's changes, then cost no new View. It returns
// nil when a new View is needed.
func (v *View) Reuse(t *state.Tables, index uint64, changed []string) *View {
	if v == nil {
		return nil
	}
	for _, id := range changed {
		p, ok := t.Peers[id]
		i, had := v.byID[id]
		if !ok || !had {
			return nil
		}
		a, b := dirPeer(p), v.dir.Peer(i)
		if a.Name != b.Name || !slices.Equal(a.Tags, b.Tags) || !slices.Equal(a.Addrs, b.Addrs) || !slices.Equal(a.Subnets, b.Subnets) {
			return nil
		}
	}
	w := *v
	w.Index = index
	return &w
}

// Sees reports whether peer a may see peer b (their keys and endpoints).
// A peer always sees itself.
func (v *View) Sees(a, b string) bool {
	if v == nil || a == b {
		return true
	}
	i, ok := v.byID[a]
	j, ok2 := v.byID[b]
	return ok && ok2 && v.vis.Sees(i, j)
}

// Visible is how many other peers peer id sees.
func (v *View) Visible(id string) int {
	if i, ok := v.byID[id]; ok {
		return v.vis.Count(i)
	}
	return 0
}

// Has reports whether peer id is in the view.
func (v *View) Has(id string) bool {
	if v == nil {
		return false
	}
	_, ok := v.byID[id]
	return ok
}

// SameEntry reports whether peer id is the same to the policy in v and in
// o (present in both with the same name, tags, address and subnets): then
// what it sees, and who sees it, changed only if the policy did.
func (v *View) SameEntry(o *View, id string) bool {
	if v == nil || o == nil {
		return v == o
	}
	i, ok := v.byID[id]
	j, ok2 := o.byID[id]
	if !ok || !ok2 {
		return false
	}
	a, b := v.dir.Peer(i), o.dir.Peer(j)
	return a.Name == b.Name && slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Addrs, b.Addrs) && slices.Equal(a.Subnets, b.Subnets)
}

// FullIn is Full with the vnet's View computed beforehand (nil: no
// policy), so that the maps of many watchers share it.
func FullIn(t *state.Tables, index uint64, selfID string, v *View) *api.MapUpdate {
	self, ok := t.Peers[selfID]
	if !ok {
		return nil
	}
	u := &api.MapUpdate{Index: index, Full: true, VNet: self.VNet, GossipKeys: t.VNetGossipKeys(self.VNet), Coordinators: Coordinators(t), STUNServers: STUNServers(t)}
	if vn, ok := t.VNets[self.VNet]; ok {
		u.Overlay = vn.Overlay.String()
		if vn.Overlay6.IsValid() {
			u.Overlay6 = vn.Overlay6.String()
		}
	}
	sp := Peer(self)
	u.Self = &sp
	if p := t.Policy(self.VNet); p != nil {
		if b, err := p.MarshalJSON(); err == nil {
			u.Policy = b
		}
	}
	if i, ok := v.index(selfID); ok {
		u.Peers = make([]api.MapPeer, 0, v.vis.Count(i))
		for j := range v.vis.Peers(i) { // in name order
			if p, ok := t.Peers[v.ids[j]]; ok {
				u.Peers = append(u.Peers, Peer(p))
			}
		}
		return u
	}
	if v != nil { // not in the view: it sees no one
		return u
	}
	for _, p := range t.Peers {
		if p.VNet == self.VNet && p.ID != selfID {
			u.Peers = append(u.Peers, Peer(p))
		}
	}
	slices.SortFunc(u.Peers, func(a, b api.MapPeer) int { return compare(a.Name, b.Name) })
	return u
}

func (v *View) index(id string) (int, bool) {
	if v == nil {
		return 0, false
	}
	i, ok := v.byID[id]
	return i, ok
}

// DeltaIn is Delta for a watcher of a vnet with a policy, whose View at
// index is v (nil: no policy, the same as Delta). The watcher held the
// map of some earlier index, whose View is not known: a changed peer it
// may not see now is sent as removed (a no-op if it did not have it), and
// if its own entry changed (its subnets decide what it sees) it gets a
// full map.
func DeltaIn(t *state.Tables, index uint64, selfID string, changed []string, global bool, v *View) *api.MapUpdate {
	if v == nil {
		return Delta(t, index, selfID, changed, global)
	}
	if slices.Contains(changed, selfID) {
		return FullIn(t, index, selfID, v)
	}
	u := Delta(t, index, selfID, changed, global)
	if u == nil || u.SelfRemoved {
		return u
	}
	kept := u.Peers[:0]
	for _, p := range u.Peers {
		if v.Sees(selfID, p.ID) {
			kept = append(kept, p)
		} else {
			u.Removed = append(u.Removed, p.ID)
		}
	}
	u.Peers = kept
	return u
}

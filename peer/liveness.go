package peer

import (
	"net/netip"
	"time"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/wgcfg"
)

// Liveness is where a gateway's health comes from: the gateway's own
// statements, answering this peer's probes through the tunnels
// (peer/liveness). Gossip, which any holder of the vnet's key can write,
// speaks only for peers liveness has never heard from (a gateway of a
// version without the responder). Methods are called by the loop only,
// except Changed.
type Liveness interface {
	// Changed is signalled when what Peers reports may have changed.
	Changed() <-chan struct{}
	// Peers reports, by peer ID, the facts of the targets that have
	// answered at least once.
	Peers() map[string]health.State
	// Set replaces who may probe this peer (the whole map) and whom this
	// peer probes (Target), fast or slowly.
	Set(peers []LivePeer)
	// LastProbed is when another peer last probed this one (zero:
	// never): evidence that the mesh still reaches it.
	LastProbed() time.Time
	// LastFastProbed is when a client sending through this peer last
	// probed it (zero: never).
	LastFastProbed() time.Time
	Close() error
}

// LivePeer is one peer of the map as Liveness sees it.
type LivePeer struct {
	ID     string
	Key    wgcfg.Key
	Addr   netip.Addr
	Target bool // a gateway: probe it
	Fast   bool // its traffic flows, or it shares a prefix with this gateway
}

// ActiveFor is how long after this peer last sent to a gateway that
// gateway is probed fast.
const ActiveFor = 5 * time.Second

// proberLiveness is Liveness over a liveness.Prober.
type proberLiveness struct {
	p   *liveness.Prober
	ids map[wgcfg.Key]string
}

func newProberLiveness(cfg liveness.Config) (Liveness, error) {
	p, err := liveness.New(cfg)
	if err != nil {
		return nil, err
	}
	return &proberLiveness{p: p, ids: map[wgcfg.Key]string{}}, nil
}

func (l *proberLiveness) Changed() <-chan struct{} { return l.p.Changed() }

func (l *proberLiveness) Peers() map[string]health.State {
	out := map[string]health.State{}
	for k, id := range l.ids {
		if o, ok := l.p.Observe(k); ok && !o.LastHeard.IsZero() {
			out[id] = health.State{Alive: o.Alive, LANOK: o.LANOK, Forwarding: o.FwdOK}
		}
	}
	return out
}

func (l *proberLiveness) Set(peers []LivePeer) {
	keys := make([]wgcfg.Key, 0, len(peers))
	var targets []liveness.Target
	ids := map[wgcfg.Key]string{}
	for _, p := range peers {
		keys = append(keys, p.Key)
		if p.Target {
			targets = append(targets, liveness.Target{Key: p.Key, Addr: p.Addr, Fast: p.Fast})
			ids[p.Key] = p.ID
		}
	}
	l.p.SetPeers(keys)
	l.p.SetTargets(targets)
	l.ids = ids
}

func (l *proberLiveness) LastProbed() time.Time { return l.p.LastProbed() }

func (l *proberLiveness) LastFastProbed() time.Time { return l.p.LastFastProbed() }

func (l *proberLiveness) Close() error { return l.p.Close() }

// A gateway that hears none of the other gateways counts as cut off from
// the mesh once no peer has probed it for IsolatedAfter, if clients were
// sending through it (they probe it every 40 ms) within FastClientsWithin;
// otherwise (idle clients probe once a second) for IsolatedIdleAfter.
const (
	IsolatedAfter     = 500 * time.Millisecond
	IsolatedIdleAfter = 2500 * time.Millisecond
	FastClientsWithin = 2 * time.Second
)

// isolation says whether this gateway is cut off from the mesh at now: it
// probes other gateways and none answers, and no peer has probed it for
// the window above. When it is not, but might become so without another
// event, until is when to look again. A gateway that is cut off lets its
// LAN VIP go at once, so its partner, which sees it dead, can take it.
func isolation(targets map[string]bool, live map[string]health.State, lastProbed, lastFast, now time.Time) (isolated bool, until time.Time) {
	if len(targets) == 0 {
		return false, time.Time{}
	}
	for id := range targets {
		if s, ok := live[id]; !ok || s.Alive {
			return false, time.Time{} // one answers, or has not been heard yet
		}
	}
	window := IsolatedAfter
	if lastFast.IsZero() || now.Sub(lastFast) >= FastClientsWithin {
		window = IsolatedIdleAfter
	}
	end := lastProbed.Add(window)
	if !now.Before(end) {
		return true, time.Time{}
	}
	if window == IsolatedAfter && lastFast.Add(FastClientsWithin).Before(end) {
		end = lastFast.Add(FastClientsWithin) // the window widens then: look again
	}
	return false, end
}

// selfFlags is what this peer's statements say of it.
func selfFlags(s selfCheck) uint32 {
	var f byte
	if !s.lanDown {
		f |= disco.StatusLANOK
	}
	if !s.fwdOff {
		f |= disco.StatusFwdOK
	}
	return uint32(f)
}

// livePeers lists the map for Liveness: every peer may probe this one; the
// gateways are targets, fast while this peer sends to them (or always
// without a bind to tell), and always when this peer is a gateway itself
// (it must tell quickly whether it is cut off, isolated).
func (a *Agent) livePeers(st *state, now time.Time) []LivePeer {
	own := map[string]bool{}
	if st.nm.self != nil {
		for _, r := range st.nm.self.Routes {
			own[r.Prefix] = true
		}
	}
	out := make([]LivePeer, 0, len(st.nm.peers))
	for id, p := range st.nm.peers {
		key, err := wgcfg.ParseKey(p.PublicKey)
		if err != nil {
			continue
		}
		addr, err := netip.ParseAddr(p.OverlayIP)
		if err != nil {
			continue
		}
		lp := LivePeer{ID: id, Key: key, Addr: addr, Target: len(p.Routes) > 0}
		if lp.Target {
			lp.Fast = a.bind == nil || len(own) > 0 || now.Sub(a.bind.LastSend(key)) < ActiveFor
		}
		out = append(out, lp)
	}
	return out
}

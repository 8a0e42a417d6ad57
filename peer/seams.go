package peer

import (
	"context"
	"net/netip"
	"time"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/vip"
	"github.com/meshd/meshd/pkg/api"
)

// The agent's boundaries besides the engine (engine.Engine) and the OS
// routes (router.Router): the coordinators, health gossip, a gateway's own
// checks and its LAN VIP (vip.VIP). Each has an implementation for the
// real thing and a fake for tests: controlclient.Client, health.Gossip and
// health.Fake, osChecker, vip.New and vip.Fake.

// Control is the agent's line to the coordinators. Its methods may be
// called from any goroutine.
type Control interface {
	// Watch holds one network-map stream resuming after index since and
	// calls fn with every update, in order, until the stream ends or ctx
	// is done. controlclient.ErrRemoved, ErrCredentialRefused and
	// ErrProtocol end the agent; other errors are retried.
	Watch(ctx context.Context, since uint64, fn func(*api.MapUpdate)) error
	// Heartbeat reports liveness; endpoints and relay, when not nil,
	// replace what was reported before. ErrCredentialRefused and
	// ErrProtocol end the agent (as from Relay).
	Heartbeat(ctx context.Context, endpoints []string, relay *string) error
	// Relay fetches the relays this peer may use and a credential.
	Relay(ctx context.Context) (*api.RelayConfig, error)
	// SetCoordinators replaces the coordinator URLs tried.
	SetCoordinators(urls []string)
	// Coordinators lists the URLs known, the one in use first.
	Coordinators() []string
}

var _ Control = (*controlclient.Client)(nil)

// Health is this peer's membership in its vnet's health gossip: what it
// says of itself and what it hears of the others. It reports facts per
// peer ("alive", "LAN OK", "forwarding OK"); the agent decides what they
// mean (hold-down, failover). Methods may be called from any goroutine
// and never block for long, except Join and Leave.
type Health interface {
	// Changed is signalled (a channel of capacity one) when what Peers
	// reports may have changed.
	Changed() <-chan struct{}
	// Peers reports every peer heard of, by peer ID.
	Peers() map[string]health.State
	// Members counts the members that answer, this one included.
	Members() int
	// SetSelf replaces what this peer says of itself.
	SetSelf(m health.Meta)
	// SetKeys installs a new keyring, primary first, switching to the
	// new primary after grace.
	SetKeys(keys [][]byte, grace time.Duration)
	// Join contacts seeds (overlay addresses); it may take seconds.
	Join(seeds []string) (int, error)
	// Leave says goodbye and stops; nothing of it runs afterwards.
	Leave(timeout time.Duration)
}

var (
	_ Health = (*health.Gossip)(nil)
	_ Health = (*health.Fake)(nil)
)

// newGossip starts the real health gossip.
func newGossip(cfg health.Config) (Health, error) { return health.New(cfg) }

// Checker runs a gateway's own checks. Its methods may block for up to
// their wait; the agent calls them off its loop.
type Checker interface {
	// Forwarding reports whether IPv4 forwarding is on.
	Forwarding() (bool, error)
	// LANReachable reports whether addr answers ARP on dev within wait.
	LANReachable(dev string, addr netip.Addr, wait time.Duration) (bool, error)
}

// osChecker reads the sysctl and probes the LAN with ARP.
type osChecker struct{}

var _ Checker = osChecker{}

func (osChecker) Forwarding() (bool, error) { return router.ForwardingEnabled() }

func (osChecker) LANReachable(dev string, addr netip.Addr, wait time.Duration) (bool, error) {
	return vip.Reachable(dev, addr, wait)
}

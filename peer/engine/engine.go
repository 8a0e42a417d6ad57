// Package engine applies a desired WireGuard configuration to an interface.
// An Engine is handed the whole wanted wgcfg.Config every time and applies
// the difference from what it applied last; the same Config twice is a no-op
// that returns ErrNoChanges.
//
// Userspace runs wireguard-go on a TUN device (with the TUN and UDP segment
// offloads wireguard-go enables on Linux), optionally over a peer/bind
// socket layer that picks each peer's path (direct or relayed), and answers
// the standard UAPI socket, so `wg show` works on it. Kernel drives the Linux module through
// wgctrl, and enforces the policy with an nftables table on its interface
// (nftFilter). Fake records what it was asked to do, for tests.
package engine

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/peer/wgcfg"
)

// ErrNoChanges is returned by Reconfig when the interface already has the
// wanted configuration.
var ErrNoChanges = errors.New("no changes")

// DefaultMTU is the MTU of the mesh interface: 1500 minus the WireGuard,
// UDP and IPv6 overheads.
const DefaultMTU = 1420

// PeerStatus is what the engine knows of one peer.
type PeerStatus struct {
	PublicKey     wgcfg.Key
	Endpoint      netip.AddrPort // the endpoint in use (learned or configured)
	LastHandshake time.Time      // zero: never
	RxBytes       uint64
	TxBytes       uint64
}

// Engine is a WireGuard interface under meshd's control.
type Engine interface {
	// Name is the interface name.
	Name() string
	// Reconfig makes the interface match cfg (normalized): it adds, changes
	// and removes peers as needed and returns ErrNoChanges when nothing
	// differs. After an error the next call reapplies cfg in full.
	Reconfig(cfg *wgcfg.Config) error
	// Status reports every configured peer.
	Status() ([]PeerStatus, error)
	// Close removes the interface.
	Close() error
}

// parseUAPIGet reads the peers of a UAPI "get" answer.
func parseUAPIGet(s string) ([]PeerStatus, error) {
	var out []PeerStatus
	var cur *PeerStatus
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out = append(out, *cur)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("uapi: bad public key %q", v)
			}
			cur = &PeerStatus{}
			copy(cur.PublicKey[:], b)
		case "endpoint":
			if cur != nil {
				cur.Endpoint, _ = netip.ParseAddrPort(v)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.RxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.TxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	return out, sc.Err()
}

// applied remembers the configuration an engine last applied, so that
// Reconfig sends only the difference; Fake, Userspace and Kernel share it.
type applied struct {
	mu  sync.Mutex
	cfg *wgcfg.Config // guarded by mu: what the device has; nil after an error (the next call applies in full)
}

// reconfig calls set with the previous configuration (nil: unknown) unless
// want is already in place, and remembers want when set succeeds.
func (a *applied) reconfig(want *wgcfg.Config, set func(old *wgcfg.Config) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg != nil && a.cfg.Equal(want) {
		return ErrNoChanges
	}
	if err := set(a.cfg); err != nil {
		a.cfg = nil
		return err
	}
	a.cfg = want.Clone()
	return nil
}

func (a *applied) get() *wgcfg.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg.Clone()
}

package peer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
)

// The workers: goroutines that do what may block (network, ARP, gossip
// joins) for the loop. Each runs until ctx is done, talks to the loop only
// through its channels, and stops every timer it made before returning.

// watchLoop holds the network-map watch, reconnecting with backoff and
// resuming from the last index; with every coordinator down the mesh keeps
// running on the last map (and keeps failing over on health).
func (a *Agent) watchLoop(ctx context.Context, since uint64) error {
	backoff := 100 * time.Millisecond
	for {
		start := a.clk.Now()
		err := a.cc.Watch(ctx, since, func(u *api.MapUpdate) {
			since = max(since, u.Index)
			ev := watchEvent{update: u}
			if urls := a.cc.Coordinators(); len(urls) > 0 {
				ev.coordinator = urls[0]
			}
			send(ctx, a.watchCh, ev)
		})
		if ctx.Err() != nil {
			return nil
		}
		send(ctx, a.watchCh, watchEvent{}) // the stream is closed
		if errors.Is(err, controlclient.ErrRemoved) || errors.Is(err, controlclient.ErrCredentialRefused) || errors.Is(err, controlclient.ErrProtocol) {
			a.log.Error("stopping", "reason", err)
			return err
		}
		if a.clk.Now().Sub(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		a.log.Warn("network map watch interrupted; the mesh keeps running on the last map", "err", err, "retry_in", backoff)
		if !clock.Sleep(ctx, a.clk, backoff+rand.N(backoff/2+1)) {
			return nil
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// heartbeatLoop reports liveness, endpoints and the relayed address:
// every HeartbeatEvery, and at once when the bind's discovery changes.
// reported are the endpoints the join reported.
func (a *Agent) heartbeatLoop(ctx context.Context, reported []string) error {
	tick := a.clk.NewTicker(HeartbeatEvery)
	defer tick.Stop()
	reportedRelay := ""
	for {
		var stun []string
		if p := a.stun.Load(); p != nil {
			stun = *p
		}
		var eps []string
		var relay *string
		if a.bind != nil {
			d := a.bind.Discovery()
			eps = a.filterEndpoints(addrStrings(d.Endpoints()))
			if r := addrString(d.Relay); r != reportedRelay {
				relay = &r
			}
		} else {
			eps = a.endpointsToReport(ctx, stun)
		}
		var sendEPs []string
		if eps != nil && !slices.Equal(eps, reported) {
			sendEPs = eps
		}
		err := a.cc.Heartbeat(ctx, sendEPs, relay)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, controlclient.ErrCredentialRefused), errors.Is(err, controlclient.ErrProtocol):
			a.log.Error("stopping", "reason", err)
			return err
		case err != nil:
			a.log.Debug("heartbeat", "err", err)
		case sendEPs != nil || relay != nil:
			if sendEPs != nil {
				reported = sendEPs
			}
			if relay != nil {
				reportedRelay = *relay
			}
			a.log.Info("endpoints reported", "endpoints", sendEPs, "relay", relay)
			if sendEPs != nil {
				send(ctx, a.reportCh, reportEvent{endpoints: sendEPs})
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		case <-a.hbKick:
			// Do not hammer coordinators that refuse; the ticker retries.
			if err != nil && !clock.Sleep(ctx, a.clk, time.Second) {
				return nil
			}
		}
	}
}

// discoveryLoop reports at once what the bind learns of this host's
// reachability (a new reflexive address, a relay allocation, a move to
// another network), after a short pause that lets a burst settle.
func (a *Agent) discoveryLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.bind.Changed():
		}
		if !clock.Sleep(ctx, a.clk, 100*time.Millisecond) {
			return nil
		}
		select {
		case a.hbKick <- struct{}{}:
		default:
		}
	}
}

// relayLoop keeps the bind supplied with relays and a fresh credential.
func (a *Agent) relayLoop(ctx context.Context) error {
	for {
		wait := 5 * time.Second
		rc, err := a.cc.Relay(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, controlclient.ErrCredentialRefused), errors.Is(err, controlclient.ErrProtocol):
			a.log.Error("stopping", "reason", err)
			return err
		case err != nil:
			a.log.Debug("relay credentials", "err", err)
		default:
			a.bind.SetRelays(*rc)
			if left := rc.Expires.Sub(a.clk.Now()); left > 0 {
				wait = max(left/2, 10*time.Second)
			}
		}
		if !clock.Sleep(ctx, a.clk, wait) {
			return nil
		}
	}
}

// selfCheckEvery paces a gateway's own checks; lanCheckWait bounds the
// ARP probe of one round.
const (
	selfCheckEvery = 50 * time.Millisecond
	lanCheckWait   = 50 * time.Millisecond
)

// selfCheckLoop runs a gateway's own checks every selfCheckEvery and hands
// each round to the loop, which judges it (selfCheck): IPv4 forwarding,
// and with --lan-check whether the LAN address answers ARP.
func (a *Agent) selfCheckLoop(ctx context.Context) error {
	tick := a.clk.NewTicker(selfCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		}
		var r checkResult
		var err error
		if r.forwarding, err = a.cfg.Checker.Forwarding(); err != nil {
			a.log.Debug("forwarding check", "err", err)
		}
		if a.cfg.LANCheck.IsValid() {
			r.lanChecked = true
			if r.lanReachable, err = a.cfg.Checker.LANReachable(a.cfg.LANDev, a.cfg.LANCheck, lanCheckWait); err != nil {
				a.log.Debug("lan check", "err", err)
			}
		}
		if !send(ctx, a.checkCh, r) {
			return nil
		}
	}
}

// vipRetry is how soon a claim the LAN refused (another host still
// answers for the VIP) is tried again.
const vipRetry = 50 * time.Millisecond

// vipLoop makes this gateway own the LAN VIP while the loop wants it, and
// releases it when the loop stops wanting it or the agent stops.
func (a *Agent) vipLoop(ctx context.Context) error {
	retry := clock.Stopped(a.clk)
	defer retry.Stop()
	defer a.vip.Release()
	wanted := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case wanted = <-a.vipCh:
		case <-retry.C():
		}
		if !wanted {
			retry.Stop()
			a.vip.Release()
			continue
		}
		if a.vip.Owned() {
			continue
		}
		if err := a.vip.Claim(); err != nil {
			// The old owner has not let go yet, or the pair cannot gossip.
			a.log.Debug("virtual IP not free yet", "err", err)
			retry.Reset(vipRetry)
		}
	}
}

// joinFanout is how many seeds a gossip join contacts at once.
const joinFanout = 4

// joinLoop contacts gossip seeds for the loop, one request at a time; a
// newer request replaces one not yet started. It tries the seeds in a
// random order, joinFanout at once (a seed behind a tunnel that is still
// coming up can take a connect timeout), and stops at the first batch in
// which one answers (gossip spreads the rest). Stopping the agent waits
// for one batch at most.
func (a *Agent) joinLoop(ctx context.Context) error {
	for {
		var req joinRequest
		select {
		case <-ctx.Done():
			return nil
		case req = <-a.joinCh:
		}
		seeds := slices.Clone(req.seeds)
		rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
		for len(seeds) > 0 && ctx.Err() == nil {
			batch := seeds[:min(joinFanout, len(seeds))]
			seeds = seeds[len(batch):]
			var wg sync.WaitGroup
			var answered atomic.Bool
			for _, s := range batch {
				wg.Go(func() {
					if n, err := req.h.Join([]string{s}); n > 0 {
						answered.Store(true)
					} else {
						a.log.Debug("gossip join", "seed", s, "err", err)
					}
				})
			}
			wg.Wait()
			if answered.Load() {
				break
			}
		}
	}
}

// localServer answers the local API on a unix socket in the state dir.
type localServer struct {
	srv *http.Server
	ln  net.Listener
}

// serveLocal opens the local API socket, which only root (its owner) can
// open; run serves it.
func (a *Agent) serveLocal() (*localServer, error) {
	path := filepath.Join(a.cfg.StateDir, SocketName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local api: %w", err)
	}
	return &localServer{srv: &http.Server{Handler: a.localMux(), ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

// run serves until ctx is done, then closes the socket and waits for the
// server to stop.
func (s *localServer) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.srv.Serve(s.ln) })
	<-ctx.Done()
	s.srv.Close()
	wg.Wait()
	return nil
}

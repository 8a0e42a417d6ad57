package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/pkg/api"
)

// upgradeFrom is the commit whose binary the rolling upgrade starts from
// (as in e2e/upgrade_test.go).
const upgradeFrom = "81d4a53"

// rollingUpgrade starts a 3-node loopback cluster of upgradeFrom's binary
// and replaces the coordinators with this one, one at a time (the
// followers, then the leader after it hands its leadership on), under
// token creations every 10 ms; the figure is the longest gap between
// acknowledged writes while a coordinator restarts on the new binary.
func rollingUpgrade(ctx context.Context, dir string) (*Figure, error) {
	oldBin, err := harness.BinaryAt(upgradeFrom)
	if err != nil {
		return nil, err
	}
	c, err := harness.NewCluster(dir, 3)
	if err != nil {
		return nil, err
	}
	newBin := c.Bin
	c.Bin = oldBin
	if err := c.StartAll(); err != nil {
		c.Close()
		return nil, err
	}
	defer c.Close()
	leader, err := c.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	admin, err := c.Admin()
	if err != nil {
		return nil, err
	}
	baseline, err := writeGaps(ctx, admin, func() error { return nil }, 3*time.Second)
	if err != nil {
		return nil, err
	}
	restart := func(n *harness.Node) error {
		n.Proc.Stop(10 * time.Second)
		if err := n.Proc.Err(); err != nil {
			return fmt.Errorf("%s ended with %v on SIGTERM", n.Name, err)
		}
		c.Bin = newBin
		if err := c.Start(n); err != nil {
			return err
		}
		if err := c.WaitReady(ctx, 30*time.Second); err != nil {
			return err
		}
		_, err := c.WaitLeader(ctx, 30*time.Second)
		return err
	}
	gaps := map[string]any{}
	var worst time.Duration
	var order []*harness.Node // the followers, then the leader
	for _, n := range c.Nodes {
		if n != leader {
			order = append(order, n)
		}
	}
	for _, n := range append(order, leader) {
		gap, err := writeGaps(ctx, admin, func() error {
			time.Sleep(500 * time.Millisecond) // steady writes before the restart
			if n == leader {
				cl, err := c.Admin(n.URL())
				if err != nil {
					return err
				}
				var moved api.LeadershipTransfer
				if err := cl.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leadership", nil, &moved); err != nil {
					return fmt.Errorf("transfer leadership from %s: %w", n.Name, err)
				}
			}
			return restart(n)
		}, time.Second)
		if err != nil {
			return nil, err
		}
		role := "follower"
		if n == leader {
			role = "leader (leadership handed on first)"
		}
		gaps[n.Name] = map[string]any{"role": role, "outage_s": gap.Seconds()}
		worst = max(worst, gap)
	}
	return &Figure{
		Value: worst.Seconds(), Unit: "s", Target: "<= 1.5 s (as a leader failover)",
		Baseline: baseline.Seconds(), BaselineWhat: "longest gap with no restart",
		Pass: worst <= 1500*time.Millisecond,
		How: fmt.Sprintf("3 coordinators of %s on loopback (real processes, TLS); token creations every 10 ms against all of them; each coordinator in turn (followers, then the leader after transfer-leadership) stopped with SIGTERM and started on its data dir with this version's binary; longest gap between acknowledged writes while each restarts (value: the worst)",
			upgradeFrom),
		Extra: map[string]any{"per_coordinator": gaps, "from": upgradeFrom},
	}, nil
}

package e2e

import (
	"context"
	"github.com/meshd/meshd/coordinator/fsm"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

func startProcCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	c, err := harness.NewCluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, n := range c.Nodes {
				if n.Proc != nil {
					t.Logf("--- %s log:\n%s", n.Name, n.Proc.Log())
				}
			}
		}
	})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(context.Background(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	waitRegistered(t, c, 20*time.Second)
	return c
}

// waitRegistered waits until every coordinator of c has registered its
// feature level: until then the leader counts a member as level 0 and
// holds gated commands (cluster remove, token prune...) back.
func waitRegistered(t *testing.T, c *harness.Cluster, d time.Duration) {
	t.Helper()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	var v api.ClusterVersions
	deadline := time.Now().Add(d)
	for {
		err := admin.Do(context.Background(), http.MethodGet, "/v1/cluster/versions", nil, &v)
		if err == nil && v.FeatureLevel == fsm.FeatureLevel && len(v.Members) == len(c.Nodes) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the coordinators have not all registered their feature level: %+v (%v)", d, v, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

func tokenIDs(cl *apiclient.Client) []string {
	var toks []api.Token
	if err := cl.Do(context.Background(), http.MethodGet, "/v1/tokens", nil, &toks); err != nil {
		return nil
	}
	var ids []string
	for _, tk := range toks {
		ids = append(ids, tk.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestAckedWritesSurviveLeaderKill creates tokens in a stream, SIGKILLs the
// leader in the middle, and checks that every acknowledged token exists on
// every node afterwards, the killed one included once it is back.
func TestAckedWritesSurviveLeaderKill(t *testing.T) {
	c := startProcCluster(t)
	ctx := context.Background()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []string
	var failed int
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var tok api.CreateTokenResponse
			err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{}, &tok)
			mu.Lock()
			if err == nil {
				acked = append(acked, tok.ID)
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitUntil(t, 20*time.Second, "50 acknowledged writes", func() bool { return count() >= 50 })
	leader, err := c.WaitLeader(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leader.Proc.Kill()
	killedAt := count()
	if _, err := c.WaitLeader(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "50 more writes after the new leader", func() bool { return count() >= killedAt+50 })
	close(stop)
	<-done
	if err := c.Start(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	want := slices.Clone(acked)
	t.Logf("%d writes acknowledged, %d failed (outcome unknown) around the kill", len(acked), failed)
	mu.Unlock()
	for _, n := range c.Nodes {
		cl, err := c.Admin(n.URL())
		if err != nil {
			t.Fatal(err)
		}
		var have []string
		waitUntil(t, 10*time.Second, n.Name+" to hold every acknowledged token", func() bool {
			have = tokenIDs(cl)
			for _, id := range want {
				if _, ok := slices.BinarySearch(have, id); !ok {
					return false
				}
			}
			return true
		})
	}
}

// TestRestartAllKeepsState stops every coordinator and starts them again
// with the same data dirs: vnets, tokens and peers are all back.
func TestRestartAllKeepsState(t *testing.T) {
	c := startProcCluster(t)
	ctx := context.Background()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "branch", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: "branch", Uses: 3}, &tok); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: name, PublicKey: randomKey(t)}); err != nil {
			t.Fatal(err)
		}
	}
	// snapshot reads vnets, tokens and peers from every node and waits until
	// the replicas agree (a follower may apply a write a moment after the
	// node that acknowledged it).
	snapshot := func() string {
		var out string
		waitUntil(t, 20*time.Second, "replicas to agree", func() bool {
			var views []string
			for _, n := range c.Nodes {
				cl, err := c.Admin(n.URL())
				if err != nil {
					return false
				}
				var vnets []api.VNet
				var toks []api.Token
				var peers []api.Peer
				for _, q := range []struct {
					path string
					out  any
				}{{"/v1/vnets", &vnets}, {"/v1/tokens", &toks}, {"/v1/peers", &peers}} {
					if err := cl.Do(ctx, http.MethodGet, q.path, nil, q.out); err != nil {
						return false
					}
				}
				for i := range peers {
					peers[i].Online, peers[i].LastSeen = false, time.Time{}
				}
				if len(vnets) != 2 || len(toks) != 1 || len(peers) != 2 {
					return false
				}
				views = append(views, toJSON(vnets)+toJSON(toks)+toJSON(peers))
			}
			out = views[0]
			return views[0] == views[1] && views[1] == views[2]
		})
		return out
	}
	before := snapshot()
	for _, n := range c.Nodes {
		n.Proc.Stop(10 * time.Second)
	}
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(); after != before {
		t.Fatalf("state changed across a full restart:\n%s\n->\n%s", before, after)
	}
}

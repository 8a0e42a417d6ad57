package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// testClock is a clock a test moves by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// mapStream is a peer's network-map watch, decoded.
type mapStream struct {
	t    *testing.T
	ch   chan *api.MapUpdate
	keys [][]byte // the gossip ring as the updates so far left it
}

func openMapStream(t *testing.T, ctx context.Context, srv *Server, admin *apiclient.Client, cred string) *mapStream {
	t.Helper()
	resp, err := apiclient.New(admin.URLs(), srv.Pin(), cred).Stream(ctx, "/v1/netmap")
	if err != nil {
		t.Fatal(err)
	}
	ms := &mapStream{t: t, ch: make(chan *api.MapUpdate, 64)}
	done := make(chan struct{})
	t.Cleanup(func() { resp.Body.Close(); <-done })
	go func() {
		defer close(done)
		defer close(ms.ch)
		rd := bufio.NewReader(resp.Body)
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				return
			}
			if line = bytes.TrimSpace(line); len(line) == 0 {
				continue
			}
			var u api.MapUpdate
			if err := json.Unmarshal(line, &u); err != nil {
				t.Error(err)
				return
			}
			ms.ch <- &u
		}
	}()
	return ms
}

// waitKeys reads updates until the gossip ring satisfies ok or the deadline
// passes, and returns how long it took.
func (ms *mapStream) waitKeys(what string, within time.Duration, ok func(keys [][]byte) bool) time.Duration {
	ms.t.Helper()
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for !ok(ms.keys) {
		select {
		case u, open := <-ms.ch:
			if !open {
				ms.t.Fatalf("%s: the stream ended", what)
			}
			if len(u.GossipKeys) > 0 {
				ms.keys = u.GossipKeys
			}
		case <-deadline.C:
			ms.t.Fatalf("%s: not within %s (ring %x)", what, within, ms.keys)
		}
	}
	return time.Since(start)
}

// TestRemovalRotatesVNetKey: removing a peer gives the other peers of its
// vnet a new primary gossip key, with the previous one as secondary, over
// their map streams within a second; peers of other vnets keep their
// ring; once the grace is over the previous key is dropped from the maps.
func TestRemovalRotatesVNetKey(t *testing.T) {
	clock := &testClock{t: time.Now().UTC()}
	srv, admin, _ := startSingleWith(t, func(c *Config) { c.Now = clock.Now; c.GossipKeyGrace = time.Minute })
	ctx := context.Background()
	if err := admin.Do(ctx, http.MethodPost, "/v1/vnets", api.CreateVNetRequest{Name: "site", Overlay: "100.112.0.0/16"}, nil); err != nil {
		t.Fatal(err)
	}
	joined := map[string]*api.JoinResponse{}
	for _, p := range []struct{ name, vnet string }{{"a", api.DefaultVNet}, {"b", api.DefaultVNet}, {"gone", api.DefaultVNet}, {"s1", "site"}} {
		var tok api.CreateTokenResponse
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{VNet: p.vnet}, &tok); err != nil {
			t.Fatal(err)
		}
		j, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: p.name, PublicKey: wgKey(), OmitMap: true})
		if err != nil {
			t.Fatal(err)
		}
		joined[p.name] = j
	}
	k1 := joined["a"].GossipKeys
	if len(k1) != 1 || !sameRing(joined["b"].GossipKeys, k1) {
		t.Fatalf("a joined with ring %x, b with %x; want the same single key", k1, joined["b"].GossipKeys)
	}
	site := joined["s1"].GossipKeys
	if len(site) != 1 || bytes.Equal(site[0], k1[0]) {
		t.Fatalf("s1 joined with ring %x; want a single key of site's own, not default's %x", site, k1)
	}

	streams := map[string]*mapStream{}
	for _, n := range []string{"a", "b", "s1"} {
		streams[n] = openMapStream(t, ctx, srv, admin, joined[n].Credential)
		streams[n].waitKeys(n+"'s full map", 5*time.Second, func(k [][]byte) bool { return len(k) > 0 })
	}
	if !sameRing(streams["a"].keys, k1) || !sameRing(streams["s1"].keys, site) {
		t.Fatalf("full maps carry %x and %x; want the rings the joins gave", streams["a"].keys, streams["s1"].keys)
	}

	if err := admin.Do(ctx, http.MethodDelete, "/v1/peers/default/gone", nil, nil); err != nil {
		t.Fatal(err)
	}
	rotated := func(k [][]byte) bool { return len(k) == 2 && !bytes.Equal(k[0], k1[0]) && bytes.Equal(k[1], k1[0]) }
	for _, n := range []string{"a", "b"} {
		took := streams[n].waitKeys(n+" to get a new primary with the old key second", time.Second, rotated)
		t.Logf("%s had the new key %s after the removal", n, took)
	}
	if !sameRing(streams["a"].keys, streams["b"].keys) {
		t.Fatalf("a got ring %x, b %x; want the same", streams["a"].keys, streams["b"].keys)
	}
	var siteNow [][]byte
	srv.Store().Read(func(t *state.Tables, _ uint64) { siteNow = t.VNetGossipKeys("site") })
	if !sameRing(siteNow, site) {
		t.Fatalf("site's ring went from %x to %x with a removal in default", site, siteNow)
	}

	// The grace passes: the old key leaves the ring and the maps.
	newKey := streams["a"].keys[0]
	clock.Advance(time.Minute + time.Second)
	for _, n := range []string{"a", "b"} {
		streams[n].waitKeys(n+" to lose the old key after the grace", 3*time.Second, func(k [][]byte) bool {
			return len(k) == 1 && bytes.Equal(k[0], newKey)
		})
	}
	// s1 heard of no key change in all this.
	for len(streams["s1"].ch) > 0 {
		if u := <-streams["s1"].ch; len(u.GossipKeys) > 0 {
			t.Fatalf("s1 was sent ring %x for a change in another vnet", u.GossipKeys)
		}
	}

	// An admin rotates site alone.
	var res api.RotateGossipKeyResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/gossip/rotate-key?vnet=site", nil, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.VNets) != 1 || res.VNets[0] != (api.GossipRing{VNet: "site", Keys: 2}) || res.Grace != "1m0s" {
		t.Fatalf("got %+v; want site rotated to 2 keys, grace 1m0s", res)
	}
	streams["s1"].waitKeys("s1 to get site's new key", time.Second, func(k [][]byte) bool {
		return len(k) == 2 && bytes.Equal(k[1], site[0])
	})
	if err := admin.Do(ctx, http.MethodPost, "/v1/gossip/rotate-key?vnet=nope", nil, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("rotating an unknown vnet: got %v; want %s", err, api.CodeNotFound)
	}
}

func sameRing(a, b [][]byte) bool { return slices.EqualFunc(a, b, bytes.Equal) }

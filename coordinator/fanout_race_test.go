package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// TestWatcherSeesEveryChangeUnderConcurrentWrites: several admins drain
// and undrain gateways at once through the API while a peer follows its
// network map. Once the writes are acknowledged, the peer's map must show
// every gateway's last state, reached through the fan-out's deltas: a
// change the fan-out skipped (it read an index before that index's change
// was recorded) would never be sent, since nothing else changes that
// gateway afterwards. coordinator/state's TestReadersNeverSkipAChange
// drives the same window harder, without the network.
func TestWatcherSeesEveryChangeUnderConcurrentWrites(t *testing.T) {
	srv, admin := startSingle(t)
	ctx := context.Background()
	const gateways = 4
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: gateways + 1, AllowRoutes: []string{"10.0.0.0/8"}}, &tok); err != nil {
		t.Fatal(err)
	}
	for g := range gateways {
		r := []api.Route{{Prefix: fmt.Sprintf("10.%d.0.0/16", g), Priority: 100}}
		if _, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: fmt.Sprintf("gw%d", g), PublicKey: wgKey(), Routes: r, OmitMap: true}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := apiclient.Join(ctx, tok.Token, api.JoinRequest{Name: "watcher", PublicKey: wgKey(), OmitMap: true})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := apiclient.New(admin.URLs(), srv.Pin(), w.Credential).Stream(wctx, "/v1/netmap")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	// The reader keeps the watcher's view: each gateway's drained flag and
	// the last index it was told about.
	type view struct {
		index   uint64
		drained map[string]bool
		fulls   int
	}
	var (
		mu   sync.Mutex
		seen = view{drained: map[string]bool{}}
		wake = make(chan struct{}, 1)
	)
	readDone := make(chan error, 1)
	go func() {
		rd := bufio.NewReaderSize(resp.Body, 1<<16)
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				readDone <- err
				return
			}
			exp, err := api.ExpandLine(bytes.TrimSpace(line))
			if err != nil {
				readDone <- err
				return
			}
			var upd api.MapUpdate
			if err := json.Unmarshal(exp, &upd); err != nil {
				readDone <- err
				return
			}
			mu.Lock()
			if upd.Full {
				seen.fulls++
				clear(seen.drained)
			}
			for _, p := range upd.Peers {
				if p.Name != "watcher" {
					seen.drained[p.Name] = p.Drained
				}
			}
			seen.index = max(seen.index, upd.Index)
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()

	want := map[string]bool{}
	var wg sync.WaitGroup
	for g := range gateways {
		name := fmt.Sprintf("gw%d", g)
		// Odd gateways end drained, even ones undrained.
		steps := 2*rounds + g%2
		want[name] = steps%2 == 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range steps {
				verb := "drain"
				if i%2 == 1 {
					verb = "undrain"
				}
				if err := admin.Do(ctx, http.MethodPost, "/v1/peers/default/"+name+"/"+verb, nil, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	final := srv.Store().Index()

	deadline := time.After(5 * time.Second)
	for {
		mu.Lock()
		got, idx, fulls := maps.Clone(seen.drained), seen.index, seen.fulls
		mu.Unlock()
		if idx >= final && maps.Equal(got, want) {
			if fulls != 1 {
				t.Fatalf("the watcher got %d full maps; want only the first (the rest must come as deltas)", fulls)
			}
			return
		}
		select {
		case <-wake:
		case err := <-readDone:
			t.Fatalf("watch ended: %v", err)
		case <-deadline:
			t.Fatalf("after every write was acknowledged (index %d) the watcher is at index %d with drained %v; want %v", final, idx, got, want)
		}
	}
}

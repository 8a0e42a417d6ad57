// Command meshsim loads a coordinator cluster with simulated peers: real
// tokens, keys, TLS and network-map watches, no WireGuard. It joins N peers
// spread across the coordinators, holds N watches open, then makes changes
// (a join, an endpoint change, a removal) and reports for each the time
// until every watcher has it (p50/p99/max) and the bytes each watcher
// received, with the coordinators' CPU time and RSS.
//
//	go run ./e2e/meshsim -n 1000,10000        (starts its own 3-node cluster)
//
// Watchers resume from the index after the joins (?since=), as peers that
// already hold the map do; the cost of a full map for one new watcher is
// measured separately. At the end every watch is dropped at once and the
// fleet reconnects, each timed until every coordinator's peer list agrees.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshd/meshd/e2e/harness"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
	"github.com/meshd/meshd/pkg/token"
)

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(watchChild())
	}
	os.Exit(run())
}

// keepDir (-keep) leaves each run's working directory in place; binPath
// (-bin) is the meshd the coordinators run.
var (
	keepDir bool
	binPath string
)

// The phases Raft terms are counted in (Result.TermsBy).
const (
	phaseOpen      = "the watches opened"
	phaseChanges   = "single changes went out"
	phaseBursts    = "bursts of joins went out"
	phaseDrop      = "every watch dropped"
	phaseReconnect = "the fleet reconnected"
)

var phases = []string{phaseOpen, phaseChanges, phaseBursts, phaseDrop, phaseReconnect}

// afterBurst is the kind of the change made after a burst of joins.
const afterBurst = "after burst"

// joinClients is how many clients join at once, both for the N peers (no
// watch open yet: the baseline) and for the burst with every watch open;
// the same as the write-throughput benchmark (e2e/bench).
const joinClients = 128

// Result is one run at one N.
type Result struct {
	N             int     `json:"n"`
	JoinsPerSec   float64 `json:"joins_per_s"`
	FullMapMillis float64 `json:"full_map_ms"`
	FullMapBytes  int     `json:"full_map_bytes"`
	// FullMapComputeMillis is the coordinator's share of FullMapMillis:
	// computing and encoding the map (compute.go).
	FullMapComputeMillis float64        `json:"full_map_compute_ms"`
	Changes              []ChangeResult `json:"changes"`
	// BaselineBursts are 1,000 joins (-burst) made three times with all N
	// peers joined and no watch open; Bursts 100 joins, then 1,000 three
	// times, with all N watches open. The rates are the medians of the
	// 1,000s.
	BaselineBursts      []BurstResult    `json:"baseline_bursts"`
	Bursts              []BurstResult    `json:"bursts"`
	BaselineJoinsPerSec float64          `json:"baseline_joins_per_s"`
	BurstJoinsPerSec    float64          `json:"burst_joins_per_s"`
	Coordinators        []CoordinatorUse `json:"coordinators"`
	// WatcherKiB is how much the coordinators' RSS grew per open, idle
	// watch (all three together, divided by N).
	WatcherKiB float64 `json:"rss_per_watcher_kib"`
	// WatchesOpenSeconds is how long the N watches took to open.
	WatchesOpenSeconds float64 `json:"watches_open_s"`
	// Drop is every watch cut at once; Reconnect the fleet opening them
	// all again (resuming from its index).
	Drop      *MassResult `json:"all_watches_dropped"`
	Reconnect *MassResult `json:"fleet_reconnects"`
	// RaftTerms is how many Raft terms began from the first watch opening
	// to the end of the run: 0 when the leader kept its lease throughout.
	// TermsBy splits them by phase (watches opening, changes, bursts,
	// drop, reconnect).
	RaftTerms uint64            `json:"raft_terms_during_watches"`
	TermsBy   map[string]uint64 `json:"raft_terms_by_phase"`
}

// MassResult is every simulated peer's watch ending or starting at once.
type MassResult struct {
	// Seconds until every coordinator's peer list showed every simulated
	// peer offline (or online), from the cut (or the reconnect's start).
	Seconds float64 `json:"s"`
	// RaftEntries is how far the log grew meanwhile: the watch marks.
	RaftEntries    uint64  `json:"raft_entries"`
	CoordCPUMillis float64 `json:"coordinator_cpu_ms"`
}

// ChangeResult is one change fanned out to every watcher.
type ChangeResult struct {
	Kind           string  `json:"kind"`
	P50Millis      float64 `json:"p50_ms"`
	P99Millis      float64 `json:"p99_ms"`
	MaxMillis      float64 `json:"max_ms"`
	BytesPerPeer   float64 `json:"bytes_per_watcher"`
	Reached        int     `json:"reached"`
	CoordCPUMillis float64 `json:"coordinator_cpu_ms"`
	// WatchersCPUMillis is the watcher process's CPU over the same time:
	// N simulated peers receiving, decrypting and decoding the change.
	WatchersCPUMillis float64 `json:"watchers_cpu_ms"`
}

// BurstResult is one burst of joins made with every watch open.
type BurstResult struct {
	Joins       int     `json:"joins"`
	Seconds     float64 `json:"s"`
	JoinsPerSec float64 `json:"joins_per_s"`
	// CPU during the joins: the coordinators', the joining clients' and
	// the watcher process's (at nice 19).
	CoordCPUMillis    float64 `json:"coordinator_cpu_ms"`
	ClientCPUMillis   float64 `json:"clients_cpu_ms"`
	WatchersCPUMillis float64 `json:"watchers_cpu_ms"`
	// Delivered is an endpoint change made after the last join reaching
	// every watcher (each stream is in order): when every watcher had the
	// whole burst, and the CPU that took.
	Delivered *ChangeResult `json:"delivered"`
	// BytesPerWatcher is what each watcher received from the burst's start
	// until it had all of it.
	BytesPerWatcher float64 `json:"bytes_per_watcher"`
}

// CoordinatorUse is one coordinator's footprint after the run.
type CoordinatorUse struct {
	Name  string  `json:"name"`
	RSSMB float64 `json:"rss_mib"`
	// RSSBeforeWatchesMB is its RSS with every peer joined but no watch
	// open; RSSWatchesMB once every watch is open, before any change.
	RSSBeforeWatchesMB float64 `json:"rss_before_watches_mib"`
	RSSWatchesMB       float64 `json:"rss_watches_open_mib"`
}

func run() int {
	ns := flag.String("n", "1000", "comma-separated peer counts")
	burst := flag.Int("burst", 1000, "joins per burst (a tenth of it for the small burst)")
	out := flag.String("out", "", "write results as JSON to this file")
	merge := flag.String("results", "", "merge the figures into this bench results file (bench/results.json)")
	flag.StringVar(&binPath, "bin", "", "meshd binary the coordinators run (default: built from this tree); to compare two versions")
	flag.BoolVar(&keepDir, "keep", false, "keep each run's working directory (coordinator logs and data dirs) and print where it is")
	flag.Parse()
	var results []Result
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 {
			fmt.Fprintf(os.Stderr, "meshsim: bad -n %q\n", s)
			return 2
		}
		r, err := simulate(n, *burst)
		if err != nil {
			fmt.Fprintf(os.Stderr, "meshsim: N=%d: %v\n", n, err)
			return 1
		}
		results = append(results, *r)
		printResult(r)
	}
	if *merge != "" {
		if err := mergeResults(*merge, results); err != nil {
			fmt.Fprintln(os.Stderr, "meshsim:", err)
			return 1
		}
	}
	if *out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "meshsim:", err)
			return 1
		}
	}
	return 0
}

func printResult(r *Result) {
	fmt.Printf("\nN=%d  joins %.0f/s  full map for a new watcher: %.1f ms to compute and encode, %.1f ms until received (TLS connect and %d bytes)\n",
		r.N, r.JoinsPerSec, r.FullMapComputeMillis, r.FullMapMillis, r.FullMapBytes)
	fmt.Printf("coordinator memory per open watch: %.0f KiB\n", r.WatcherKiB)
	fmt.Printf("%-16s %8s %8s %8s %12s %10s %14s\n", "CHANGE", "P50 ms", "P99 ms", "MAX ms", "BYTES/PEER", "REACHED", "COORD CPU ms")
	for _, c := range r.Changes {
		fmt.Printf("%-16s %8.1f %8.1f %8.1f %12.0f %10d %14.0f\n", c.Kind, c.P50Millis, c.P99Millis, c.MaxMillis, c.BytesPerPeer, c.Reached, c.CoordCPUMillis)
	}
	for _, b := range r.BaselineBursts {
		fmt.Printf("%d joins, no watch open: %.0f joins/s over %.2f s; CPU: coordinators %.0f ms, joining clients %.0f ms\n",
			b.Joins, b.JoinsPerSec, b.Seconds, b.CoordCPUMillis, b.ClientCPUMillis)
	}
	for _, b := range r.Bursts {
		fmt.Printf("%d joins with %d watches open: %.0f joins/s over %.2f s; CPU: coordinators %.0f ms, joining clients %.0f ms, watchers %.0f ms\n",
			b.Joins, r.N, b.JoinsPerSec, b.Seconds, b.CoordCPUMillis, b.ClientCPUMillis, b.WatchersCPUMillis)
		if d := b.Delivered; d != nil {
			fmt.Printf("  every watcher had them %.2f s after the last join (p50 %.2f s), %.0f bytes each; CPU meanwhile: coordinators %.0f ms, the %d simulated peers %.0f ms\n",
				d.MaxMillis/1000, d.P50Millis/1000, b.BytesPerWatcher, d.CoordCPUMillis, r.N, d.WatchersCPUMillis)
		}
	}
	if len(r.Bursts) > 0 {
		fmt.Printf("%d-join bursts, median: %.0f joins/s with every watch open, %.0f with none (ratio %.2f)\n",
			r.Bursts[len(r.Bursts)-1].Joins, r.BurstJoinsPerSec, r.BaselineJoinsPerSec, r.BurstJoinsPerSec/r.BaselineJoinsPerSec)
	}
	fmt.Printf("%d watches opened in %.1f s\n", r.N, r.WatchesOpenSeconds)
	if d := r.Drop; d != nil {
		fmt.Printf("every watch dropped at once: every coordinator listed them offline after %.2f s; %d Raft entries; coordinator CPU %.0f ms\n", d.Seconds, d.RaftEntries, d.CoordCPUMillis)
	}
	if d := r.Reconnect; d != nil {
		fmt.Printf("the fleet reconnecting: every coordinator listed them online after %.2f s; %d Raft entries; coordinator CPU %.0f ms\n", d.Seconds, d.RaftEntries, d.CoordCPUMillis)
	}
	fmt.Printf("Raft terms begun from the first watch to the end: %d (0: the leader kept its lease)", r.RaftTerms)
	for _, ph := range phases {
		if k := r.TermsBy[ph]; k > 0 {
			fmt.Printf("; %d while %s", k, ph)
		}
	}
	fmt.Println()
	for _, c := range r.Coordinators {
		fmt.Printf("coordinator %s RSS %.0f MiB (joined, no watch: %.0f MiB; every watch open: %.0f MiB)\n", c.Name, c.RSSMB, c.RSSBeforeWatchesMB, c.RSSWatchesMB)
	}
}

func wgKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

type simPeer struct {
	id, cred string
}

// watcher holds one network-map stream and notes when an update first
// carries the current change's marker (a name, an endpoint, a prefix or a
// removed peer's ID, all known before the change is made). Matching bytes
// rather than decoding JSON keeps the simulator's own CPU small, since it
// shares the machine with the coordinators.
type watcher struct {
	bytes atomic.Int64
	hit   atomic.Int64 // unix nanoseconds of the first update with the marker; 0: not yet
}

// marker is what the current change's update contains.
var marker atomic.Pointer[[]byte]

// simulate runs the whole simulation at n peers, with bursts of burst
// joins (and one of burst/10).
func simulate(n, burst int) (*Result, error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "meshsim-")
	if err != nil {
		return nil, err
	}
	if keepDir {
		defer fmt.Fprintf(os.Stderr, "N=%d: coordinator logs and data dirs kept in %s\n", n, dir)
	} else {
		defer os.RemoveAll(dir)
	}
	c, err := harness.NewCluster(dir, 3)
	if err != nil {
		return nil, err
	}
	if binPath != "" {
		c.Bin = binPath
	}
	defer c.Close()
	if err := c.StartAll(); err != nil {
		return nil, err
	}
	if _, err := c.WaitLeader(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if err := c.WaitReady(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	admin, err := c.Admin()
	if err != nil {
		return nil, err
	}
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: n + 7*burst + 100, TTL: "2h", AllowRoutes: []string{"10.0.0.0/8"}}, &tok); err != nil {
		return nil, err
	}
	jt, err := token.ParseKind(tok.Token, token.KindJoin)
	if err != nil {
		return nil, err
	}
	urls := c.URLs()
	rotate := func(i int) []string { return rotateURLs(urls, i) }

	// Join N peers.
	res := &Result{N: n}
	peers := make([]simPeer, n)
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var joinErr atomic.Value
	for w := range joinClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := apiclient.New(rotate(w), jt.Pin, "")
			defer cl.CloseIdle()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: fmt.Sprintf("sim%05d", i),
					PublicKey: wgKey(), Endpoints: []string{fmt.Sprintf("198.18.%d.%d:51820", i/250, i%250+1)}, OmitMap: true}
				var resp api.JoinResponse
				if err := cl.Do(ctx, http.MethodPost, "/v1/join", req, &resp); err != nil {
					joinErr.CompareAndSwap(nil, err)
					return
				}
				peers[i] = simPeer{id: resp.PeerID, cred: resp.Credential}
				if i%1000 == 999 {
					fmt.Fprintf(os.Stderr, "\rjoined %d/%d", i+1, n)
				}
			}
		}()
	}
	wg.Wait()
	if e := joinErr.Load(); e != nil {
		return nil, fmt.Errorf("join: %v", e)
	}
	res.JoinsPerSec = float64(n) / time.Since(start).Seconds()
	fmt.Fprintf(os.Stderr, "\rjoined %d peers in %s\n", n, time.Since(start).Round(time.Millisecond))

	// A full map for one new watcher, timed.
	fullStart := time.Now()
	pc := apiclient.New(urls, jt.Pin, peers[0].cred)
	resp, err := pc.Stream(ctx, "/v1/netmap")
	if err != nil {
		return nil, err
	}
	line, err := bufio.NewReaderSize(resp.Body, 1<<20).ReadBytes('\n')
	resp.Body.Close()
	pc.CloseIdle()
	if err != nil {
		return nil, err
	}
	res.FullMapMillis = float64(time.Since(fullStart).Microseconds()) / 1000
	res.FullMapBytes = len(line)
	if res.FullMapComputeMillis, _, err = fullMapCompute(n); err != nil {
		return nil, err
	}

	// N watchers, in a child process at nice 19 (fleet.go).
	creds := make([]string, n)
	for i := range peers {
		creds[i] = peers[i].cred
	}
	// Bursts of 1,000 joins with no watch open, three times: the baseline
	// for the same bursts with every watch open below. The clients connect
	// first (TLS handshakes are not joins) and serve every burst.
	bclients := make([]*apiclient.Client, joinClients)
	for w := range bclients {
		bclients[w] = apiclient.New(rotate(w), jt.Pin, "")
		defer bclients[w].CloseIdle()
	}
	var hwg sync.WaitGroup
	for _, cl := range bclients {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			cl.Do(ctx, http.MethodGet, "/v1/health", nil, nil)
		}()
	}
	hwg.Wait()
	pids := map[string]int{}
	for _, nd := range c.Nodes {
		pids[nd.Name] = nd.Proc.Pid()
	}
	// joinBurst makes count joins through the 128 clients and measures the
	// rate and the CPU of the coordinators, the clients and others.
	joinBurst := func(count int, tag string, others map[string]int) (BurstResult, error) {
		b := BurstResult{Joins: count}
		self := map[string]int{"self": os.Getpid()}
		cpu0, sim0, oth0 := cpuMillis(pids), cpuMillis(self), cpuMillis(others)
		bstart := time.Now()
		var bnext atomic.Int64
		var berr atomic.Value
		var bwg sync.WaitGroup
		for _, cl := range bclients {
			bwg.Add(1)
			go func() {
				defer bwg.Done()
				for {
					i := int(bnext.Add(1)) - 1
					if i >= count {
						return
					}
					req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: fmt.Sprintf("%s-%04d", tag, i), PublicKey: wgKey(), OmitMap: true}
					if err := cl.Do(ctx, http.MethodPost, "/v1/join", req, nil); err != nil {
						berr.CompareAndSwap(nil, err)
						return
					}
				}
			}()
		}
		bwg.Wait()
		if e := berr.Load(); e != nil {
			return b, fmt.Errorf("burst join: %v", e)
		}
		b.Seconds = time.Since(bstart).Seconds()
		b.JoinsPerSec = float64(count) / b.Seconds
		b.CoordCPUMillis = cpuMillis(pids) - cpu0
		b.ClientCPUMillis = cpuMillis(self) - sim0
		b.WatchersCPUMillis = cpuMillis(others) - oth0
		return b, nil
	}
	for k := range 3 {
		stopProf := profileBurst(pids, fmt.Sprintf("base%d", k))
		b, err := joinBurst(burst, fmt.Sprintf("base%d", k), nil)
		stopProf()
		if err != nil {
			return nil, err
		}
		res.BaselineBursts = append(res.BaselineBursts, b)
	}

	// The index every watcher resumes from: after all joins, the baseline
	// bursts' included.
	st, err := clusterStatus(ctx, admin)
	if err != nil {
		return nil, err
	}
	since := st.LastAppliedIndex

	rssBefore := map[string]float64{}
	for _, nd := range c.Nodes {
		rssBefore[nd.Name] = rssMiB(nd.Proc.Pid())
	}
	res.TermsBy = map[string]uint64{}
	termAt := st.Term
	// phaseEnds notes how many terms began in the phase that just ended.
	phaseEnds := func(phase string) error {
		now, err := clusterStatus(ctx, admin)
		if err != nil {
			return err
		}
		res.TermsBy[phase], termAt = now.Term-termAt, now.Term
		res.RaftTerms += res.TermsBy[phase]
		return nil
	}
	openStart := time.Now()
	fl, err := startFleet(fleetConfig{URLs: urls, Pin: jt.Pin[:], Creds: creds, Since: since})
	if err != nil {
		return nil, err
	}
	defer func() { // fl is replaced when the fleet reconnects
		if fl != nil {
			fl.close()
		}
	}()
	res.WatchesOpenSeconds = time.Since(openStart).Seconds()
	watchPid := map[string]int{"watchers": fl.pid()} // for cpuMillis
	rssOpen := map[string]float64{}
	var grew float64
	for _, nd := range c.Nodes {
		rssOpen[nd.Name] = rssMiB(nd.Proc.Pid())
		grew += rssOpen[nd.Name] - rssBefore[nd.Name]
	}
	res.WatcherKiB = grew * 1024 / float64(n)
	if err := phaseEnds(phaseOpen); err != nil {
		return nil, err
	}

	// Changes.
	var delivered *ChangeResult // the last afterBurst change
	// change applies one change and waits until every watcher but skip
	// (-1: none; the removed peer's own stream just ends) has it.
	change := func(kind string, skip int, mark string, do func() error) error {
		want := n
		if skip >= 0 {
			want--
		}
		bytes0, err := fl.bytes()
		if err != nil {
			return err
		}
		if err := fl.mark(mark); err != nil {
			return err
		}
		cpu0, wcpu0 := cpuMillis(pids), cpuMillis(watchPid)
		t0 := time.Now()
		if err := do(); err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			k, err := fl.count()
			if err != nil {
				return err
			}
			if k >= int64(want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
		}
		hits, err := fl.hits()
		if err != nil {
			return err
		}
		var lat []float64
		for i, h := range hits {
			if h != 0 && i != skip {
				lat = append(lat, float64(time.Unix(0, h).Sub(t0).Microseconds())/1000)
			}
		}
		bytes1, err := fl.bytes()
		if err != nil {
			return err
		}
		bytes := bytes1 - bytes0
		slices.Sort(lat)
		cr := ChangeResult{Kind: kind, Reached: len(lat), BytesPerPeer: float64(bytes) / float64(n), CoordCPUMillis: cpuMillis(pids) - cpu0,
			WatchersCPUMillis: cpuMillis(watchPid) - wcpu0}
		if len(lat) > 0 {
			cr.P50Millis, cr.P99Millis, cr.MaxMillis = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
		}
		if kind == afterBurst {
			delivered = &cr
		} else {
			res.Changes = append(res.Changes, cr)
		}
		if len(lat) < want {
			return fmt.Errorf("%s reached only %d of %d watchers within 60s", kind, len(lat), want)
		}
		return nil
	}
	joiner := apiclient.New(urls, jt.Pin, "")
	if err := change("join", -1, `"name":"newcomer"`, func() error {
		return joiner.Do(ctx, http.MethodPost, "/v1/join", api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: "newcomer", PublicKey: wgKey(), OmitMap: true}, nil)
	}); err != nil {
		return res, err
	}
	mover := apiclient.New(urls, jt.Pin, peers[1].cred)
	if err := change("endpoint change", -1, "203.0.113.9:51820", func() error {
		return mover.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: []string{"203.0.113.9:51820"}}, nil)
	}); err != nil {
		return res, err
	}
	if err := change("route announced", -1, "10.1.0.0/24", func() error {
		return joiner.Do(ctx, http.MethodPost, "/v1/join", api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: "newgw", PublicKey: wgKey(), OmitMap: true,
			Routes: []api.Route{{Prefix: "10.1.0.0/24", Priority: 100}}}, nil)
	}); err != nil {
		return res, err
	}
	if err := change("leave", 2, peers[2].id, func() error {
		return admin.Do(ctx, http.MethodDelete, "/v1/peers/default/sim00002", nil, nil)
	}); err != nil {
		return res, err
	}
	if err := phaseEnds(phaseChanges); err != nil {
		return res, err
	}
	// Bursts with every watch open: 100 joins, then 1,000 three times,
	// each followed by its delivery to every watcher.
	for k, count := range []int{max(1, burst/10), burst, burst, burst} {
		stopProf := profileBurst(pids, fmt.Sprintf("watched%d", k))
		bytes0, err := fl.bytes()
		if err != nil {
			return res, err
		}
		b, err := joinBurst(count, fmt.Sprintf("burst%d", k), watchPid)
		stopProf()
		if err != nil {
			return res, err
		}
		fmt.Fprintf(os.Stderr, "burst: %d joins in %.2f s; waiting for every watcher to have them\n", count, b.Seconds)
		// peers[2] left above; its stream has ended.
		ep := fmt.Sprintf("203.0.113.%d:51820", 10+k)
		if err := change(afterBurst, 2, ep, func() error {
			return mover.Do(ctx, http.MethodPost, "/v1/heartbeat", api.HeartbeatRequest{Endpoints: []string{ep}}, nil)
		}); err != nil {
			return res, err
		}
		b.Delivered = delivered
		bytes1, err := fl.bytes()
		if err != nil {
			return res, err
		}
		b.BytesPerWatcher = float64(bytes1-bytes0) / float64(n)
		res.Bursts = append(res.Bursts, b)
	}
	res.BurstJoinsPerSec, res.BaselineJoinsPerSec = medianRate(res.Bursts, burst), medianRate(res.BaselineBursts, burst)

	if err := phaseEnds(phaseBursts); err != nil {
		return res, err
	}
	// Every watch dropped at once (the watcher process SIGKILLed, as a
	// network cut or a crash would), then the fleet reconnecting.
	simIDs := map[string]bool{}
	for i, p := range peers {
		if i != 2 { // removed above
			simIDs[p.id] = true
		}
	}
	if res.Drop, err = massChange(ctx, c, simIDs, false, func() error { fl.kill(); return nil }); err != nil {
		return res, fmt.Errorf("all watches dropped: %w", err)
	}
	if err := phaseEnds(phaseDrop); err != nil {
		return res, err
	}
	if st, err = clusterStatus(ctx, admin); err != nil {
		return res, err
	}
	creds = slices.Delete(creds, 2, 3)
	stopProf := profile(pids, "reconnect", 5)
	if res.Reconnect, err = massChange(ctx, c, simIDs, true, func() error {
		fl, err = startFleet(fleetConfig{URLs: urls, Pin: jt.Pin[:], Creds: creds, Since: st.LastAppliedIndex})
		return err
	}); err != nil {
		return res, fmt.Errorf("fleet reconnecting: %w", err)
	}
	stopProf()
	if err := phaseEnds(phaseReconnect); err != nil {
		return res, err
	}
	for _, nd := range c.Nodes {
		res.Coordinators = append(res.Coordinators, CoordinatorUse{Name: nd.Name, RSSMB: rssMiB(nd.Proc.Pid()),
			RSSBeforeWatchesMB: rssBefore[nd.Name], RSSWatchesMB: rssOpen[nd.Name]})
	}
	return res, nil
}

// massChange runs do (every watch ending or starting) and waits until every
// coordinator lists every peer of ids as online (or offline), polling each
// coordinator's peer list.
func massChange(ctx context.Context, c *harness.Cluster, ids map[string]bool, online bool, do func() error) (*MassResult, error) {
	pids := map[string]int{}
	var clients []*apiclient.Client
	for _, nd := range c.Nodes {
		pids[nd.Name] = nd.Proc.Pid()
		cl, err := c.Admin(nd.URL())
		if err != nil {
			return nil, err
		}
		clients = append(clients, cl)
	}
	st0, err := clusterStatus(ctx, clients[0])
	if err != nil {
		return nil, err
	}
	cpu0, t0 := cpuMillis(pids), time.Now()
	if err := do(); err != nil {
		return nil, err
	}
	deadline := t0.Add(2 * time.Minute)
	for k := 0; k < len(clients); {
		var list []api.Peer
		if err := clients[k].Do(ctx, http.MethodGet, "/v1/peers?vnet="+api.DefaultVNet, nil, &list); err != nil {
			return nil, err
		}
		wrong := 0
		for _, p := range list {
			if ids[p.ID] && p.Online != online {
				wrong++
			}
		}
		if wrong == 0 {
			k++ // this coordinator agrees; on to the next
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s still lists %d peers with online=%v after %s", c.Nodes[k].Name, wrong, !online, time.Since(t0).Round(time.Second))
		}
		time.Sleep(100 * time.Millisecond) // polling interval, bounded by the deadline
	}
	r := &MassResult{Seconds: time.Since(t0).Seconds(), CoordCPUMillis: cpuMillis(pids) - cpu0}
	st1, err := clusterStatus(ctx, clients[0])
	if err != nil {
		return nil, err
	}
	r.RaftEntries = st1.LastAppliedIndex - st0.LastAppliedIndex
	return r, nil
}

// clusterStatus asks cl for the cluster's status (leader, term, index).
func clusterStatus(ctx context.Context, cl *apiclient.Client) (api.ClusterStatus, error) {
	var st api.ClusterStatus
	err := cl.Do(ctx, http.MethodGet, "/v1/cluster/status", nil, &st)
	return st, err
}

// watch holds one stream and records, per peer ID, when an update first
// names it (as a changed or removed peer).
func watch(ctx context.Context, urls []string, pin [32]byte, cred string, since uint64, w *watcher, open *atomic.Int64) {
	cl := apiclient.New(urls, pin, cred)
	cl.SetDialContext(dialSmallRecv)
	defer cl.CloseIdle()
	opened := false
	for ctx.Err() == nil {
		resp, err := cl.Stream(ctx, "/v1/netmap?"+api.WatchCompressParam+"=1&since="+strconv.FormatUint(since, 10))
		if err != nil {
			time.Sleep(200 * time.Millisecond) // retry pace after a failed open
			continue
		}
		if !opened {
			opened = true
			open.Add(1)
		}
		rd := bufio.NewReaderSize(resp.Body, 4096)
		for {
			line, err := rd.ReadBytes('\n')
			w.bytes.Add(int64(len(line)))
			if err != nil {
				break
			}
			if len(line) <= 1 {
				continue
			}
			// A large delta comes deflated; a peer expands it (so does
			// each simulated one).
			if line, err = api.ExpandLine(bytes.TrimSpace(line)); err != nil {
				break
			}
			if m := marker.Load(); m != nil && w.hit.Load() == 0 && bytes.Contains(line, *m) {
				w.hit.CompareAndSwap(0, time.Now().UnixNano())
			}
			var u struct {
				Index uint64 `json:"index"`
			}
			if k := bytes.IndexByte(line, ','); k > 0 { // {"index":N,...: decode the index alone
				json.Unmarshal(append(line[:k:k], '}'), &u)
			}
			if u.Index > since {
				since = u.Index
			}
		}
		resp.Body.Close()
	}
}

// profileBurst fetches a CPU profile of each coordinator while the burst
// runs, when MESHD_PPROF_DIR is set (meshd then serves pprof and writes its
// address there): DIR/burst-TAG-NAME.prof (TAG: base0..2 for the bursts
// with no watch open, watched0..3 for those with every watch open; the
// first 5 s of the fleet reconnecting are DIR/burst-reconnect-NAME.prof). The
// returned func waits for them.
func profileBurst(pids map[string]int, tag string) func() { return profile(pids, tag, 1) }

// profile is profileBurst over secs seconds.
func profile(pids map[string]int, tag string, secs int) func() {
	dir := os.Getenv("MESHD_PPROF_DIR")
	if dir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for name, pid := range pids {
		addr, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("meshd-%d.addr", pid)))
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + string(addr) + fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs))
			if err != nil {
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("burst-%s-%s.prof", tag, name)), b, 0o644)
		}()
	}
	return wg.Wait
}

// medianRate is the median join rate of the bursts of count joins.
func medianRate(bursts []BurstResult, count int) float64 {
	var r []float64
	for _, b := range bursts {
		if b.Joins == count {
			r = append(r, b.JoinsPerSec)
		}
	}
	if len(r) == 0 {
		return 0
	}
	slices.Sort(r)
	return r[len(r)/2]
}

// rotateURLs starts the list at the i-th coordinator, spreading clients.
func rotateURLs(urls []string, i int) []string {
	return append(slices.Clone(urls[i%len(urls):]), urls[:i%len(urls)]...)
}

// simRecvBuffer is each simulated watcher's socket receive buffer. Real
// peers each have a kernel of their own; 10,000 of them in one process
// would otherwise let receive autotuning hold gigabytes of a burst in one
// kernel and push the whole host into TCP memory pressure, which would be
// the simulator's doing, not the coordinators'. (Linux doubles the value.)
const simRecvBuffer = 64 << 10

// dialSmallRecv sets the buffer before connecting, so the window the
// socket advertises never exceeds it.
func dialSmallRecv(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, simRecvBuffer)
		})
		return errors.Join(err, serr)
	}}
	return d.DialContext(ctx, network, addr)
}

func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndex(s, ")")+2:])
}

// cpuMillis is the user+system CPU time of pids, in ms.
func cpuMillis(pids map[string]int) float64 {
	var total float64
	for _, pid := range pids {
		f := procStat(pid)
		if len(f) > 12 {
			u, _ := strconv.ParseFloat(f[11], 64)
			s, _ := strconv.ParseFloat(f[12], 64)
			total += (u + s) * 10 // clock ticks of 10 ms
		}
	}
	return total
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// mergeResults adds a fan-out figure per N to a bench results file, keeping
// the figures other tools wrote there.
func mergeResults(path string, results []Result) error {
	all := map[string]json.RawMessage{}
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &all); err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
	for _, r := range results {
		var p99, bytes float64
		for _, c := range r.Changes {
			p99 = max(p99, c.P99Millis)
			bytes = max(bytes, c.BytesPerPeer)
		}
		var rss float64
		for _, c := range r.Coordinators {
			rss = max(rss, c.RSSMB)
		}
		fig := map[string]any{
			"value": p99 / 1000, "unit": "s (p99, worst change)",
			"target":      "N = 10,000: p99 <= 1 s, <= 1 KiB per watcher per change, full map <= 100 ms to compute, RSS <= 1 GiB, >= 2,000 joins/s with every watch open",
			"pass":        p99 <= 1000 && bytes <= 1024 && r.FullMapComputeMillis <= 100 && rss <= 1024 && r.BurstJoinsPerSec >= 2000 && len(r.Bursts) > 0 && r.Bursts[len(r.Bursts)-1].Joins == 1000,
			"how":         fmt.Sprintf("meshsim: %d simulated peers (real tokens, keys, TLS) on a 3-node loopback cluster, one network-map watch each spread over the coordinators; per change (join, endpoint change, route announcement, leave) the time until every watcher has it; then 100 joins and 3 x 1,000 joins with every watch open (medians), against 3 x 1,000 joins with none before the watches opened; then every watch dropped at once (the watcher process SIGKILLed) until every coordinator lists every peer offline, and the fleet reconnecting until every coordinator lists them online", r.N),
			"extra":       r,
			"measured_at": time.Now().UTC(),
		}
		b, err := json.Marshal(fig)
		if err != nil {
			return err
		}
		all[fmt.Sprintf("fanout_%d_peers", r.N)] = b
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

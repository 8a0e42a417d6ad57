package coordinator

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// fanoutBench is a replica with n peers in 10 tag groups and a watcher for
// each, fanned out to in-process (no TLS, no sockets): what a round costs
// the coordinator itself.
type fanoutBench struct {
	st   *state.Store
	f    *fanout
	subs []*subscriber
	ids  []string
	idx  uint64
}

// groupPolicy lets each peer see the peers of its own group: with 10
// groups, a tenth of the others. shift names the groups differently, for
// a policy change that moves every peer's view.
func groupPolicy(shift int) string {
	var rules []string
	for g := range 10 {
		rules = append(rules, fmt.Sprintf(`{"action": "accept", "src": ["tag:g%d"], "dst": ["tag:g%d:*"]}`, g, (g+shift)%10))
	}
	return `{"acls": [` + strings.Join(rules, ",") + `]}`
}

func newFanoutBench(b *testing.B, n int, withPolicy bool) *fanoutBench {
	b.Helper()
	fb := &fanoutBench{st: state.New()}
	now := time.Now()
	fb.next()
	if err := fb.st.Bootstrap(now, make([]byte, 32)); err != nil {
		b.Fatal(err)
	}
	hash := strings.Repeat("a", 64)
	for g := range 10 {
		fb.next()
		if err := fb.st.CreateToken(state.TokenSpec{ID: fmt.Sprintf("t%d", g), SecretHash: hash, VNet: api.DefaultVNet, Uses: n, Expires: now.Add(time.Hour), Tags: []string{fmt.Sprintf("g%d", g)}}, now); err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		fb.join(b, i, now)
	}
	if withPolicy {
		fb.next()
		if _, err := fb.st.SetPolicy(api.DefaultVNet, []byte(groupPolicy(0)), "admin", now, 0); err != nil {
			b.Fatal(err)
		}
	}
	fb.f = newFanout(&Server{store: fb.st})
	for _, id := range fb.ids {
		sub, first := fb.f.subscribe(id, api.DefaultVNet, 0, false)
		if first == nil || !first.Full {
			b.Fatal("no full map")
		}
		fb.subs = append(fb.subs, sub)
	}
	return fb
}

func (fb *fanoutBench) next() { fb.idx++; fb.st.SetIndex(fb.idx) }

func (fb *fanoutBench) join(b *testing.B, i int, now time.Time) {
	id := make([]byte, 16)
	rand.Read(id)
	fb.ids = append(fb.ids, hex.EncodeToString(id))
	hash := strings.Repeat("a", 64)
	fb.next()
	j := state.JoinSpec{TokenID: fmt.Sprintf("t%d", i%10), SecretHash: hash, PeerID: fb.ids[len(fb.ids)-1], Name: fmt.Sprintf("sim%05d", i),
		PublicKey: wgKey(), Endpoints: []string{fmt.Sprintf("198.18.%d.%d:51820", i/250, i%250+1)}, CredHash: hash}
	if _, err := fb.st.Join(j, now); err != nil {
		b.Fatal(err)
	}
}

// round publishes and takes what every watcher was sent, as its stream
// would: queued lines, or for a lagging watcher a fresh full map. It
// returns the bytes sent and how many watchers got something.
func (fb *fanoutBench) round() (bytes, reached int) {
	fb.f.publish()
	for _, sub := range fb.subs {
		got := false
		for len(sub.ch) > 0 {
			msg := <-sub.ch
			if sub.lagging.Load() {
				upd := fb.f.resync(sub)
				b, _ := json.Marshal(upd)
				bytes += len(b) + 1
				got = true
				break
			}
			bytes += len(msg)
			got = got || msg != nil
		}
		if got {
			reached++
		}
	}
	return bytes, reached
}

// BenchmarkFanout1000: map size and fan-out time at 1,000 peers, with no
// policy and with one that lets each peer see a tenth of the others: a
// new watcher's full map, one peer's endpoint change, a join, and a
// policy change that moves every peer's view (full maps for all).
func BenchmarkFanout1000(b *testing.B) {
	const n = 1000
	for _, withPolicy := range []bool{false, true} {
		name := "no-policy"
		if withPolicy {
			name = "policy-10pct"
		}
		b.Run(name+"/full-map", func(b *testing.B) {
			fb := newFanoutBench(b, n, withPolicy)
			size := 0
			for i := 0; b.Loop(); i++ {
				upd := fb.f.resync(fb.subs[i%n])
				data, _ := json.Marshal(upd)
				size = len(data)
			}
			b.ReportMetric(float64(size), "bytes/map")
		})
		b.Run(name+"/endpoint-change", func(b *testing.B) {
			fb := newFanoutBench(b, n, withPolicy)
			var bytes, reached int
			for i := 0; b.Loop(); i++ {
				fb.next()
				eps := []string{fmt.Sprintf("203.0.113.%d:%d", i%250+1, 1024+i%60000)}
				if err := fb.st.UpdatePeer(state.PeerUpdate{PeerID: fb.ids[i%n], Endpoints: &eps}); err != nil {
					b.Fatal(err)
				}
				bytes, reached = fb.round()
			}
			b.ReportMetric(float64(bytes), "bytes/round")
			b.ReportMetric(float64(reached), "watchers/round")
		})
		b.Run(name+"/join", func(b *testing.B) {
			fb := newFanoutBench(b, n, withPolicy)
			var bytes, reached int
			for i := 0; b.Loop(); i++ {
				fb.join(b, n+i, time.Now())
				bytes, reached = fb.round()
			}
			b.ReportMetric(float64(bytes), "bytes/round")
			b.ReportMetric(float64(reached), "watchers/round")
		})
		if !withPolicy {
			continue
		}
		b.Run(name+"/policy-change", func(b *testing.B) {
			fb := newFanoutBench(b, n, withPolicy)
			var bytes, reached int
			for i := 0; b.Loop(); i++ {
				fb.next()
				if _, err := fb.st.SetPolicy(api.DefaultVNet, []byte(groupPolicy(i+1)), "admin", time.Now(), i+1); err != nil {
					b.Fatal(err)
				}
				bytes, reached = fb.round()
			}
			b.ReportMetric(float64(bytes), "bytes/round")
			b.ReportMetric(float64(reached), "watchers/round")
		})
	}
}

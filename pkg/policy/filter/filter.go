package filter

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/pkg/policy"
)

// Verdict is what to do with a packet.
type Verdict uint8

// Verdicts.
const (
	Drop Verdict = iota
	Accept
)

func (v Verdict) String() string {
	if v == Accept {
		return "accept"
	}
	return "drop"
}

// Defaults of Config.
const (
	DefaultMaxFlows       = 1 << 16
	DefaultTCPTimeout     = 2*time.Hour + 10*time.Minute // past Linux's 2 h keepalive, so a kept-alive flow never expires
	DefaultUDPTimeout     = 2 * time.Minute
	DefaultICMPTimeout    = 30 * time.Second
	DefaultClosingTimeout = time.Minute // a TCP flow after a FIN or RST
)

// Config configures a Filter. Every field is optional.
type Config struct {
	MaxFlows       int // flows tracked at most; DefaultMaxFlows
	TCPTimeout     time.Duration
	UDPTimeout     time.Duration
	ICMPTimeout    time.Duration
	ClosingTimeout time.Duration
	// Now is the clock; time.Now unless a test drives it.
	Now func() time.Time
}

// Filter is a stateful packet filter for one peer. It is safe for
// concurrent use by any number of goroutines.
type Filter struct {
	now      func() time.Time
	epoch    time.Time
	timeouts [4]int64 // by timeoutClass, in ns
	perShard int

	mu  sync.Mutex // serializes SetRules
	gen uint64     // guarded by mu
	cur atomic.Pointer[installed]

	dropped atomic.Uint64
	shards  [numShards]shard
}

// installed is a Ruleset with the generation SetRules gave it.
type installed struct {
	rs  *Ruleset // nil: no policy, everything passes
	gen uint64
}

const (
	shardBits = 6
	numShards = 1 << shardBits
)

// shard is one part of the flow table, locked on its own so that
// goroutines on different flows do not contend.
type shard struct {
	mu         sync.RWMutex
	m          map[key]*flow          // guarded by mu; the *flow's fields are atomic
	lastExpire int64                  // guarded by mu: when evict last looked for expired flows
	_          [128 - 24 - 8 - 8]byte // keep shards on cache lines of their own
}

// key identifies a flow, always in the inbound direction: remote is the
// far side (the source of inbound packets), local this peer or a host
// behind it. For ICMP echo, rport is the identifier and lport 0.
type key struct {
	remote, local netip.Addr
	rport, lport  uint16
	proto         uint8
}

// Flow states, bits of flow.state.
const (
	flowInbound uint32 = 1 << iota // opened by an inbound packet that a rule admitted
	flowClosing                    // TCP FIN or RST seen
	flowCut                        // opened inbound, then refused by a new Ruleset
)

// flow is a tracked flow. Its fields are atomic: readers hold only their
// shard's read lock.
type flow struct {
	last  atomic.Int64  // ns since epoch of the last packet, to about a second
	gen   atomic.Uint64 // generation of the Ruleset that last admitted an inbound flow
	state atomic.Uint32
}

// refreshEvery is how stale flow.last may get before a packet updates it:
// updating it on every packet would bounce its cache line between cores.
const refreshEvery = int64(time.Second)

// New returns a Filter with no policy: it passes everything, and tracks
// flows so that the first SetRules keeps those the rules admit.
func New(cfg Config) *Filter {
	f := &Filter{now: cfg.Now}
	if f.now == nil {
		f.now = time.Now
	}
	f.epoch = f.now()
	orDefault := func(d, def time.Duration) int64 {
		if d <= 0 {
			d = def
		}
		return int64(d)
	}
	f.timeouts = [4]int64{
		classTCP:     orDefault(cfg.TCPTimeout, DefaultTCPTimeout),
		classUDP:     orDefault(cfg.UDPTimeout, DefaultUDPTimeout),
		classICMP:    orDefault(cfg.ICMPTimeout, DefaultICMPTimeout),
		classClosing: orDefault(cfg.ClosingTimeout, DefaultClosingTimeout),
	}
	maxFlows := cfg.MaxFlows
	if maxFlows <= 0 {
		maxFlows = DefaultMaxFlows
	}
	f.perShard = max((maxFlows+numShards-1)/numShards, 1)
	for i := range f.shards {
		f.shards[i].m = make(map[key]*flow)
	}
	f.gen = 1
	f.cur.Store(&installed{gen: 1})
	return f
}

// SetRules installs a new Ruleset (nil: no policy) at once, for every
// packet that follows. Established flows are kept: the first packet of a
// flow opened inbound under an older Ruleset is judged again by the new
// one, and the flow is cut (its packets dropped both ways until it falls
// idle) if the new rules do not admit it. Flows this side opened are not
// the receiver's policy to judge and stay.
func (f *Filter) SetRules(rs *Ruleset) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.cur.Store(&installed{rs: rs, gen: f.gen})
}

// Rules returns the Ruleset in force.
func (f *Filter) Rules() *Ruleset { return f.cur.Load().rs }

func (f *Filter) clock() int64 { return int64(f.now().Sub(f.epoch)) }

const (
	classTCP = iota
	classUDP
	classICMP
	classClosing
)

func (f *Filter) timeout(proto uint8, state uint32) int64 {
	switch {
	case state&flowClosing != 0:
		return f.timeouts[classClosing]
	case proto == protoTCP:
		return f.timeouts[classTCP]
	case proto == protoUDP:
		return f.timeouts[classUDP]
	}
	return f.timeouts[classICMP]
}

func (f *Filter) shard(k *key) *shard {
	// The low halves of the addresses hold all of an IPv4 address and an
	// IPv6 interface identifier: enough to spread flows.
	a, b := k.remote.As16(), k.local.As16()
	h := binary.LittleEndian.Uint64(a[8:]) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(b[8:]), 29) ^
		uint64(k.rport)<<32 ^ uint64(k.lport)<<8 ^ uint64(k.proto)
	h *= 0x9e3779b97f4a7c15
	return &f.shards[h>>(64-shardBits)]
}

func (f *Filter) lookup(sh *shard, k *key) *flow {
	sh.mu.RLock()
	fl := sh.m[*k]
	sh.mu.RUnlock()
	return fl
}

// flowKey builds the key of p; out says p leaves this peer, so its source
// is the local end.
func flowKey(p *packet, out bool) key {
	k := key{remote: p.src, local: p.dst, rport: p.sport, lport: p.dport, proto: p.proto}
	if out {
		k = key{remote: p.dst, local: p.src, rport: p.dport, lport: p.sport, proto: p.proto}
	}
	if p.proto == protoICMP || p.proto == protoICMPv6 {
		k.rport, k.lport = p.sport, 0 // the echo identifier, the same both ways
	}
	return k
}

// In judges a packet that arrived through the mesh, to be delivered to
// this peer or forwarded into its LAN. It accepts a packet of a tracked
// flow (one the rules admitted, or one this side opened: replies pass), a
// packet the rules admit (which opens a flow), an ICMP error about a
// tracked flow, and a fragment after the first (the first was judged; the
// rest cannot be reassembled without it). Everything else is dropped when
// a Ruleset is in force; with none, everything passes and flows are
// tracked all the same.
func (f *Filter) In(b []byte) Verdict {
	return f.in(b, f.clock(), f.cur.Load())
}

// InBatch judges a batch of received packets as In does, reading the
// clock once: pkts[i][offset:] is a packet and verdicts[i] gets its
// verdict. A batch is how wireguard-go hands packets to its TUN device.
func (f *Filter) InBatch(pkts [][]byte, offset int, verdicts []Verdict) {
	now, cur := f.clock(), f.cur.Load()
	for i, b := range pkts {
		verdicts[i] = f.in(b[offset:], now, cur)
	}
}

func (f *Filter) in(b []byte, now int64, cur *installed) Verdict {
	var p packet
	if !parse(b, &p, false) {
		return f.verdict(cur.rs == nil)
	}
	if p.fragment {
		return Accept
	}
	switch p.proto {
	case protoTCP, protoUDP:
	case protoICMP, protoICMPv6:
		switch p.icmp {
		case icmpEchoRequest, icmpEchoReply:
		case icmpError:
			return f.verdict(cur.rs == nil || f.related(p.inner, now))
		default:
			return f.verdict(cur.rs == nil)
		}
	default:
		return f.verdict(cur.rs == nil)
	}
	k := flowKey(&p, false)
	sh := f.shard(&k)
	if fl := f.lookup(sh, &k); fl != nil {
		if v, ok := f.established(fl, &k, &p, now, cur, false); ok {
			return v
		}
	}
	// A new flow. ICMP opens one only with an echo request.
	if p.icmp == icmpEchoReply {
		return f.verdict(cur.rs == nil)
	}
	if cur.rs != nil && !cur.rs.Allows(p.src, p.dst, policy.Proto(p.proto), p.dport) {
		return f.verdict(false)
	}
	f.insert(sh, &k, flowInbound|closing(&p), cur.gen, now)
	return Accept
}

// Out notes a packet this peer sends into the mesh (from itself, or from
// its LAN if it is a gateway), so that the replies pass In. It is never
// the sender's job to enforce the receiver's policy: Out drops only the
// packets of a flow a new Ruleset cut, and otherwise accepts.
func (f *Filter) Out(b []byte) Verdict {
	return f.out(b, f.clock(), f.cur.Load())
}

// OutBatch notes a batch of packets as Out does, reading the clock once.
func (f *Filter) OutBatch(pkts [][]byte, offset int, verdicts []Verdict) {
	now, cur := f.clock(), f.cur.Load()
	for i, b := range pkts {
		verdicts[i] = f.out(b[offset:], now, cur)
	}
}

func (f *Filter) out(b []byte, now int64, cur *installed) Verdict {
	var p packet
	if !parse(b, &p, false) || p.fragment {
		return Accept
	}
	switch p.proto {
	case protoTCP, protoUDP:
	case protoICMP, protoICMPv6:
		if p.icmp != icmpEchoRequest && p.icmp != icmpEchoReply {
			return Accept
		}
	default:
		return Accept
	}
	k := flowKey(&p, true)
	sh := f.shard(&k)
	if fl := f.lookup(sh, &k); fl != nil {
		if v, ok := f.established(fl, &k, &p, now, cur, true); ok {
			return v
		}
	}
	if p.icmp == icmpEchoReply {
		return Accept // to a request this filter did not see; opens nothing
	}
	f.insert(sh, &k, closing(&p), 0, now)
	return Accept
}

func closing(p *packet) uint32 {
	if p.proto == protoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 {
		return flowClosing
	}
	return 0
}

// established handles a packet of a tracked flow. ok false means the flow
// is over (idle too long, or a TCP flow reopened by a SYN) and the packet
// opens a new one.
func (f *Filter) established(fl *flow, k *key, p *packet, now int64, cur *installed, out bool) (Verdict, bool) {
	state := fl.state.Load()
	last := fl.last.Load()
	if now-last > f.timeout(k.proto, state) {
		return 0, false
	}
	if state&flowClosing != 0 && p.tcpFlags&(tcpSYN|tcpACK) == tcpSYN {
		return 0, false
	}
	if state&flowCut != 0 {
		if now-last >= refreshEvery {
			fl.last.Store(now) // a cut flow stays cut while it keeps trying
		}
		return f.verdict(false), true
	}
	if state&flowInbound != 0 {
		if fl.gen.Load() != cur.gen {
			if cur.rs != nil && !cur.rs.Allows(k.remote, k.local, policy.Proto(k.proto), k.lport) {
				fl.state.Or(flowCut)
				fl.last.Store(now)
				return f.verdict(false), true
			}
			fl.gen.Store(cur.gen)
		}
	} else if !out && p.icmp == icmpEchoRequest {
		// This side pinged with this identifier; the far side's own
		// echo request is a new flow for the rules to judge.
		return 0, false
	}
	if c := closing(p); c != 0 && state&flowClosing == 0 {
		fl.state.Or(c)
	}
	if now-last >= refreshEvery {
		fl.last.Store(now)
	}
	return Accept, true
}

// related reports whether a packet quoted by an ICMP error belongs to a
// tracked flow that is not cut. The quoted packet is one this side sent.
func (f *Filter) related(inner []byte, now int64) bool {
	var q packet
	if inner == nil || !parse(inner, &q, true) || q.fragment {
		return false
	}
	switch q.proto {
	case protoTCP, protoUDP:
	case protoICMP, protoICMPv6:
		if q.icmp != icmpEchoRequest && q.icmp != icmpEchoReply {
			return false
		}
	default:
		return false
	}
	k := flowKey(&q, true)
	fl := f.lookup(f.shard(&k), &k)
	if fl == nil {
		return false
	}
	state := fl.state.Load()
	return state&flowCut == 0 && now-fl.last.Load() <= f.timeout(k.proto, state)
}

func (f *Filter) verdict(accept bool) Verdict {
	if accept {
		return Accept
	}
	f.dropped.Add(1)
	return Drop
}

// insert tracks a new flow, or restarts the tracked one under k.
func (f *Filter) insert(sh *shard, k *key, state uint32, gen uint64, now int64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	fl := sh.m[*k]
	if fl == nil {
		if len(sh.m) >= f.perShard {
			f.evict(sh, now)
		}
		fl = new(flow)
		sh.m[*k] = fl
	}
	fl.gen.Store(gen)
	fl.state.Store(state)
	fl.last.Store(now)
}

// evictSample is how many flows a full shard looks at to pick the idlest.
const evictSample = 8

// evict makes room in a full shard: it drops every expired flow, or if
// none has expired (or it looked a moment ago) the idlest of a few.
func (f *Filter) evict(sh *shard, now int64) {
	// Looking through the whole shard for expired flows costs its size:
	// at most once a second, so that a flood of new flows into a full
	// table of live ones pays only the sample.
	if now-sh.lastExpire >= refreshEvery {
		sh.lastExpire = now
		f.expire(sh, now)
		if len(sh.m) < f.perShard {
			return
		}
	}
	var victim key
	oldest, n := int64(1<<63-1), 0
	for k, fl := range sh.m {
		if last := fl.last.Load(); last < oldest {
			oldest, victim = last, k
		}
		if n++; n == evictSample {
			break
		}
	}
	delete(sh.m, victim)
}

// expire drops the expired flows of sh, which the caller has locked.
func (f *Filter) expire(sh *shard, now int64) int {
	n := 0
	for k, fl := range sh.m {
		if now-fl.last.Load() > f.timeout(k.proto, fl.state.Load()) {
			delete(sh.m, k)
			n++
		}
	}
	return n
}

// Sweep drops every expired flow and returns how many. The table never
// holds more than Config.MaxFlows, expired or not; calling Sweep now and
// then returns their memory sooner.
func (f *Filter) Sweep() int {
	now := f.clock()
	n := 0
	for i := range f.shards {
		sh := &f.shards[i]
		sh.mu.Lock()
		n += f.expire(sh, now)
		sh.mu.Unlock()
	}
	return n
}

// Stats are counters for metrics.
type Stats struct {
	Flows   int    // flows tracked, some perhaps expired
	Dropped uint64 // packets dropped since New
}

// Stats returns the counters.
func (f *Filter) Stats() Stats {
	s := Stats{Dropped: f.dropped.Load()}
	for i := range f.shards {
		sh := &f.shards[i]
		sh.mu.RLock()
		s.Flows += len(sh.m)
		sh.mu.RUnlock()
	}
	return s
}

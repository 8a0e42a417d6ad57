package liveness

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/wgcfg"
)

// DefaultPort is the UDP port of health probes, on the overlay address.
const DefaultPort = 7947

// tickEvery is the granularity of probes and verdicts.
const tickEvery = 10 * time.Millisecond

// Target is a peer to observe.
type Target struct {
	Key  wgcfg.Key
	Addr netip.Addr // its overlay address
	// Fast: probe at Timing.FastEvery (traffic goes through it, or it is
	// this gateway's HA partner); otherwise at SlowEvery.
	Fast bool
}

// Config configures a Prober.
type Config struct {
	PrivateKey wgcfg.Key  // required: this peer's WireGuard key
	Addr       netip.Addr // required: this peer's overlay address
	Port       int        // optional: DefaultPort
	// Self is this peer's statement flags (disco.StatusLANOK, StatusFwdOK),
	// read for every answer; required.
	Self   func() byte
	Timing Timing // optional: DefaultTiming
	Logger *slog.Logger
	// Now replaces the clock (tests); optional.
	Now func() time.Time
}

// Prober answers probes from the peers it knows and probes its targets.
// New starts its two goroutines; Close stops them.
type Prober struct {
	cfg  Config
	log  *slog.Logger
	conn *net.UDPConn
	pub  wgcfg.Key
	seq  atomic.Uint64
	// probed is when a peer last probed this one (unix ns): evidence that
	// the mesh reaches it.
	probed atomic.Int64
	// fastProbed is when a peer this one does not probe (a client, not
	// a gateway) last probed it twice within FastStreamGap (unix ns): a
	// client sending traffic through it.
	fastProbed atomic.Int64
	stats      struct{ sentPkts, sentBytes, recvPkts, recvBytes atomic.Uint64 }

	mu      sync.Mutex
	peers   map[wgcfg.Key]*[32]byte // guarded by mu: who may probe, with the shared key
	targets map[wgcfg.Key]*target   // guarded by mu
	view    map[wgcfg.Key]Observation
	lastBy  map[wgcfg.Key]time.Time // guarded by mu: when each peer last probed

	changed chan struct{}
	in      chan inbound
	stop    chan struct{}
	done    sync.WaitGroup
}

type target struct {
	addr netip.AddrPort
	t    *tracker
}

type inbound struct {
	pkt  []byte
	from netip.AddrPort
	at   time.Time
}

// New binds the probe socket on the overlay address and starts.
func New(cfg Config) (*Prober, error) {
	if cfg.PrivateKey.IsZero() || !cfg.Addr.IsValid() || cfg.Self == nil {
		return nil, errors.New("liveness: a key, an overlay address and Self are required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, uint16(cfg.Port))))
	if err != nil {
		return nil, err
	}
	p := &Prober{cfg: cfg, log: cfg.Logger.With("component", "liveness"), conn: conn, pub: cfg.PrivateKey.Public(),
		peers: map[wgcfg.Key]*[32]byte{}, targets: map[wgcfg.Key]*target{}, view: map[wgcfg.Key]Observation{},
		lastBy:  map[wgcfg.Key]time.Time{},
		changed: make(chan struct{}, 1), in: make(chan inbound, 256), stop: make(chan struct{})}
	// Statement numbers start from the clock, so they keep growing across
	// restarts.
	p.seq.Store(uint64(time.Now().UnixNano()))
	p.done.Add(2)
	go p.readLoop()
	go p.loop()
	return p, nil
}

// Close stops the prober and waits for its goroutines.
func (p *Prober) Close() error {
	select {
	case <-p.stop:
		return nil
	default:
	}
	close(p.stop)
	err := p.conn.Close()
	p.done.Wait()
	return err
}

// Changed is signalled when an observation changes (alive, LAN, forwarding).
func (p *Prober) Changed() <-chan struct{} { return p.changed }

// SetPeers sets the peers whose probes are answered: the peers of the
// network map.
func (p *Prober) SetPeers(keys []wgcfg.Key) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[wgcfg.Key]*[32]byte, len(keys))
	for _, k := range keys {
		if sk, ok := p.peers[k]; ok {
			next[k] = sk
		} else {
			next[k] = disco.SharedKey(p.cfg.PrivateKey, k)
		}
	}
	p.peers = next
	for k := range p.lastBy {
		if next[k] == nil {
			delete(p.lastBy, k)
		}
	}
}

// SetTargets replaces the peers observed; an observed peer must also be
// among SetPeers.
func (p *Prober) SetTargets(ts []Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[wgcfg.Key]*target, len(ts))
	for _, t := range ts {
		addr := netip.AddrPortFrom(t.Addr, uint16(p.cfg.Port))
		tg, ok := p.targets[t.Key]
		if !ok || tg.addr != addr {
			tg = &target{addr: addr, t: newTracker()}
		}
		tg.t.setFast(t.Fast)
		next[t.Key] = tg
	}
	p.targets = next
	for k := range p.view {
		if next[k] == nil {
			delete(p.view, k)
		}
	}
}

// Stats counts the probe and statement datagrams this prober sent and
// received, and their UDP payload bytes.
type Stats struct{ SentPkts, SentBytes, RecvPkts, RecvBytes uint64 }

// Stats returns the counters since New.
func (p *Prober) Stats() Stats {
	return Stats{p.stats.sentPkts.Load(), p.stats.sentBytes.Load(), p.stats.recvPkts.Load(), p.stats.recvBytes.Load()}
}

// FastStreamGap: two probes from one peer this close are its fast stream.
const FastStreamGap = 200 * time.Millisecond

// LastFastProbed is when a client (a peer this one does not probe) last
// probed it as part of a fast stream, that is while sending traffic
// through it (zero: never).
func (p *Prober) LastFastProbed() time.Time {
	if ns := p.fastProbed.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// LastProbed is when a peer last probed this one (zero: never).
func (p *Prober) LastProbed() time.Time {
	if ns := p.probed.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Observe returns what is known of target k.
func (p *Prober) Observe(k wgcfg.Key) (Observation, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.view[k]
	return o, ok
}

func (p *Prober) readLoop() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-p.stop:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !disco.Looks(buf[:n]) {
			continue
		}
		p.stats.recvPkts.Add(1)
		p.stats.recvBytes.Add(uint64(n))
		select {
		case p.in <- inbound{pkt: append([]byte(nil), buf[:n]...), from: from, at: p.cfg.Now()}:
		default: // overloaded: a lost probe is what the timing allows for
		}
	}
}

type outbound struct {
	pkt []byte
	to  netip.AddrPort
}

func (p *Prober) loop() {
	defer p.done.Done()
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		var out []outbound
		select {
		case <-p.stop:
			return
		case in := <-p.in:
			out = p.handle(in)
		case <-tick.C:
			out = p.tick(p.cfg.Now())
		}
		for _, o := range out {
			if _, err := p.conn.WriteToUDPAddrPort(o.pkt, o.to); err == nil {
				p.stats.sentPkts.Add(1)
				p.stats.sentBytes.Add(uint64(len(o.pkt)))
			}
		}
	}
}

// handle answers a probe or takes a statement; it returns what to send.
func (p *Prober) handle(in inbound) []outbound {
	sender := wgcfg.Key(disco.Sender(in.pkt))
	p.mu.Lock()
	defer p.mu.Unlock()
	shared := p.peers[sender]
	if shared == nil {
		return nil // not a peer of this map
	}
	m, err := disco.Open(in.pkt, shared)
	if err != nil {
		return nil
	}
	switch m.Type {
	case disco.TypeProbe:
		p.probed.Store(in.at.UnixNano())
		if _, isTarget := p.targets[sender]; !isTarget {
			if prev, ok := p.lastBy[sender]; ok && in.at.Sub(prev) < FastStreamGap {
				p.fastProbed.Store(in.at.UnixNano())
			}
			p.lastBy[sender] = in.at
		}
		st := &disco.Message{Type: disco.TypeStatus, TxID: m.TxID, Seq: p.seq.Add(1), Flags: p.cfg.Self()}
		return []outbound{{disco.Seal(st, p.pub, shared), in.from}}
	case disco.TypeStatus:
		tg := p.targets[sender]
		if tg == nil || in.from.Addr().Unmap() != tg.addr.Addr() {
			return nil
		}
		if tg.t.answer(m, in.at) {
			p.updateLocked(sender, tg, in.at)
		}
	}
	return nil
}

// tick sends the probes due and refreshes the verdicts.
func (p *Prober) tick(now time.Time) []outbound {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []outbound
	for k, tg := range p.targets {
		if tg.t.due(now, p.cfg.Timing) {
			if shared := p.peers[k]; shared != nil {
				tx := disco.NewTxID()
				tg.t.sent(tx, now, p.cfg.Timing)
				out = append(out, outbound{disco.Seal(&disco.Message{Type: disco.TypeProbe, TxID: tx}, p.pub, shared), tg.addr})
			}
		}
		p.updateLocked(k, tg, now)
	}
	return out
}

func (p *Prober) updateLocked(k wgcfg.Key, tg *target, now time.Time) {
	o := tg.t.observe(now, p.cfg.Timing)
	old, ok := p.view[k]
	p.view[k] = o
	if !ok || old.Alive != o.Alive || old.LANOK != o.LANOK || old.FwdOK != o.FwdOK {
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}
}

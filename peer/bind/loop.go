package bind

import (
	"net/netip"
	"slices"
	"time"

	"github.com/pion/stun/v3"

	"github.com/meshd/meshd/peer/disco"
	"github.com/meshd/meshd/peer/wgcfg"
)

// STUN timing: reflexive addresses are refreshed every STUNEvery, and
// every STUNRetry while a server has not answered.
const (
	STUNEvery = 20 * time.Second
	STUNRetry = time.Second
	// LocalCheckEvery is how often the host's addresses are compared with
	// the last seen (a laptop moving networks).
	LocalCheckEvery = time.Second
	tickEvery       = 50 * time.Millisecond
)

type peerState struct {
	key    wgcfg.Key
	ep     *peerEndpoint
	paths  *peerPaths
	shared *[32]byte
	// resendAt: when to send the kept handshake initiation again (zero:
	// not scheduled).
	resendAt time.Time
}

type stunReq struct {
	server netip.AddrPort
	sent   time.Time
}

type userPing struct {
	ch   chan PingResult
	sent time.Time
}

// loopState is owned by the run goroutine.
type loopState struct {
	c           *Conn
	peers       map[wgcfg.Key]*peerState
	stunServers []netip.AddrPort
	stunPending map[[stun.TransactionIDSize]byte]stunReq
	reflexive   map[netip.AddrPort]netip.AddrPort
	lastSTUN    map[netip.AddrPort]time.Time
	local       []netip.Addr
	lastLocal   time.Time
	relayAddr   netip.AddrPort
	relayServer string
	relayUDP    []netip.AddrPort // UDP TURN servers (they send on the socket)
	userPings   map[disco.TxID]userPing
	exclude     []netip.Prefix // never a path (see SetPeers)
	// adv caches this host's candidates as pings carry them; nil after
	// anything they derive from changed (addresses, STUN, exclusions).
	adv []netip.AddrPort
}

// advertised returns this host's candidates, the addresses every ping
// carries.
func (s *loopState) advertised() []netip.AddrPort {
	if s.adv == nil {
		d := s.discovery()
		s.adv = d.Endpoints()
	}
	return s.adv
}

func (s *loopState) excluded(a netip.Addr) bool {
	for _, p := range s.exclude {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (s *loopState) usable(eps []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, a := range eps {
		if !s.excluded(a.Addr()) {
			out = append(out, a)
		}
	}
	return out
}

func (c *Conn) run() {
	defer close(c.loopDone)
	s := &loopState{
		c: c, peers: map[wgcfg.Key]*peerState{},
		stunPending: map[[stun.TransactionIDSize]byte]stunReq{},
		reflexive:   map[netip.AddrPort]netip.AddrPort{},
		lastSTUN:    map[netip.AddrPort]time.Time{},
		userPings:   map[disco.TxID]userPing{},
	}
	s.local = c.cfg.LocalAddrs()
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		select {
		case <-c.closing:
			return
		case f := <-c.events:
			f(s)
		case in := <-c.discoIn:
			s.handleDisco(in, time.Now())
		case in := <-c.stunIn:
			s.handleSTUN(in, time.Now())
		case <-c.openCh:
			s.networkChanged(time.Now())
		case now := <-tick.C:
			s.tick(now)
		}
	}
}

func (s *loopState) setPeers(peers []PeerConfig) {
	now := time.Now()
	seen := map[wgcfg.Key]bool{}
	var relayIPs []netip.Addr
	for _, pc := range peers {
		seen[pc.Key] = true
		ps, ok := s.peers[pc.Key]
		if !ok {
			ps = &peerState{key: pc.Key, ep: s.c.endpoint(pc.Key), paths: newPeerPaths(),
				shared: disco.SharedKey(s.c.privKey, pc.Key)}
			ps.paths.relayUp = s.relayAddr.IsValid()
			s.peers[pc.Key] = ps
		}
		ps.paths.setCandidates(s.usable(pc.Endpoints), pc.Relay, now)
		if pc.Relay.IsValid() && !slices.Contains(relayIPs, pc.Relay.Addr()) {
			relayIPs = append(relayIPs, pc.Relay.Addr())
		}
	}
	for k, ps := range s.peers {
		if !seen[k] {
			ps.ep.path.Store(nil)
			delete(s.peers, k)
		}
	}
	s.publishDirect()
	s.c.relay.permit(relayIPs)
	// Probe and choose now, so WireGuard's first handshake has a path.
	for _, ps := range s.peers {
		s.service(ps, now)
	}
}

func (s *loopState) setSTUN(servers []netip.AddrPort) {
	if slices.Equal(servers, s.stunServers) {
		return
	}
	s.stunServers = slices.Clone(servers)
	s.adv = nil
	for a := range s.reflexive {
		if !slices.Contains(servers, a) {
			delete(s.reflexive, a)
		}
	}
	s.updateServers()
}

// setRelay records this host's allocation (zero addr: none).
func (s *loopState) setRelay(addr netip.AddrPort, server string, udpServers []netip.AddrPort) {
	changed := addr != s.relayAddr
	s.relayAddr, s.relayServer = addr, server
	s.relayUDP = udpServers
	s.updateServers()
	if !changed {
		return
	}
	now := time.Now()
	for _, ps := range s.peers {
		ps.paths.relayUp = addr.IsValid()
		s.service(ps, now)
	}
	s.c.signalChanged()
}

func (s *loopState) updateServers() {
	m := map[netip.AddrPort]bool{}
	for _, a := range s.stunServers {
		m[a] = true
	}
	for _, a := range s.relayUDP {
		m[a] = true
	}
	s.c.servers.Store(&m)
}

func (s *loopState) discovery() Discovery {
	port := uint16(s.c.port.Load())
	d := Discovery{Port: port, Reflexive: map[netip.AddrPort]netip.AddrPort{}, Relay: s.relayAddr, RelayServer: s.relayServer}
	if port != 0 {
		for _, a := range s.local {
			if !s.excluded(a) {
				d.Local = append(d.Local, netip.AddrPortFrom(a, port))
			}
		}
	}
	for k, v := range s.reflexive {
		d.Reflexive[k] = v
	}
	return d
}

func (s *loopState) tick(now time.Time) {
	if now.Sub(s.lastLocal) >= LocalCheckEvery {
		s.lastLocal = now
		if local := s.c.cfg.LocalAddrs(); !slices.Equal(local, s.local) {
			s.local = local
			s.c.log.Info("local addresses changed", "addrs", local)
			s.networkChanged(now)
		}
	}
	s.stunDue(now)
	for _, ps := range s.peers {
		s.service(ps, now)
	}
	for tx, up := range s.userPings {
		if now.Sub(up.sent) > PendingFor {
			delete(s.userPings, tx)
		}
	}
}

// networkChanged: the socket was (re)opened or the host's addresses
// changed; learn the reflexive addresses again, move the relay if it
// rode the old network, and probe every peer afresh.
func (s *loopState) networkChanged(now time.Time) {
	clear(s.lastSTUN)
	clear(s.reflexive)
	s.adv = nil
	s.c.relay.networkChanged()
	for _, ps := range s.peers {
		ps.paths.restartProbe(now)
	}
	s.c.signalChanged()
}

func (s *loopState) stunDue(now time.Time) {
	if s.c.port.Load() == 0 {
		return
	}
	for _, srv := range s.stunServers {
		every := STUNEvery
		if _, ok := s.reflexive[srv]; !ok {
			every = STUNRetry
		}
		if now.Sub(s.lastSTUN[srv]) < every {
			continue
		}
		s.lastSTUN[srv] = now
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		s.stunPending[req.TransactionID] = stunReq{server: srv, sent: now}
		s.c.sendDirect(req.Raw, srv)
	}
	for id, r := range s.stunPending {
		if now.Sub(r.sent) > 5*time.Second {
			delete(s.stunPending, id)
		}
	}
}

func (s *loopState) handleSTUN(in inbound, now time.Time) {
	m := &stun.Message{Raw: in.pkt}
	if err := m.Decode(); err != nil {
		return
	}
	req, ok := s.stunPending[m.TransactionID]
	if !ok || req.server != in.from {
		s.c.relay.handleInbound(in.pkt, in.from)
		return
	}
	delete(s.stunPending, m.TransactionID)
	var xor stun.XORMappedAddress
	if xor.GetFrom(m) != nil {
		return
	}
	ip, ok := netip.AddrFromSlice(xor.IP)
	if !ok {
		return
	}
	mapped := netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
	if s.reflexive[req.server] != mapped {
		s.reflexive[req.server] = mapped
		s.adv = nil
		s.c.log.Debug("reflexive address", "server", req.server, "mapped", mapped, "rtt", now.Sub(req.sent))
		s.c.signalChanged()
	}
}

// service sends the pings due for one peer and publishes its path.
func (s *loopState) service(ps *peerState, now time.Time) {
	if ns := ps.ep.lastSend.Load(); ns != 0 {
		ps.paths.lastSend = time.Unix(0, ns)
	}
	if hu := ps.ep.holdUntil.Load(); hu != 0 && now.UnixNano() >= hu && ps.ep.holdUntil.CompareAndSwap(hu, 0) {
		ps.resendAt = now // an initiation held back for crossing the peer's, not answered
	}
	s.resendDue(ps, now)
	if c := ps.paths.cur; c != nil && !c.relay {
		if ns := ps.ep.lastRecv.Load(); ns != 0 {
			ps.paths.heard(c, time.Unix(0, ns))
		}
	}
	for _, pr := range ps.paths.pingsDue(now) {
		s.sendPing(ps, pr)
	}
	ps.paths.choose(now)
	cur := ps.paths.cur
	old := ps.ep.path.Load()
	if cur == nil {
		if old != nil {
			ps.ep.path.Store(nil)
		}
		return
	}
	verified := cur.relay || !cur.lastPong.IsZero()
	if old != nil && old.addr == cur.addr && old.relay == cur.relay && old.verified == verified {
		return
	}
	sp := &sendPath{addr: cur.addr, relay: cur.relay, verified: verified}
	if !cur.relay {
		sp.ep = stdEndpoint(cur.addr)
	}
	ps.ep.path.Store(sp)
	s.publishDirect()
	kind := PathDirect
	if sp.relay {
		kind = PathRelay
	}
	s.c.log.Debug("path", "peer", ps.key.String(), "path", kind, "addr", sp.addr, "verified", verified)
	if verified {
		s.resendInit(ps, now)
	}
}

// publishDirect tells the receive path which address is each peer's
// direct path now.
func (s *loopState) publishDirect() {
	m := make(map[netip.AddrPort]*peerEndpoint, len(s.peers))
	for _, ps := range s.peers {
		if p := ps.ep.path.Load(); p != nil && !p.relay {
			m[p.addr] = ps.ep
		}
	}
	s.c.direct.Store(&m)
}

// ResendAfter is how long after the peer can take it a kept handshake
// initiation waits before it is sent again: the peer may be initiating
// itself just then, and two initiations that cross make each side drop
// the other's response (WireGuard then retries only after 5 s). Answering
// the peer's initiation in the meantime cancels the resend.
const ResendAfter = 250 * time.Millisecond

// resendInit schedules sending again the handshake initiation WireGuard
// sent while the peer could not take it, now that it can: a path to it
// answers, or it sent an authenticated probe (so it knows this host).
func (s *loopState) resendInit(ps *peerState, now time.Time) {
	if ps.resendAt.IsZero() && ps.ep.hasInit.Load() {
		ps.resendAt = now.Add(resendDelay(wgcfg.Key(s.c.pubKey), ps.key))
	}
}

// resendDue sends the scheduled initiation, if it is still kept.
func (s *loopState) resendDue(ps *peerState, now time.Time) {
	if ps.resendAt.IsZero() || now.Before(ps.resendAt) {
		return
	}
	ps.resendAt = time.Time{}
	if !ps.ep.hasInit.Load() {
		return // a session came up, or this host answered the peer's own
	}
	ps.ep.initMu.Lock()
	init, at := ps.ep.lastInit, ps.ep.initAt
	ps.ep.lastInit = nil
	ps.ep.hasInit.Store(false)
	ps.ep.initMu.Unlock()
	if init != nil && now.Sub(at) < 5*time.Second {
		ps.ep.initSent.Store(now.UnixNano())
		s.c.sendOn([][]byte{init}, ps.ep.path.Load())
	}
}

func (s *loopState) sendPing(ps *peerState, pr probe) {
	m := &disco.Message{Type: disco.TypePing, TxID: pr.tx, Addrs: s.advertised()}
	s.sendDisco(ps, m, pr.addr, pr.relay)
}

func (s *loopState) sendDisco(ps *peerState, m *disco.Message, to netip.AddrPort, relay bool) {
	pkt := disco.Seal(m, s.c.pubKey, ps.shared)
	if relay {
		s.c.relay.sendDisco(pkt, to)
		return
	}
	s.c.sendDirect(pkt, to)
}

func (s *loopState) handleDisco(in inbound, now time.Time) {
	ps, ok := s.peers[disco.Sender(in.pkt)]
	if !ok {
		return
	}
	m, err := disco.Open(in.pkt, ps.shared)
	if err != nil {
		return
	}
	if !in.viaRelay && s.excluded(in.from.Addr()) {
		return // came through the mesh itself: never a path
	}
	defer s.resendInit(ps, now) // the peer knows this host now
	switch m.Type {
	case disco.TypePing:
		s.sendDisco(ps, &disco.Message{Type: disco.TypePong, TxID: m.TxID, Src: in.from}, in.from, in.viaRelay)
		if !in.viaRelay {
			// The ping's source is a way to the peer (its NAT mapping
			// towards this host): check it at once.
			c, _ := ps.paths.learn(in.from)
			if !c.alive(now, ps.paths.deadAfter(now)) && now.Sub(c.lastPing) > 100*time.Millisecond {
				s.sendPing(ps, ps.paths.ping(c, now))
			}
		} else {
			// A ping through the relay is a call: the peer is probing
			// this host now, so probe its direct candidates back at once
			// and the two sides' packets open each other's NAT.
			for _, a := range s.usable(m.Addrs) {
				ps.paths.learn(a)
			}
			if ps.paths.cur == nil || ps.paths.cur.relay || !ps.paths.cur.alive(now, ps.paths.deadAfter(now)) {
				for _, pr := range ps.paths.answerCall(now) {
					s.sendPing(ps, pr)
				}
			}
		}
		s.service(ps, now)
	case disco.TypePong:
		pd, ok := ps.paths.pending[m.TxID]
		if !ps.paths.pong(m.TxID, now) {
			return
		}
		if up, ok2 := s.userPings[m.TxID]; ok && ok2 {
			delete(s.userPings, m.TxID)
			r := PingResult{Path: PathDirect, Addr: pd.addr, RTT: now.Sub(pd.sent)}
			if pd.relay {
				r.Path = PathRelay
			}
			select {
			case up.ch <- r:
			default:
			}
		}
		s.service(ps, now)
	}
}

func (s *loopState) userPing(key wgcfg.Key, ch chan PingResult) error {
	ps, ok := s.peers[key]
	if !ok {
		return ErrUnknownPeer
	}
	now := time.Now()
	for _, c := range ps.paths.cands {
		if c.relay && !ps.paths.relayUp {
			continue
		}
		pr := ps.paths.ping(c, now)
		s.userPings[pr.tx] = userPing{ch: ch, sent: now}
		s.sendPing(ps, pr)
	}
	return nil
}

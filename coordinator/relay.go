package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/pion/stun/v3"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/relay"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// Relay defaults.
const (
	DefaultRelayCredentialTTL = time.Hour
	// DefaultRelayTLSPort is the port of TURN over TLS (RFC 8656's turns:).
	DefaultRelayTLSPort = 5349
	// relayRevokeEvery bounds how often removed peers' allocations are
	// looked for: at most once a second, after a state change.
	relayRevokeEvery = time.Second
	// DefaultSTUNRequestRate is how many STUN and TURN requests over UDP
	// one source address may send per second (Config.STUNRequestRate).
	DefaultSTUNRequestRate = relay.DefaultRequestRate
	// relayResolveTimeout bounds the lookup of an advertised host name.
	relayResolveTimeout = 3 * time.Second
)

// parseRelayURL checks an external relay's URL and returns its canonical
// form: turn:HOST:PORT?transport=udp|tcp or turns:HOST:PORT?transport=tcp.
func parseRelayURL(raw string) (string, error) {
	u, err := stun.ParseURI(raw)
	if err != nil {
		return "", fmt.Errorf("relay URL %q: %w", raw, err)
	}
	switch {
	case u.Scheme == stun.SchemeTypeTURN:
	case u.Scheme == stun.SchemeTypeTURNS && u.Proto == stun.ProtoTypeTCP:
	default:
		return "", fmt.Errorf("relay URL %q: want turn:HOST:PORT[?transport=udp|tcp] or turns:HOST:PORT[?transport=tcp]", raw)
	}
	if u.Port <= 0 || u.Port > 65535 {
		return "", fmt.Errorf("relay URL %q: port %d is out of range", raw, u.Port)
	}
	return u.String(), nil
}

// bindRelayUDP binds the UDP socket STUN and TURN share.
func bindRelayUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("stun listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("stun listen %s: %w", addr, err)
	}
	relay.GrowBuffers(conn)
	return conn, nil
}

// listenRelayTLS binds the TURN-over-TLS listener. With fallback, a port in
// use gives way to an ephemeral port of the same host (the default address
// of several coordinators on one host); the port is advertised either way.
func listenRelayTLS(addr string, fallback bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && fallback && errors.Is(err, syscall.EADDRINUSE) {
		host, _, _ := net.SplitHostPort(addr)
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	}
	if err != nil {
		return nil, fmt.Errorf("relay tls listen %s: %w", addr, err)
	}
	return ln, nil
}

// relayAddress finds the address relayed addresses are on: the advertised
// API host, looked up if it is a name (IPv4 preferred). bind is what relay
// sockets bind: that address when it is one of this host's, else the
// unspecified address of its family (a public address in front of a NAT).
// It fails when the host does not resolve.
func relayAddress(ctx context.Context, apiURL string) (ip, bind netip.Addr, err error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return ip, bind, fmt.Errorf("relay address from %q: %w", apiURL, err)
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		ip = a.Unmap()
	} else {
		ctx, cancel := context.WithTimeout(ctx, relayResolveTimeout)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			return ip, bind, fmt.Errorf("look up relay address %q: %w", host, err)
		}
		slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
			switch {
			case a.Unmap().Is4() && !b.Unmap().Is4():
				return -1
			case !a.Unmap().Is4() && b.Unmap().Is4():
				return 1
			}
			return 0
		})
		ip = addrs[0].Unmap()
	}
	if ip.IsUnspecified() {
		return netip.Addr{}, bind, fmt.Errorf("relay address %s is unspecified", ip)
	}
	probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err == nil {
		probe.Close()
		return ip, ip, nil
	}
	if ip.Is4() {
		return ip, netip.IPv4Unspecified(), nil
	}
	return ip, netip.IPv6Unspecified(), nil
}

// startRelay runs the TURN server on the STUN socket and, unless an
// external relay is configured, on the TLS listener with cert (the API's).
// It needs the advertised API URL.
func (s *Server) startRelay(cert tls.Certificate) error {
	external := len(s.relayURLs) > 0
	var relayIP, bindIP netip.Addr
	if !external && (s.relayUDP != nil || s.cfg.RelayTLSListen != "") {
		var err error
		relayIP, bindIP, err = relayAddress(context.Background(), s.apiURL)
		if err != nil {
			s.log.Warn("relay allocates no relayed addresses: the advertised API host has no address", "err", err)
		} else if bindIP != relayIP {
			s.log.Info("relay address is not on this host; relay sockets bind every address", "relay_ip", relayIP, "bind", bindIP)
		}
	}
	cfg := relay.Config{
		RelayIP: relayIP, BindIP: bindIP,
		PortMin: s.cfg.RelayPortMin, PortMax: s.cfg.RelayPortMax,
		Secret:    s.relaySecret[:],
		PeerOK:    s.peerExists,
		PeerIPOK:  s.isRelayIP,
		Bandwidth: s.cfg.RelayBandwidth,
		// A burst of twice the rate: a netcheck's or a restart's few
		// requests at once pass.
		RequestRate: s.cfg.STUNRequestRate, RequestBurst: 2 * s.cfg.STUNRequestRate,
		Logger: s.cfg.Logger.With("node", s.cfg.Name),
		Now:    s.cfg.Now,
	}
	if s.relayUDP != nil {
		cfg.PacketConn = s.relayUDP
	}
	if relayIP.IsValid() && s.cfg.RelayTLSListen != "" {
		ln, err := listenRelayTLS(s.cfg.RelayTLSListen, s.cfg.RelayTLSFallback)
		if err != nil {
			return err
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		if _, want, _ := net.SplitHostPort(s.cfg.RelayTLSListen); want != "0" && want != port {
			s.log.Warn("relay TLS port is taken; listening on an ephemeral port, which peers learn from the cluster", "want", s.cfg.RelayTLSListen, "bound", ln.Addr().String())
		}
		u, _ := url.Parse(s.apiURL)
		s.relayTLSAddr = net.JoinHostPort(u.Hostname(), port)
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		cfg.Listener = newHandshakeListener(ln, tlsCfg, apiLimits)
	}
	if cfg.PacketConn == nil && cfg.Listener == nil {
		return nil
	}
	s.relayIP = relayIP // before the relay's goroutines read it (isRelayIP)
	r, err := relay.New(cfg)
	if err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return err
	}
	s.relay = r
	s.closers = append(s.closers, r)
	s.log.Info("relay running", "udp", s.cfg.STUNListen, "tls", s.relayTLSAddr, "relay_ip", relayIP,
		"ports", fmt.Sprintf("%d-%d", s.cfg.RelayPortMin, s.cfg.RelayPortMax), "bandwidth", s.cfg.RelayBandwidth, "external", s.relayURLs)
	return nil
}

// peerExists reports whether id is a current peer in the local replica.
func (s *Server) peerExists(id string) bool {
	var ok bool
	s.store.Read(func(t *state.Tables, _ uint64) { _, ok = t.Peers[id] })
	return ok
}

// isRelayIP reports whether ip is an address some coordinator's relay
// allocates on (this one's counts before its registration is replicated).
func (s *Server) isRelayIP(ip netip.Addr) bool {
	if ip == s.relayIP {
		return true
	}
	var ips []netip.Addr
	s.store.Read(func(t *state.Tables, _ uint64) { ips = netmap.RelayIPs(t) })
	return slices.Contains(ips, ip)
}

// relayLoop ends the relay allocations of peers that were removed, at most
// once every relayRevokeEvery after a state change.
func (s *Server) relayLoop(ctx context.Context) {
	if s.relay == nil || !s.relayIP.IsValid() {
		return
	}
	ch := s.store.WatchCh()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		ch = s.store.WatchCh()
		s.relay.Revoke(s.peerExists)
		select {
		case <-ctx.Done():
			return
		case <-time.After(relayRevokeEvery):
		}
	}
}

// handleRelay answers GET /v1/relay: the relays this peer may use, each
// with a TURN REST credential made for it. With external relays
// configured those are handed out instead of the coordinators' own.
func (s *Server) handleRelay(w http.ResponseWriter, r *http.Request, peerID string) {
	exp := time.Unix(s.now().Add(s.cfg.RelayCredentialTTL).Unix(), 0).UTC()
	out := api.RelayConfig{Servers: []api.RelayServer{}, Expires: exp}
	if len(s.relayURLs) > 0 {
		user, pass := relay.Credential(s.cfg.RelaySecret, peerID, exp)
		for _, u := range s.relayURLs {
			out.Servers = append(out.Servers, api.RelayServer{URL: u, Username: user, Password: pass})
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	var udp, tlsURLs []string
	s.store.Read(func(t *state.Tables, _ uint64) {
		vnet := ""
		if p := t.Peers[peerID]; p != nil {
			vnet = p.VNet
		}
		udp, tlsURLs = netmap.RelayURLs(t, vnet)
	})
	user, pass := relay.Credential(s.relaySecret[:], peerID, exp)
	for _, u := range udp {
		out.Servers = append(out.Servers, api.RelayServer{URL: u, Username: user, Password: pass})
	}
	for _, u := range tlsURLs {
		out.Servers = append(out.Servers, api.RelayServer{URL: u, Username: user, Password: pass, Pinned: true})
	}
	writeJSON(w, http.StatusOK, out)
}

// stunAdvertise is the STUN address peers use: the advertised API host with
// the bound STUN port.
func stunAdvertise(apiURL string, port int) string {
	u, err := url.Parse(apiURL)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	return net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
}

package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"

	"github.com/pion/stun/v3"
)

// stunServer answers STUN binding requests (RFC 5389) with the sender's
// address as seen here, so peers learn their public endpoint. Anything else
// is dropped; an answer is never larger than a fixed small size, so the
// server cannot be used to amplify traffic.
type stunServer struct {
	conn *net.UDPConn
	log  *slog.Logger
}

func newSTUNServer(addr string, log *slog.Logger) (*stunServer, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("stun listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("stun listen %s: %w", addr, err)
	}
	return &stunServer{conn: conn, log: log.With("component", "stun")}, nil
}

// Port is the UDP port the server is bound to.
func (s *stunServer) Port() int { return s.conn.LocalAddr().(*net.UDPAddr).Port }

func (s *stunServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("stun read", "err", err)
			}
			return
		}
		if !stun.IsMessage(buf[:n]) {
			continue
		}
		req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := req.Decode(); err != nil || req.Type != stun.BindingRequest {
			continue
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())}, stun.Fingerprint)
		if err != nil {
			continue
		}
		s.conn.WriteToUDPAddrPort(resp.Raw, from)
	}
}

func (s *stunServer) Close() error { return s.conn.Close() }

// stunAdvertise is the STUN address peers use: the advertised API host with
// the STUN port.
func stunAdvertise(apiURL string, port int) string {
	u, err := url.Parse(apiURL)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
}

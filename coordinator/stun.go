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
// address as seen here (XOR-MAPPED-ADDRESS), so peers learn their public
// endpoint. Anything that is not a well-formed binding request is dropped
// without an answer. An answer is a 20-byte header, the mapped address and a
// fingerprint (at most 52 bytes) while a request is at least 20 bytes, so the
// server cannot be used to amplify traffic.
type stunServer struct {
	conn *net.UDPConn
	log  *slog.Logger
	done chan struct{} // closed when serve returns
}

// newSTUNServer binds addr and starts answering; Close stops it.
func newSTUNServer(addr string, log *slog.Logger) (*stunServer, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("stun listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("stun listen %s: %w", addr, err)
	}
	s := &stunServer{conn: conn, log: log.With("component", "stun"), done: make(chan struct{})}
	go s.serve()
	return s, nil
}

// Port is the UDP port the server is bound to.
func (s *stunServer) Port() int { return s.conn.LocalAddr().(*net.UDPAddr).Port }

func (s *stunServer) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	req := new(stun.Message)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("stun read", "err", err)
			}
			return
		}
		resp, ok := stunAnswer(req, buf[:n], from.Addr().Unmap().AsSlice(), int(from.Port()))
		if !ok {
			continue
		}
		if _, err := s.conn.WriteToUDPAddrPort(resp, from); err != nil {
			s.log.Debug("stun write", "to", from, "err", err)
		}
	}
}

// stunAnswer decodes pkt into req and returns the binding success response
// for a sender at ip:port, or false when pkt is not a binding request.
func stunAnswer(req *stun.Message, pkt, ip []byte, port int) ([]byte, bool) {
	if !stun.IsMessage(pkt) {
		return nil, false
	}
	req.Reset()
	req.Raw = append(req.Raw[:0], pkt...)
	if err := req.Decode(); err != nil || req.Type != stun.BindingRequest {
		return nil, false
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: ip, Port: port}, stun.Fingerprint)
	if err != nil {
		return nil, false
	}
	return resp.Raw, true
}

// Close stops the server and waits until it no longer answers. It is safe
// to call twice.
func (s *stunServer) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
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

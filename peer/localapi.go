package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// serveLocal answers `meshd status` on a unix socket in the state dir that
// only root (the socket's owner) can open.
func (a *Agent) serveLocal(ctx context.Context) (net.Listener, error) {
	path := filepath.Join(a.cfg.StateDir, SocketName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local api: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.Status()
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeInternal, "%v", err)})
			return
		}
		json.NewEncoder(w).Encode(st)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return ln, nil
}

// Status reports the peer as `meshd status` shows it.
func (a *Agent) Status() (*api.LocalStatus, error) {
	var st []engine.PeerStatus
	if a.eng != nil {
		var err error
		if st, err = a.eng.Status(); err != nil {
			return nil, err
		}
	}
	byKey := map[wgcfg.Key]engine.PeerStatus{}
	for _, s := range st {
		byKey[s.PublicKey] = s
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &api.LocalStatus{
		Self:         api.LocalSelf{Name: a.id.Name, VNet: a.id.VNet, OverlayIP: a.id.OverlayIP, PublicKey: a.PublicKey().String(), Role: api.RoleClient},
		Interface:    a.cfg.Interface,
		ListenPort:   int(a.cfg.ListenPort),
		Endpoints:    slices.Clone(a.endpoints),
		Coordinator:  a.connected,
		MapIndex:     a.nm.index,
		Coordinators: slices.Clone(a.nm.coordinators),
		Peers:        []api.LocalPeer{},
		Routes:       []api.LocalRoute{},
	}
	if a.nm.self != nil && a.nm.self.Role != "" {
		out.Self.Role = a.nm.self.Role
	}
	if a.want != nil {
		out.Routes = append(out.Routes, a.want.routes...)
		for _, p := range a.want.wg.Peers {
			s := byKey[p.PublicKey]
			lp := api.LocalPeer{Name: a.want.names[p.PublicKey], PublicKey: p.PublicKey.String(), RxBytes: s.RxBytes, TxBytes: s.TxBytes}
			for _, pfx := range p.AllowedIPs {
				if pfx.IsSingleIP() && lp.OverlayIP == "" {
					lp.OverlayIP = pfx.Addr().String()
				} else {
					lp.Routes = append(lp.Routes, pfx.String())
				}
			}
			ep := s.Endpoint
			if !ep.IsValid() {
				ep = p.Endpoint
			}
			if ep.IsValid() {
				lp.Endpoint = ep.String()
			}
			if !s.LastHandshake.IsZero() {
				t := s.LastHandshake.UTC()
				lp.LastHandshake = &t
				lp.Online = time.Since(t) < OnlineWithin
			}
			out.Peers = append(out.Peers, lp)
		}
	}
	slices.SortFunc(out.Peers, func(x, y api.LocalPeer) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// QueryStatus asks the agent whose state dir is dir for its status.
func QueryStatus(ctx context.Context, dir string) (*api.LocalStatus, error) {
	path := filepath.Join(dir, SocketName)
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshd/v1/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("no agent answers on %s (is `meshd peer up --state-dir %s` running?): %w", path, dir, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != nil {
			return nil, eb.Error
		}
		return nil, fmt.Errorf("agent answered %s", resp.Status)
	}
	var st api.LocalStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	return &st, nil
}

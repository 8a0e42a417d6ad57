package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// localMux answers `meshd status`, `meshd ping` and `meshd netcheck`.
func (a *Agent) localMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.Status(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Errorf(api.CodeInternal, "%v", err)})
			return
		}
		json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("POST /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Ping(r.Context(), r.URL.Query().Get("peer"))
		writeLocal(w, res, err)
	})
	mux.HandleFunc("GET /v1/netcheck", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Netcheck(r.Context())
		writeLocal(w, res, err)
	})
	return mux
}

// Status reports the peer as `meshd status` shows it. The loop answers
// from its state; the engine and the bind are asked afterwards, off the
// loop.
func (a *Agent) Status(ctx context.Context) (*api.LocalStatus, error) {
	return a.status(ctx, nil)
}

// status is Status; also, when not nil, reads more of the state in the
// same turn of the loop (metrics.go).
func (a *Agent) status(ctx context.Context, also func(*state)) (*api.LocalStatus, error) {
	var out *api.LocalStatus
	var want *desired
	// reports: what the health sources (probes, gossip) say of each peer,
	// by key; nil before either runs.
	var reports map[wgcfg.Key]health.State
	err := a.do(ctx, func(s *state) {
		out = &api.LocalStatus{
			Self:         api.LocalSelf{Name: a.id.Name, VNet: a.id.VNet, OverlayIP: a.id.OverlayIP, OverlayIP6: a.id.OverlayIP6, PublicKey: a.PublicKey().String(), Role: api.RoleClient},
			Interface:    a.cfg.Interface,
			ListenPort:   int(a.cfg.ListenPort),
			Endpoints:    slices.Clone(s.endpoints),
			Coordinator:  s.connected,
			MapIndex:     s.nm.index,
			Coordinators: slices.Clone(s.nm.coordinators),
			Peers:        []api.LocalPeer{},
			Routes:       []api.LocalRoute{},
		}
		if s.nm.self != nil && s.nm.self.Role != "" {
			out.Self.Role = s.nm.self.Role
		}
		if s.nm.self != nil && s.nm.self.OverlayIP6 != "" {
			out.Self.OverlayIP6 = s.nm.self.OverlayIP6
		}
		want = s.want // never changed once made
		if s.health != nil || s.live != nil {
			reports = map[wgcfg.Key]health.State{}
			for id, p := range s.nm.peers {
				if v, ok := s.view.peers[id]; ok {
					if k, err := wgcfg.ParseKey(p.PublicKey); err == nil {
						reports[k] = v.state
					}
				}
			}
		}
		if also != nil {
			also(s)
		}
	})
	if err != nil {
		return nil, err
	}
	if want == nil {
		return out, nil
	}
	st, err := a.eng.Status()
	if err != nil {
		return nil, err
	}
	byKey := map[wgcfg.Key]engine.PeerStatus{}
	for _, s := range st {
		byKey[s.PublicKey] = s
	}
	var paths map[wgcfg.Key]bind.PathStatus
	if a.bind != nil {
		paths = a.bind.Paths()
		out.Relay = addrString(a.bind.Discovery().Relay)
	}
	out.Routes = append(out.Routes, want.routes...)
	now := a.clk.Now()
	for _, p := range want.wg.Peers {
		s := byKey[p.PublicKey]
		lp := api.LocalPeer{Name: want.names[p.PublicKey], PublicKey: p.PublicKey.String(), RxBytes: s.RxBytes, TxBytes: s.TxBytes}
		own := want.addrs[p.PublicKey]
		for _, pfx := range p.AllowedIPs {
			switch {
			case own == nil && pfx.IsSingleIP() && lp.OverlayIP == "": // not from compute: the first host address
				lp.OverlayIP = pfx.Addr().String()
			case len(own) > 0 && pfx == own[0]:
				lp.OverlayIP = pfx.Addr().String()
			case len(own) > 1 && pfx == own[1]:
				lp.OverlayIP6 = pfx.Addr().String()
			default:
				lp.Routes = append(lp.Routes, pfx.String())
			}
		}
		ep := s.Endpoint
		if !ep.IsValid() {
			ep = p.Endpoint
		}
		if ps, ok := paths[p.PublicKey]; ok {
			ep = ps.Addr
			lp.Path, lp.RTTMs = ps.Path, float64(ps.RTT.Microseconds())/1000
		} else if (paths == nil || p.Roaming) && ep.IsValid() {
			lp.Path = api.PathDirect
		}
		if ep.IsValid() {
			lp.Endpoint = ep.String()
		}
		if !s.LastHandshake.IsZero() {
			t := s.LastHandshake.UTC()
			lp.LastHandshake = &t
			age := max(int64(now.Sub(t)/time.Second), 0)
			lp.LastHandshakeAgeSeconds = &age
		}
		var report *health.State
		if r, ok := reports[p.PublicKey]; ok {
			report = &r
		}
		lp.Online = PeerOnline(s.LastHandshake, now, report)
		out.Peers = append(out.Peers, lp)
	}
	slices.SortFunc(out.Peers, func(x, y api.LocalPeer) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

func writeLocal(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		var ae *api.Error
		if errors.As(err, &ae) {
			code = ae.Status()
		} else {
			ae = api.Errorf(api.CodeInternal, "%v", err)
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: ae})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// Ping probes every path to the peer named name (or with that overlay
// address) and reports the first that answers.
func (a *Agent) Ping(ctx context.Context, name string) (*api.PingResult, error) {
	if a.bind == nil {
		return nil, api.Errorf(api.CodeInvalidArgument, "ping needs the userspace engine (this peer runs --wg-mode kernel)")
	}
	var found *api.MapPeer
	if err := a.do(ctx, func(s *state) {
		for _, p := range s.nm.peers {
			if p.Name == name || p.OverlayIP == name || p.OverlayIP6 != "" && p.OverlayIP6 == name {
				found = &p
				break
			}
		}
	}); err != nil {
		return nil, err
	}
	if found == nil {
		return nil, api.Errorf(api.CodeNotFound, "no peer %q in this peer's network map", name)
	}
	key, err := wgcfg.ParseKey(found.PublicKey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := a.bind.Ping(ctx, key)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "ping %s: %v", found.Name, err)
	}
	return &api.PingResult{Peer: found.Name, OverlayIP: found.OverlayIP, Path: r.Path, Endpoint: r.Addr.String(),
		RTTMs: float64(r.RTT.Microseconds()) / 1000}, nil
}

// Netcheck reports what the local network allows, as the bind has learned
// it, with the latency to each relay measured now.
func (a *Agent) Netcheck(ctx context.Context) (*api.Netcheck, error) {
	if a.bind == nil {
		return nil, api.Errorf(api.CodeInvalidArgument, "netcheck needs the userspace engine (this peer runs --wg-mode kernel)")
	}
	d := a.bind.Discovery()
	out := &api.Netcheck{ListenPort: int(d.Port), Reflexive: map[string]string{}, MappingVariesByDest: d.VariesByDestination(),
		Relay: addrString(d.Relay), RelayServer: d.RelayServer}
	for srv, m := range d.Reflexive {
		out.Reflexive[srv.String()] = m.String()
	}
	out.UDP = len(d.Reflexive) > 0
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out.RelayLatencyMs = a.bind.RelayLatency(ctx)
	return out, nil
}

// QueryStatus asks the agent whose state dir is dir for its status.
func QueryStatus(ctx context.Context, dir string) (*api.LocalStatus, error) {
	var st api.LocalStatus
	if err := queryLocal(ctx, dir, http.MethodGet, "/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// QueryPing asks the agent whose state dir is dir to ping peer.
func QueryPing(ctx context.Context, dir, peer string) (*api.PingResult, error) {
	var r api.PingResult
	if err := queryLocal(ctx, dir, http.MethodPost, "/v1/ping?peer="+url.QueryEscape(peer), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// QueryNetcheck asks the agent whose state dir is dir for a netcheck.
func QueryNetcheck(ctx context.Context, dir string) (*api.Netcheck, error) {
	var r api.Netcheck
	if err := queryLocal(ctx, dir, http.MethodGet, "/v1/netcheck", &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func queryLocal(ctx context.Context, dir, method, reqPath string, out any) error {
	path := filepath.Join(dir, SocketName)
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://meshd"+reqPath, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("no agent answers on %s (is `meshd peer up --state-dir %s` running?): %w", path, dir, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != nil {
			return eb.Error
		}
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode %s: %w", reqPath, err)
	}
	return nil
}

package peer

import (
	"context"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/metrics"
)

// Prometheus metrics of an agent (--metrics-listen). Everything is read
// when scraped, through the loop like `meshd status` (Agent.status): the
// HTTP goroutine never touches the loop's state, and nothing is counted
// between scrapes but the failovers the loop already keeps.

const agentSubsystem = "agent"

// metricsTimeout bounds how long a scrape waits for the loop.
const metricsTimeout = 3 * time.Second

// Health words of meshd_agent_peer_health: what this peer believes of
// another's health (healthView), in the words gateways' states use.
const (
	healthHealthy   = "healthy"   // OK, not held down
	healthUnhealthy = "unhealthy" // reported dead, LAN down or forwarding off
	healthHolding   = "holding"   // OK again, inside its hold-down
	healthUnknown   = "unknown"   // not heard of
)

var healthWords = []string{healthHealthy, healthUnhealthy, healthHolding, healthUnknown}

// healthWord is how this peer sees peer id's health at now.
func (v *healthView) healthWord(id string, now time.Time) string {
	p, ok := v.peers[id]
	switch {
	case !ok:
		return healthUnknown
	case !p.state.OK():
		return healthUnhealthy
	case v.holding(p, now):
		return healthHolding
	}
	return healthHealthy
}

func agentDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, agentSubsystem, name), help, labels, nil)
}

var (
	descAgentInfo  = agentDesc("info", "Always 1; labels name this peer, its vnet, overlay address and role.", "name", "vnet", "overlay_ip", "role")
	descMapIndex   = agentDesc("map_index", "Index (version) of the network map this agent runs on.")
	descConnected  = agentDesc("coordinator_connected", "1 while a network-map stream to a coordinator is open, 0 while running on the last map.")
	descPeers      = agentDesc("peers", "Peers in this agent's WireGuard configuration.")
	descOnline     = agentDesc("peer_online", "1 when this peer reaches the other now (handshake age and health, as `meshd status` ONLINE), else 0.", "peer")
	descHandshake  = agentDesc("peer_handshake_age_seconds", "Seconds since the last WireGuard handshake with the peer; absent before the first.", "peer")
	descRx         = agentDesc("peer_rx_bytes_total", "Bytes received from the peer through WireGuard.", "peer")
	descTx         = agentDesc("peer_tx_bytes_total", "Bytes sent to the peer through WireGuard.", "peer")
	descPath       = agentDesc("peer_path", "1 for the path packets take to the peer now (direct, or relay through a TURN relay), 0 for the other; both 0 while there is none.", "peer", "path")
	descRTT        = agentDesc("peer_rtt_seconds", "Round-trip time of the last path probe to the peer; absent when not measured.", "peer")
	descHealth     = agentDesc("peer_health", "1 for what this peer believes of the other's health (healthy, unhealthy, holding: back but inside its hold-down, unknown), 0 for the others.", "peer", "state")
	descRoute      = agentDesc("route_active_gateway", "1 per announced route, labelled with the gateway this peer sends it to now (local: this peer announces it itself).", "prefix", "gateway", "local")
	descFailovers  = agentDesc("failovers_total", "Routes this agent moved from one gateway to another since it started.")
	descSelfHealth = agentDesc("gateway_healthy", "On a gateway: 1 while its own checks (forwarding on, LAN reachable) pass, else 0.")
	descMembers    = agentDesc("gossip_members", "Members of the vnet's health gossip this agent sees, itself included.")
)

// agentCollector reads the agent's status when scraped.
type agentCollector struct {
	a *Agent // nil: describe only (MetricNames)
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgentInfo, descMapIndex, descConnected, descPeers, descOnline, descHandshake, descRx, descTx,
		descPath, descRTT, descHealth, descRoute, descFailovers, descSelfHealth, descMembers} {
		ch <- d
	}
}

// loopFacts is what a scrape reads from the loop besides the status.
type loopFacts struct {
	failovers uint64
	gateway   bool // this peer announces routes
	selfOK    bool
	members   int               // -1: no gossip yet
	health    map[string]string // peer name -> health word
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	ctx, cancel := context.WithTimeout(context.Background(), metricsTimeout)
	defer cancel()
	var f loopFacts
	st, err := a.status(ctx, func(s *state) {
		now := a.clk.Now()
		f = loopFacts{failovers: s.failovers, gateway: len(a.cfg.Routes) > 0, selfOK: s.self.ok(), members: -1, health: map[string]string{}}
		if s.health != nil {
			f.members = s.health.Members()
		}
		for id, p := range s.nm.peers {
			f.health[p.Name] = s.view.healthWord(id, now)
		}
	})
	if err != nil {
		a.log.Debug("metrics: status", "err", err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descAgentInfo, 1, st.Self.Name, st.Self.VNet, st.Self.OverlayIP, st.Self.Role)
	gauge(descMapIndex, float64(st.MapIndex))
	gauge(descConnected, b2f(st.Coordinator != ""))
	gauge(descPeers, float64(len(st.Peers)))
	counter(descFailovers, float64(f.failovers))
	if f.gateway {
		gauge(descSelfHealth, b2f(f.selfOK))
	}
	if f.members >= 0 {
		gauge(descMembers, float64(f.members))
	}
	for _, p := range st.Peers {
		gauge(descOnline, b2f(p.Online), p.Name)
		if p.LastHandshake != nil {
			gauge(descHandshake, max(a.clk.Now().Sub(*p.LastHandshake).Seconds(), 0), p.Name)
		}
		counter(descRx, float64(p.RxBytes), p.Name)
		counter(descTx, float64(p.TxBytes), p.Name)
		gauge(descPath, b2f(p.Path == api.PathDirect), p.Name, api.PathDirect)
		gauge(descPath, b2f(p.Path == api.PathRelay), p.Name, api.PathRelay)
		if p.RTTMs > 0 {
			gauge(descRTT, p.RTTMs/1000, p.Name)
		}
		word, ok := f.health[p.Name]
		if !ok {
			word = healthUnknown
		}
		for _, w := range healthWords {
			gauge(descHealth, b2f(w == word), p.Name, w)
		}
	}
	for _, r := range st.Routes {
		if _, err := netip.ParsePrefix(r.Prefix); err != nil {
			continue
		}
		local := "false"
		if r.Local {
			local = "true"
		}
		gauge(descRoute, 1, r.Prefix, r.ActiveGateway, local)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// MetricNames lists every metric name an agent serves (the Grafana
// dashboard may use only these).
func MetricNames() []string {
	return metrics.Names(append(metrics.Runtime(), &agentCollector{})...)
}

// Metrics is the agent's metrics registry: what --metrics-listen serves.
func (a *Agent) Metrics() prometheus.Gatherer { return a.metricsReg }

// serveMetrics serves Config.MetricsListener until ctx is done.
func (a *Agent) serveMetrics(ctx context.Context) error {
	if err := metrics.Serve(ctx, a.cfg.MetricsListener, a.metricsReg); err != nil {
		a.log.Warn("metrics listener stopped", "err", err)
	}
	return nil
}

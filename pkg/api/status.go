package api

import "time"

// LocalStatus is what a peer agent reports on its local socket
// (`meshd status`).
type LocalStatus struct {
	Self         LocalSelf    `json:"self"`
	Peers        []LocalPeer  `json:"peers"`
	Routes       []LocalRoute `json:"routes"`
	Interface    string       `json:"interface"`
	ListenPort   int          `json:"listen_port"`
	Endpoints    []string     `json:"endpoints"`
	Relay        string       `json:"relay,omitempty"` // this peer's relayed address
	Coordinator  string       `json:"coordinator"`     // the coordinator whose stream is open; empty when none
	MapIndex     uint64       `json:"map_index"`
	Coordinators []string     `json:"coordinators"`
}

// LocalSelf is the peer itself.
type LocalSelf struct {
	Name      string `json:"name"`
	VNet      string `json:"vnet"`
	OverlayIP string `json:"overlay_ip"`
	PublicKey string `json:"public_key"`
	Role      string `json:"role"`
	// OverlayIP6 is its IPv6 address in a dual-stack vnet.
	OverlayIP6 string `json:"overlay_ip6,omitempty"`
}

// LocalPeer is another peer as this one sees it through WireGuard.
type LocalPeer struct {
	Name      string `json:"name"`
	OverlayIP string `json:"overlay_ip"`
	// OverlayIP6 is its IPv6 address in a dual-stack vnet.
	OverlayIP6    string     `json:"overlay_ip6,omitempty"`
	PublicKey     string     `json:"public_key"`
	Endpoint      string     `json:"endpoint"`
	LastHandshake *time.Time `json:"last_handshake"`
	// LastHandshakeAgeSeconds is how long ago LastHandshake was, by the
	// agent's clock, in whole seconds; absent when there was none.
	LastHandshakeAgeSeconds *int64 `json:"last_handshake_age_seconds,omitempty"`
	// Online: this peer reaches the other now, by its own observation
	// (peer.PeerOnline: the handshake age and the health probes and
	// gossip), not by the coordinators' view.
	Online  bool     `json:"online"`
	RxBytes uint64   `json:"rx_bytes"`
	TxBytes uint64   `json:"tx_bytes"`
	Routes  []string `json:"routes,omitempty"`
	// Path is how packets reach the peer now: PathDirect (Endpoint is its
	// address), PathRelay (Endpoint is its relayed address, reached
	// through this peer's relay) or "" (no path yet).
	Path string `json:"path"`
	// RTTMs is the round-trip time of the last probe on that path, in
	// milliseconds; 0 when not measured.
	RTTMs float64 `json:"rtt_ms"`
}

// Paths of LocalPeer.Path and PingResult.Path.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
)

// PingResult answers `meshd ping PEER`: which path answered a probe first
// and the round-trip time.
type PingResult struct {
	Peer      string  `json:"peer"`
	OverlayIP string  `json:"overlay_ip"`
	Path      string  `json:"path"`
	Endpoint  string  `json:"endpoint"`
	RTTMs     float64 `json:"rtt_ms"`
}

// Netcheck answers `meshd netcheck`: what the local network allows.
type Netcheck struct {
	// UDP: a STUN server answered on the WireGuard socket.
	UDP bool `json:"udp"`
	// ListenPort is the WireGuard socket's port.
	ListenPort int `json:"listen_port"`
	// Reflexive maps each STUN server to the address it saw.
	Reflexive map[string]string `json:"reflexive"`
	// MappingVariesByDest: STUN servers saw different ports (a symmetric
	// NAT, whose mappings other peers cannot reach).
	MappingVariesByDest bool `json:"mapping_varies_by_dest"`
	// Relay is this peer's relayed address and the server it is on.
	Relay       string `json:"relay"`
	RelayServer string `json:"relay_server"`
	// RelayLatency is the round-trip time to each relay, by URL, in
	// milliseconds (-1: no answer).
	RelayLatencyMs map[string]float64 `json:"relay_latency_ms"`
}

// LocalRoute is one announced subnet and the gateway this peer sends it to.
type LocalRoute struct {
	Prefix        string `json:"prefix"`
	ActiveGateway string `json:"active_gateway"`
	// Local is true when this peer announces the prefix itself.
	Local bool `json:"local,omitempty"`
	// Why explains the choice.
	Why string `json:"why,omitempty"`
	// Gateways are the candidates as this peer sees them, best first,
	// each with its state (package gateway) and reason.
	Gateways []Gateway `json:"gateways,omitempty"`
}

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
	Coordinator  string       `json:"coordinator"` // the coordinator whose stream is open; empty when none
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
}

// LocalPeer is another peer as this one sees it through WireGuard.
type LocalPeer struct {
	Name          string     `json:"name"`
	OverlayIP     string     `json:"overlay_ip"`
	PublicKey     string     `json:"public_key"`
	Endpoint      string     `json:"endpoint"`
	LastHandshake *time.Time `json:"last_handshake"`
	Online        bool       `json:"online"`
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	Routes        []string   `json:"routes,omitempty"`
}

// LocalRoute is one announced subnet and the gateway this peer sends it to.
type LocalRoute struct {
	Prefix        string `json:"prefix"`
	ActiveGateway string `json:"active_gateway"`
	// Local is true when this peer announces the prefix itself.
	Local bool `json:"local,omitempty"`
	// Why explains the choice.
	Why string `json:"why,omitempty"`
}

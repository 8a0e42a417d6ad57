package api

// ExportDeviceRequest registers a device: a peer of role device that runs
// a stock WireGuard client instead of the agent (meshd peer export). Only
// the device's public key is sent; its private key, when meshd makes one,
// never leaves the admin's host.
type ExportDeviceRequest struct {
	Name      string `json:"name"`
	VNet      string `json:"vnet"`
	PublicKey string `json:"public_key"`
	// Routes are the subnets the device should reach through the mesh,
	// each inside an announced route; empty: every route of the vnet
	// whose active gateway the device may reach.
	Routes []string `json:"routes,omitempty"`
	// Tags are the device's tags, for policies; optional.
	Tags []string `json:"tags,omitempty"`
}

// DeviceConfig answers an export: the device as registered and the
// WireGuard peers its configuration lists.
type DeviceConfig struct {
	Peer Peer `json:"peer"`
	// Overlay is the vnet's overlay prefix.
	Overlay string       `json:"overlay"`
	Peers   []DevicePeer `json:"peers"`
	// Routes says which gateway each route was given to: the active one
	// at export time (the configuration does not follow a failover).
	Routes []DeviceRoute `json:"routes"`
	// Skipped lists asked-for routes left out (no active gateway, or one
	// the vnet's policy hides from the device), each with the reason.
	Skipped []string `json:"skipped,omitempty"`
}

// DevicePeer is one [Peer] section of a device's configuration.
type DevicePeer struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	PublicKey string `json:"public_key"`
	// Endpoint is the peer's best public endpoint; empty when it reported
	// none (it can still reach the device once the device has sent to it).
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowed_ips"`
}

// DeviceRoute is a route of a device's configuration and the gateway it
// was given to.
type DeviceRoute struct {
	Prefix  string `json:"prefix"`
	Gateway string `json:"gateway"`
}

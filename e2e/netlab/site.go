package netlab

import (
	"fmt"
	"strings"
)

// SiteLANMember is one host on a site LAN built by AddSiteLAN.
type SiteLANMember struct {
	Name string // required: the host's name; Lab.NS(Name) is its namespace
	If   string // required: its interface on the LAN, e.g. eth1 beside a WAN leg on eth0
	Addr string // required: its address on the LAN, CIDR
	// New makes AddSiteLAN create the host's namespace and give it a
	// default route through the LAN's gateway; otherwise the namespace
	// exists already (a gateway whose WAN leg is elsewhere) and keeps
	// its routes.
	New bool
}

// AddSiteLAN creates a site LAN: a bridge (br0) in a new namespace name
// and a veth from every member to it. Members marked New are LAN hosts
// whose default route is via, the address the site's gateways answer for
// (an HA pair's virtual IP, which no member holds yet). Lab.Close removes
// it with the rest of the lab.
func AddSiteLAN(l *Lab, name, via string, members []SiteLANMember) error {
	if err := l.AddNS(name); err != nil {
		return err
	}
	if err := l.AddBridge(name, "br0"); err != nil {
		return err
	}
	for _, m := range members {
		if m.Name == "" || m.If == "" || !strings.Contains(m.Addr, "/") {
			return fmt.Errorf("site LAN %s: member %+v needs a name, an interface and an address/len", name, m)
		}
		if m.New {
			if err := l.AddNS(m.Name); err != nil {
				return err
			}
		}
		if err := l.Connect(m.Name, m.If, m.Addr, name, "br0"); err != nil {
			return fmt.Errorf("site LAN %s: %w", name, err)
		}
		if m.New {
			if _, err := l.Exec(m.Name, "ip", "route", "add", "default", "via", via); err != nil {
				return fmt.Errorf("site LAN %s: %w", name, err)
			}
		}
	}
	return nil
}

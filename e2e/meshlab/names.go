package meshlab

import (
	"fmt"
	"slices"
)

// DNSSuffix is the suffix of the lab's names: NAME.VNET.mesh.
const DNSSuffix = "mesh"

// SetResolvers points the namespace of every agent the lab started at
// that agent's own name server (its overlay address, port 53), searching
// its vnet's names: `ip netns exec NS ping cl1.default.mesh` (or just
// `ping cl1`) works there. Namespaces without an agent (the coordinators,
// the LAN hosts, the NAT routers) keep the host's resolv.conf.
func (l *Lab) SetResolvers() error {
	var names []string
	for name := range l.Procs {
		if !l.isCoordinator(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		st, err := l.Status(name)
		if err != nil {
			return err
		}
		if st.Self.OverlayIP == "" {
			return fmt.Errorf("%s has no overlay address yet", name)
		}
		if err := l.Net.SetResolver(name, st.Self.OverlayIP, st.Self.VNet+"."+DNSSuffix); err != nil {
			return err
		}
	}
	return nil
}

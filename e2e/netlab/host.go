package netlab

import (
	"fmt"
	"strings"
)

// Sealed is the range every lab underlay address comes from: 198.18.0.0/15,
// set aside for network benchmarks (RFC 2544) and never routed on the
// internet.
const Sealed = "198.18.0.0/15"

// HostIf is the host end of the link AttachHost makes.
const HostIf = "meshd-lab0"

// SealHost makes Sealed unreachable from the host's own namespace except
// through the links a lab attaches (their connected routes are narrower): a
// lab address never leaves the machine by the default route, also while no
// lab runs. It replaces any earlier such route, so it may run any number
// of times; the route stays when the lab goes.
func SealHost() error {
	_, err := run("ip", "route", "replace", "unreachable", Sealed)
	return err
}

// AttachHost connects the host's own namespace to bridge br in namespace
// brName with a veth whose host end is HostIf with addr (CIDR), so the
// host's shell reaches the lab's addresses on that bridge. The link goes
// with the bridge's namespace; a stale one of an earlier lab is replaced.
// The host is sealed first (SealHost).
func (l *Lab) AttachHost(addr, brName, br string) error {
	if err := SealHost(); err != nil {
		return err
	}
	if err := DetachHost(); err != nil {
		return err
	}
	brNS := l.NS(brName)
	peer := "vhost0"
	steps := [][]string{
		{"ip", "link", "add", HostIf, "type", "veth", "peer", "name", peer, "netns", brNS},
		{"ip", "-n", brNS, "link", "set", peer, "master", br},
		{"ip", "-n", brNS, "link", "set", peer, "up"},
		{"ip", "addr", "add", addr, "dev", HostIf},
		{"ip", "link", "set", HostIf, "up"},
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			return fmt.Errorf("attach the host to the lab: %w", err)
		}
	}
	return nil
}

// DetachHost removes the host's link to a lab (AttachHost), if there is one;
// the seal stays.
func DetachHost() error {
	if _, err := run("ip", "link", "del", HostIf); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		return err
	}
	return nil
}

// Package vip lets the active gateway of an HA pair own a virtual IP on its
// LAN: it adds the address to the LAN interface and announces it with
// gratuitous ARP, so LAN hosts that use the VIP as their default gateway or
// next hop follow a failover at once. Before taking the VIP a gateway asks
// the LAN (an ARP request for the VIP) whether another host still answers
// for it; if one does, it waits, so that two gateways that cannot gossip
// with each other never both own the address.
package vip

import (
	"net/netip"
)

// VIP owns (or not) one virtual IP on one LAN interface.
type VIP interface {
	// Claim adds the address and announces it; it fails with ErrInUse
	// when another host answers for the address.
	Claim() error
	// Release removes the address.
	Release() error
	// Owned reports whether this host holds the address now.
	Owned() bool
}

// Config names the address and interface.
type Config struct {
	Addr netip.Prefix // the VIP with the LAN's prefix length
	Dev  string       // LAN interface
}

// All is one VIP made of several (an IPv4 and an IPv6 one on a dual-stack
// LAN), claimed and released together: Claim claims each one not owned
// yet and returns the first error (the others stay claimed; the caller
// retries, which claims the rest); Owned holds when all are owned.
func All(vips ...VIP) VIP { return all(vips) }

type all []VIP

func (a all) Claim() error {
	var first error
	for _, v := range a {
		if v.Owned() {
			continue
		}
		if err := v.Claim(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (a all) Release() error {
	var first error
	for _, v := range a {
		if err := v.Release(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (a all) Owned() bool {
	for _, v := range a {
		if !v.Owned() {
			return false
		}
	}
	return true
}

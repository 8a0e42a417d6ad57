// Package ipam allocates overlay addresses inside a vnet's prefix. It is pure:
// the caller says which addresses are taken and keeps the cursor, so
// allocation is deterministic and can run inside a Raft FSM.
package ipam

import (
	"errors"
	"net/netip"
)

// ErrExhausted is returned when every usable address is taken.
var ErrExhausted = errors.New("address pool exhausted")

// First is the first usable address of p: the network address is skipped.
func First(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

// usable reports whether a is a host address of p: inside it, and neither the
// network nor the broadcast address.
func usable(p netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() || !p.Contains(a) || a == p.Masked().Addr() {
		return false
	}
	if p.Addr().Is4() && p.Bits() < 31 && !p.Contains(a.Next()) {
		return false // broadcast
	}
	return true
}

// Allocate returns the first free usable address of p at or after next,
// wrapping around once, and the cursor to pass next time.
func Allocate(p netip.Prefix, next netip.Addr, taken func(netip.Addr) bool) (addr, cursor netip.Addr, err error) {
	p = p.Masked()
	if !usable(p, next) {
		next = First(p)
	}
	a := next
	for {
		if usable(p, a) && !taken(a) {
			c := a.Next()
			if !usable(p, c) {
				c = First(p)
			}
			return a, c, nil
		}
		a = a.Next()
		if !usable(p, a) {
			a = First(p)
		}
		if a == next {
			return netip.Addr{}, next, ErrExhausted
		}
	}
}

// Pool is one address family's pool of a vnet: its prefix and the cursor
// allocation resumes at.
type Pool struct {
	Prefix netip.Prefix
	Next   netip.Addr
}

// AllocateEach allocates one address from every pool (a dual-stack vnet has
// an IPv4 and an IPv6 pool), in the order given, and returns the addresses
// and each pool's new cursor. It allocates nothing unless every pool has a
// free address: on ErrExhausted, failed is the pool that had none.
func AllocateEach(pools []Pool, taken func(netip.Addr) bool) (addrs, cursors []netip.Addr, failed netip.Prefix, err error) {
	for _, p := range pools {
		a, c, err := Allocate(p.Prefix, p.Next, taken)
		if err != nil {
			return nil, nil, p.Prefix, err
		}
		addrs, cursors = append(addrs, a), append(cursors, c)
	}
	return addrs, cursors, netip.Prefix{}, nil
}

//go:build !linux

package vip

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// ErrInUse: another host answers ARP for the VIP.
var ErrInUse = errors.New("another host answers for the virtual IP")

// New fails: the LAN VIP is Linux-only.
func New(cfg Config, log *slog.Logger) (VIP, error) {
	return nil, errors.New("--lan-vip is supported on Linux only")
}

// Reachable fails: the LAN check is Linux-only.
func Reachable(dev string, ip netip.Addr, wait time.Duration) (bool, error) {
	return false, errors.New("--lan-check is supported on Linux only")
}

//go:build !linux

package router

import (
	"errors"
	"log/slog"
)

// ErrUnsupported is returned by New on operating systems meshd cannot
// configure yet.
var ErrUnsupported = errors.New("router: only Linux is supported")

// New fails: the router supports Linux only.
func New(ifName string, log *slog.Logger) (Router, error) {
	return nil, ErrUnsupported
}

// ForwardingEnabled is unknown off Linux; it reports true.
func ForwardingEnabled() (bool, error) { return true, nil }

//go:build !linux

package router

import (
	"errors"
	"log/slog"
)

// New fails: the router is Linux-only for now.
func New(dev string, log *slog.Logger) (Router, error) {
	return nil, errors.New("the meshd router supports Linux only")
}

// ForwardingEnabled is unknown off Linux; it reports true.
func ForwardingEnabled() (bool, error) { return true, nil }

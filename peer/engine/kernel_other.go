//go:build !linux

package engine

import (
	"errors"
	"log/slog"
)

func newKernel(name string, mtu int, log *slog.Logger) (Engine, error) {
	return nil, errors.New("the kernel WireGuard engine is Linux-only")
}

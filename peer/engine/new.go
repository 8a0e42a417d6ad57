package engine

import (
	"fmt"
	"log/slog"
)

// Modes of New.
const (
	ModeAuto      = "auto"
	ModeKernel    = "kernel"
	ModeUserspace = "userspace"
)

// New creates the engine mode asks for: kernel, userspace, or auto (the
// kernel module where it is available, else userspace).
func New(mode, name string, mtu int, log *slog.Logger) (Engine, error) {
	switch mode {
	case ModeKernel:
		return newKernel(name, mtu, log)
	case ModeUserspace:
		return NewUserspace(name, mtu, log)
	case ModeAuto, "":
		e, err := newKernel(name, mtu, log)
		if err == nil {
			log.Info("using the kernel WireGuard module", "interface", name)
			return e, nil
		}
		log.Info("kernel WireGuard not available; using userspace wireguard-go", "interface", name, "reason", err)
		return NewUserspace(name, mtu, log)
	default:
		return nil, fmt.Errorf("unknown WireGuard mode %q: want auto, kernel or userspace", mode)
	}
}

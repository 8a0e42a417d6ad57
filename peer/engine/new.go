package engine

import (
	"fmt"
	"log/slog"

	"github.com/meshd/meshd/peer/bind"
)

// Modes of New.
const (
	ModeAuto      = "auto"
	ModeKernel    = "kernel"
	ModeUserspace = "userspace"
)

// New creates the engine mode asks for: kernel, userspace, or auto. With a
// bind (NAT traversal and the relay), auto means userspace, the only
// engine that can send a peer's packets through the relay; without one,
// the kernel module where it is available, else userspace. The kernel
// engine ignores b.
func New(mode, name string, mtu int, log *slog.Logger, b *bind.Conn) (Engine, error) {
	switch mode {
	case ModeKernel:
		return newKernel(name, mtu, log)
	case ModeUserspace:
		return NewUserspace(name, mtu, log, b)
	case ModeAuto, "":
		if b != nil {
			return NewUserspace(name, mtu, log, b)
		}
		e, err := newKernel(name, mtu, log)
		if err == nil {
			log.Info("using the kernel WireGuard module", "interface", name)
			return e, nil
		}
		log.Info("kernel WireGuard not available; using userspace wireguard-go", "interface", name, "reason", err)
		return NewUserspace(name, mtu, log, nil)
	default:
		return nil, fmt.Errorf("unknown WireGuard mode %q: want auto, kernel or userspace", mode)
	}
}

//go:build !linux

package peer

import "errors"

// OSSystem is the host the agent runs on, for Preflight: the agent runs on
// Linux only, so every check that needs the OS fails here.
func OSSystem() System { return otherSystem{} }

type otherSystem struct{}

var errNotLinux = errors.New("meshd peer up runs on Linux only")

func (otherSystem) EffectiveCaps() (uint64, error)       { return 0, errNotLinux }
func (otherSystem) OpenTUN() error                       { return errNotLinux }
func (otherSystem) KernelWireGuard() bool                { return false }
func (otherSystem) LinkExists(name string) (bool, error) { return false, errNotLinux }
func (otherSystem) Writable(dir string) error            { return errNotLinux }
func (otherSystem) SocketAnswers(path string) bool       { return false }
func (otherSystem) UAPIDir() string                      { return "/var/run/wireguard" }

package peer

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OSSystem is the host the agent runs on, for Preflight.
func OSSystem() System { return osSystem{} }

type osSystem struct{}

var _ System = osSystem{}

func (osSystem) EffectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	return parseCapEff(string(b))
}

func (osSystem) OpenTUN() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func (osSystem) KernelWireGuard() bool {
	if _, err := os.Stat("/sys/module/wireguard"); err == nil {
		return true // loaded or built in
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil && strings.Contains(string(b), "/wireguard.ko") {
			return true
		}
	}
	return false
}

func (osSystem) LinkExists(name string) (bool, error) {
	_, err := net.InterfaceByName(name)
	if err == nil {
		return true, nil
	}
	if strings.Contains(err.Error(), "no such network interface") {
		return false, nil
	}
	return false, err
}

func (osSystem) Writable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".meshd-preflight-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (osSystem) SocketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// UAPIDir is wireguard-go's socket directory (ipc.socketDirectory).
func (osSystem) UAPIDir() string { return "/var/run/wireguard" }

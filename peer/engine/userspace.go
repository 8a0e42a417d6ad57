package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/meshd/meshd/peer/bind"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/policy"
	"github.com/meshd/meshd/pkg/policy/filter"
)

// Userspace is wireguard-go on a TUN device.
type Userspace struct {
	name string
	log  *slog.Logger
	dev  *device.Device
	uapi net.Listener
	// bind chooses each peer's path (nil: wireguard-go's own socket and
	// the configured endpoints).
	bind *bind.Conn
	// tun is the TUN device with the policy filter in its packet path.
	tun *filteredTUN

	applied applied
}

var (
	_ Engine   = (*Userspace)(nil)
	_ Filterer = (*Userspace)(nil)
)

// NewUserspace creates the TUN interface name with mtu (0: DefaultMTU),
// starts wireguard-go on it and opens its UAPI socket. With b, wireguard-go
// sends through b, which picks each peer's path (direct or relayed), and
// the endpoints in the configurations are ignored; without, it uses its
// own UDP socket and those endpoints.
func NewUserspace(name string, mtu int, log *slog.Logger, b *bind.Conn) (*Userspace, error) {
	if mtu == 0 {
		mtu = DefaultMTU
	}
	log = log.With("component", "engine", "interface", name)
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w (is /dev/net/tun available, and are you root?)", name, err)
	}
	if real, err := tdev.Name(); err == nil {
		name = real
	}
	wlog := &device.Logger{
		Verbosef: func(format string, args ...any) {},
		Errorf:   func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	}
	if log.Enabled(context.Background(), slog.LevelDebug) {
		wlog.Verbosef = func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) }
	}
	var cb conn.Bind = conn.NewDefaultBind()
	if b != nil {
		cb = b
	}
	ftun := newFilteredTUN(tdev)
	dev := device.NewDevice(ftun, cb, wlog)
	if b != nil {
		// Each peer keeps the one endpoint the bind gave it: the bind, not
		// the source of the last packet, decides where its packets go.
		dev.DisableSomeRoamingForBrokenMobileSemantics()
	}
	e := &Userspace{name: name, log: log, dev: dev, bind: b, tun: ftun}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("open uapi socket for %s: %w", name, err)
	}
	e.uapi, err = ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		dev.Close()
		return nil, fmt.Errorf("listen on uapi socket for %s: %w", name, err)
	}
	go func() {
		for {
			c, err := e.uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	if err := dev.Up(); err != nil {
		e.Close()
		return nil, fmt.Errorf("bring up %s: %w", name, err)
	}
	return e, nil
}

// Name implements Engine.
func (e *Userspace) Name() string { return e.name }

// SetPolicyRules implements Filterer.
func (e *Userspace) SetPolicyRules(rules []policy.AddrRule) {
	if rules == nil {
		e.tun.f.SetRules(nil)
		return
	}
	e.tun.f.SetRules(filter.Compile(rules))
}

// PolicyDropped implements Filterer.
func (e *Userspace) PolicyDropped() uint64 { return e.tun.f.Stats().Dropped }

// Reconfig implements Engine.
func (e *Userspace) Reconfig(cfg *wgcfg.Config) error {
	return e.applied.reconfig(cfg, func(old *wgcfg.Config) error {
		text := wgcfg.UAPI(old, cfg)
		if e.bind != nil {
			text = wgcfg.UAPIWith(old, cfg, bindEndpoint)
		}
		if err := e.dev.IpcSet(text); err != nil {
			return fmt.Errorf("configure %s: %w", e.name, err)
		}
		return nil
	})
}

// Status implements Engine.
func (e *Userspace) Status() ([]PeerStatus, error) {
	s, err := e.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read %s status: %w", e.name, err)
	}
	return parseUAPIGet(s)
}

// Close implements Engine.
func (e *Userspace) Close() error {
	if e.uapi != nil {
		e.uapi.Close()
	}
	e.dev.Close()
	return nil
}

// bindEndpoint is the endpoint WireGuard is given for p over a bind: the
// bind's name for the peer, whose path the bind picks; none for a roaming
// peer (a device), whose endpoint WireGuard learns from its packets (a
// peer configured without an endpoint keeps roaming on, although the
// device otherwise pins every endpoint).
func bindEndpoint(p *wgcfg.Peer) string {
	if p.Roaming {
		return ""
	}
	return bind.EndpointString(p.PublicKey)
}

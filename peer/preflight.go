package peer

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/token"
)

// The pre-flight: everything `meshd peer up` can check on this host before
// it sends a join, so that a run that cannot work fails without using a
// token or registering a peer that never comes up. Preflight reads the host
// through System, so the checks are table-tested without root.

// Check names one pre-flight check.
type Check string

// Pre-flight checks.
const (
	CheckFlags      Check = "flags"       // a flag's value (range, format)
	CheckToken      Check = "token"       // the join token's format
	CheckIdentity   Check = "identity"    // the state dir belongs to another peer
	CheckWGMode     Check = "wg-mode"     // the engine asked for is available
	CheckPrivileges Check = "privileges"  // root or CAP_NET_ADMIN
	CheckTUN        Check = "tun"         // /dev/net/tun (userspace engine)
	CheckInterface  Check = "interface"   // name valid and free
	CheckUAPI       Check = "uapi-socket" // socket dir writable, socket not held
	CheckStateDir   Check = "state-dir"   // writable
)

// Problem is one failed pre-flight check: what failed and how to fix it.
type Problem struct {
	Check Check
	// Field is the flag concerned, such as "--mtu"; empty when none.
	Field string
	Msg   string
}

func (p *Problem) Error() string { return p.Msg }

// System is the host as the pre-flight sees it. The real one reads
// /proc, /sys, /dev and the network interfaces (OSSystem); tests use a
// table of facts.
type System interface {
	// EffectiveCaps is the process's effective capability set (CapEff in
	// /proc/self/status).
	EffectiveCaps() (uint64, error)
	// OpenTUN opens /dev/net/tun read-write and closes it again.
	OpenTUN() error
	// KernelWireGuard reports whether the wireguard kernel module is
	// loaded, built in, or installed where the kernel can load it.
	KernelWireGuard() bool
	// LinkExists reports whether a network interface name exists.
	LinkExists(name string) (bool, error)
	// Writable creates dir (0700) if needed and checks a file can be
	// created in it.
	Writable(dir string) error
	// SocketAnswers reports whether a process accepts connections on the
	// unix socket at path.
	SocketAnswers(path string) bool
	// UAPIDir is where wireguard-go puts its UAPI sockets.
	UAPIDir() string
}

// capNetAdmin is CAP_NET_ADMIN's bit in a capability set.
const capNetAdmin = 12

// Limits of peer up's flags.
const (
	MinMTU      = 1280 // IPv6's minimum: the overlay may carry it
	MaxMTU      = 9000
	MaxHoldDown = time.Hour
	// IFNameMax is the longest interface name Linux takes (IFNAMSIZ less
	// the terminating NUL).
	IFNameMax = 15
)

// Preflight checks cfg and the host before anything is sent to the
// coordinators: every flag's value, the identity in the state dir against
// --name, the join token's format (when a join is due), the engine mode
// and what it needs (the kernel module; /dev/net/tun), root or
// CAP_NET_ADMIN, the interface name, the UAPI socket and the state dir. It
// returns every problem found, each naming its fix; none means the run may
// go ahead. nameGiven says --name was given (not defaulted from the host
// name).
func Preflight(cfg Config, nameGiven bool, sys System) []*Problem {
	var out []*Problem
	add := func(c Check, field, format string, args ...any) {
		out = append(out, &Problem{Check: c, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	// Flags.
	if cfg.StateDir == "" {
		add(CheckFlags, "--state-dir", "--state-dir is empty: give the directory that keeps this peer's identity")
	}
	if cfg.Name != "" {
		if err := api.ValidName("peer", cfg.Name); err != nil {
			add(CheckFlags, "--name", "--name: %v", err)
		}
	}
	if cfg.MTU != 0 && (cfg.MTU < MinMTU || cfg.MTU > MaxMTU) {
		add(CheckFlags, "--mtu", "--mtu %d is outside %d..%d (the default %d suits an underlay MTU of 1500)", cfg.MTU, MinMTU, MaxMTU, engine.DefaultMTU)
	}
	for _, p := range []struct {
		flag string
		v    int
	}{{"--gossip-port", cfg.GossipPort}, {"--liveness-port", cfg.LivenessPort}} {
		if p.v < 0 || p.v > 65535 {
			add(CheckFlags, p.flag, "%s %d is not a port (1..65535)", p.flag, p.v)
		}
	}
	if cfg.GossipPort != 0 && cfg.GossipPort == cfg.LivenessPort {
		add(CheckFlags, "--liveness-port", "--gossip-port and --liveness-port are both %d: they must differ", cfg.GossipPort)
	}
	if cfg.HoldDown < 0 || cfg.HoldDown > MaxHoldDown {
		add(CheckFlags, "--hold-down", "--hold-down %s is outside 0..%s", cfg.HoldDown, MaxHoldDown)
	}
	for _, r := range cfg.Routes {
		if p, err := netip.ParsePrefix(r.Prefix); err != nil || p != p.Masked() {
			add(CheckFlags, "--advertise-routes", "--advertise-routes %q is not a network CIDR like 10.1.0.0/24", r.Prefix)
		}
	}
	if cfg.LANDev != "" {
		if ok, err := sys.LinkExists(cfg.LANDev); err == nil && !ok {
			add(CheckFlags, "--lan-dev", "--lan-dev %s: no such interface on this host", cfg.LANDev)
		}
	}
	if cfg.LANVIP.IsValid() && len(cfg.Routes) == 0 {
		add(CheckFlags, "--lan-vip", "--lan-vip is for a gateway: give --advertise-routes too")
	}

	// The identity, or the token a join needs.
	mode := cfg.WGMode
	if mode == "" {
		mode = engine.ModeAuto
	}
	if cfg.StateDir != "" {
		id, err := controlclient.LoadIdentity(cfg.StateDir)
		switch {
		case err == nil:
			if nameGiven {
				if err := SameIdentity(id, cfg.Name, cfg.StateDir); err != nil {
					add(CheckIdentity, "--name", "%v", err)
				}
			}
		case errors.Is(err, os.ErrNotExist):
			if cfg.Token == "" {
				add(CheckToken, "--token", "this peer has not joined yet: give --token or --token-file (state dir %s has no identity)", cfg.StateDir)
			} else if _, err := token.ParseKind(cfg.Token, token.KindJoin); err != nil {
				add(CheckToken, "--token", "--token is not a join token (%v): copy the whole string `meshd token create` printed", err)
			}
		default:
			add(CheckStateDir, "--state-dir", "%v: move the file aside and join again with a new token", err)
		}
	}

	// The engine and what it needs.
	needTUN := false
	switch mode {
	case engine.ModeKernel:
		if !sys.KernelWireGuard() {
			add(CheckWGMode, "--wg-mode", "--wg-mode kernel: the wireguard kernel module is not available (install it, or `modprobe wireguard`); or use --wg-mode auto for userspace WireGuard")
		}
	case engine.ModeAuto, engine.ModeUserspace:
		needTUN = true
	default:
		add(CheckWGMode, "--wg-mode", "--wg-mode %q is not a mode: use auto, userspace or kernel", cfg.WGMode)
	}
	caps, err := sys.EffectiveCaps()
	switch {
	case err != nil:
		add(CheckPrivileges, "", "cannot read this process's capabilities (%v): run as root", err)
	case caps&(1<<capNetAdmin) == 0:
		add(CheckPrivileges, "", "meshd peer up needs root or CAP_NET_ADMIN to create its interface and routes: run it with sudo, as root, or give it the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)")
	}
	if needTUN {
		if err := sys.OpenTUN(); err != nil {
			add(CheckTUN, "", "cannot open /dev/net/tun (%v): userspace WireGuard needs it (load the tun module with `modprobe tun`; in a container, pass the device: --device /dev/net/tun)", err)
		}
	}

	// The interface.
	ifname := cfg.Interface
	if ifname == "" {
		ifname = DefaultInterface
	}
	if err := ValidInterfaceName(ifname); err != nil {
		add(CheckInterface, "--interface", "%v", err)
	} else {
		if ok, err := sys.LinkExists(ifname); err != nil {
			add(CheckInterface, "--interface", "cannot list network interfaces: %v", err)
		} else if ok {
			add(CheckInterface, "--interface", "interface %s already exists: another meshd or WireGuard runs on it, or an earlier run left it behind; choose another --interface, or remove it (ip link del %s) if nothing uses it", ifname, ifname)
		}
		if needTUN {
			dir := sys.UAPIDir()
			if err := sys.Writable(dir); err != nil {
				add(CheckUAPI, "", "the WireGuard socket directory %s is not writable (%v): run as root", dir, err)
			} else if sock := filepath.Join(dir, ifname+".sock"); sys.SocketAnswers(sock) {
				add(CheckUAPI, "--interface", "%s is held by a running process (another meshd or wireguard-go using interface %s): stop it or choose another --interface", sock, ifname)
			}
		}
	}

	// The state dir.
	if cfg.StateDir != "" {
		if err := sys.Writable(cfg.StateDir); err != nil {
			add(CheckStateDir, "--state-dir", "state dir %s is not writable (%v): choose another --state-dir or fix its owner and mode", cfg.StateDir, err)
		}
	}
	return out
}

// ValidInterfaceName checks a network interface name as Linux takes it:
// 1 to IFNameMax bytes, no '/', ':' or white space, not "." or "..".
func ValidInterfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("--interface is empty")
	case len(name) > IFNameMax:
		return fmt.Errorf("--interface %q is longer than %d characters (Linux's limit)", name, IFNameMax)
	case name == "." || name == "..":
		return fmt.Errorf("--interface %q is not an interface name", name)
	case strings.ContainsAny(name, "/: \t\n\r\x00"):
		return fmt.Errorf("--interface %q has a character Linux refuses in interface names ('/', ':' or white space)", name)
	}
	return nil
}

// IdentityError: the state dir holds the identity of a peer with another
// name than the one asked for.
type IdentityError struct {
	Dir    string
	Joined string // the name the state dir's peer joined with
	Asked  string
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("this state dir (%s) belongs to peer %s: use --name %s, or a new --state-dir to join as %s", e.Dir, e.Joined, e.Joined, e.Asked)
}

// SameIdentity says why the identity saved in dir cannot run under name
// (an *IdentityError): a state dir is one peer, and its name is the one it
// joined with.
func SameIdentity(id *controlclient.Identity, name, dir string) error {
	if name == "" || id.Name == name {
		return nil
	}
	return &IdentityError{Dir: dir, Joined: id.Name, Asked: name}
}

// parseCapEff reads the effective capability set from the text of
// /proc/self/status.
func parseCapEff(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &caps); err != nil {
				return 0, fmt.Errorf("CapEff %q: %w", strings.TrimSpace(v), err)
			}
			return caps, nil
		}
	}
	return 0, errors.New("no CapEff line")
}

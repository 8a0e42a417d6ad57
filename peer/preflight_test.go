package peer

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/token"
)

// fakeSystem is a host as a table of facts.
type fakeSystem struct {
	caps      uint64
	capsErr   error
	tunErr    error
	kernelWG  bool
	links     map[string]bool
	readOnly  map[string]bool // directories that are not writable
	listening map[string]bool // unix sockets a process accepts on
}

func (f *fakeSystem) EffectiveCaps() (uint64, error) { return f.caps, f.capsErr }
func (f *fakeSystem) OpenTUN() error                 { return f.tunErr }
func (f *fakeSystem) KernelWireGuard() bool          { return f.kernelWG }
func (f *fakeSystem) LinkExists(name string) (bool, error) {
	return f.links[name], nil
}
func (f *fakeSystem) Writable(dir string) error {
	if f.readOnly[dir] {
		return errors.New("permission denied")
	}
	return nil
}
func (f *fakeSystem) SocketAnswers(path string) bool { return f.listening[path] }
func (f *fakeSystem) UAPIDir() string                { return "/run/wireguard-test" }

// goodHost can run every engine.
func goodHost() *fakeSystem {
	return &fakeSystem{caps: 1 << capNetAdmin, kernelWG: true, links: map[string]bool{"lo": true, "eth1": true}}
}

func TestPreflight(t *testing.T) {
	tok, err := token.New(token.KindJoin, "tok1", [32]byte{1}, []string{"https://198.18.0.1:8443"})
	if err != nil {
		t.Fatal(err)
	}
	joined := t.TempDir()
	id := &controlclient.Identity{PeerID: "p1", Name: "laptop", VNet: "default", OverlayIP: "100.96.0.2",
		Credential: (&token.Token{Kind: token.KindPeer, ID: "p1", Secret: [32]byte{2}}).String()}
	if err := id.Save(joined); err != nil {
		t.Fatal(err)
	}
	base := func() Config {
		return Config{StateDir: filepath.Join(t.TempDir(), "state"), Token: tok.String(), Name: "laptop",
			Interface: "meshd0", MTU: engine.DefaultMTU, WGMode: engine.ModeAuto, GossipPort: 7946, LivenessPort: 7947,
			HoldDown: 10 * time.Second}
	}
	type want struct {
		check Check
		field string
	}
	for _, tt := range []struct {
		name      string
		cfg       func(c *Config)
		nameGiven bool
		sys       func(s *fakeSystem)
		want      []want
	}{
		{name: "all good", cfg: func(c *Config) {}},
		{name: "all good, kernel", cfg: func(c *Config) { c.WGMode = engine.ModeKernel },
			sys: func(s *fakeSystem) { s.tunErr = errors.New("no such device") }},
		{name: "unknown wg mode", cfg: func(c *Config) { c.WGMode = "kernal" }, want: []want{{CheckWGMode, "--wg-mode"}}},
		{name: "kernel without the module", cfg: func(c *Config) { c.WGMode = engine.ModeKernel },
			sys: func(s *fakeSystem) { s.kernelWG = false }, want: []want{{CheckWGMode, "--wg-mode"}}},
		{name: "not root", cfg: func(c *Config) {}, sys: func(s *fakeSystem) { s.caps = 1 << 13 }, want: []want{{CheckPrivileges, ""}}},
		{name: "capabilities unreadable", cfg: func(c *Config) {}, sys: func(s *fakeSystem) { s.capsErr = errors.New("no /proc") },
			want: []want{{CheckPrivileges, ""}}},
		{name: "no tun", cfg: func(c *Config) {}, sys: func(s *fakeSystem) { s.tunErr = errors.New("no such device") },
			want: []want{{CheckTUN, ""}}},
		{name: "interface taken", cfg: func(c *Config) {}, sys: func(s *fakeSystem) { s.links["meshd0"] = true },
			want: []want{{CheckInterface, "--interface"}}},
		{name: "interface name too long", cfg: func(c *Config) { c.Interface = "meshd-very-long0" }, want: []want{{CheckInterface, "--interface"}}},
		{name: "interface name with a slash", cfg: func(c *Config) { c.Interface = "wg/0" }, want: []want{{CheckInterface, "--interface"}}},
		{name: "interface name with a space", cfg: func(c *Config) { c.Interface = "wg 0" }, want: []want{{CheckInterface, "--interface"}}},
		{name: "uapi socket held", cfg: func(c *Config) {},
			sys:  func(s *fakeSystem) { s.listening = map[string]bool{"/run/wireguard-test/meshd0.sock": true} },
			want: []want{{CheckUAPI, "--interface"}}},
		{name: "uapi socket held, kernel mode does not use it", cfg: func(c *Config) { c.WGMode = engine.ModeKernel },
			sys: func(s *fakeSystem) { s.listening = map[string]bool{"/run/wireguard-test/meshd0.sock": true} }},
		{name: "uapi dir read-only", cfg: func(c *Config) {},
			sys:  func(s *fakeSystem) { s.readOnly = map[string]bool{"/run/wireguard-test": true} },
			want: []want{{CheckUAPI, ""}}},
		{name: "state dir read-only", cfg: func(c *Config) { c.StateDir = "/ro/state" },
			sys:  func(s *fakeSystem) { s.readOnly = map[string]bool{"/ro/state": true} },
			want: []want{{CheckStateDir, "--state-dir"}}},
		{name: "mtu too small", cfg: func(c *Config) { c.MTU = 500 }, want: []want{{CheckFlags, "--mtu"}}},
		{name: "mtu too large", cfg: func(c *Config) { c.MTU = 65000 }, want: []want{{CheckFlags, "--mtu"}}},
		{name: "gossip port out of range", cfg: func(c *Config) { c.GossipPort = 70000 }, want: []want{{CheckFlags, "--gossip-port"}}},
		{name: "same gossip and liveness port", cfg: func(c *Config) { c.LivenessPort = 7946 }, want: []want{{CheckFlags, "--liveness-port"}}},
		{name: "negative hold-down", cfg: func(c *Config) { c.HoldDown = -time.Second }, want: []want{{CheckFlags, "--hold-down"}}},
		{name: "bad name", cfg: func(c *Config) { c.Name = "My_Laptop" }, want: []want{{CheckFlags, "--name"}}},
		{name: "route with host bits", cfg: func(c *Config) { c.Routes = []api.Route{{Prefix: "10.1.0.1/24"}} },
			want: []want{{CheckFlags, "--advertise-routes"}}},
		{name: "lan dev missing", cfg: func(c *Config) { c.LANDev = "eth9" }, want: []want{{CheckFlags, "--lan-dev"}}},
		{name: "no token and no identity", cfg: func(c *Config) { c.Token = "" }, want: []want{{CheckToken, "--token"}}},
		{name: "malformed token", cfg: func(c *Config) { c.Token = "mshd_garbage" }, want: []want{{CheckToken, "--token"}}},
		{name: "joined: no token needed", cfg: func(c *Config) { c.StateDir, c.Token = joined, "" }, nameGiven: true},
		{name: "joined under another name", cfg: func(c *Config) { c.StateDir, c.Name = joined, "desktop" }, nameGiven: true,
			want: []want{{CheckIdentity, "--name"}}},
		{name: "joined, name defaulted from the host", cfg: func(c *Config) { c.StateDir, c.Name = joined, "desktop" }},
		{name: "several problems at once", cfg: func(c *Config) { c.WGMode = "fast"; c.MTU = 100 },
			sys:  func(s *fakeSystem) { s.caps = 0; s.links["meshd0"] = true },
			want: []want{{CheckFlags, "--mtu"}, {CheckWGMode, "--wg-mode"}, {CheckPrivileges, ""}, {CheckInterface, "--interface"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.cfg(&cfg)
			sys := goodHost()
			if tt.sys != nil {
				tt.sys(sys)
			}
			var got []want
			for _, p := range Preflight(cfg, tt.nameGiven, sys) {
				got = append(got, want{p.Check, p.Field})
				if p.Msg == "" {
					t.Errorf("problem %s has no message", p.Check)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestParseCapEff(t *testing.T) {
	for _, tt := range []struct {
		name   string
		status string
		want   uint64
		ok     bool
	}{
		{"root", "Name:\tmeshd\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n", 0x1ffffffffff, true},
		{"net admin only", "CapEff:\t0000000000001000\n", 1 << capNetAdmin, true},
		{"unprivileged", "CapEff:\t0000000000000000\n", 0, true},
		{"no line", "Name:\tmeshd\n", 0, false},
		{"garbage", "CapEff:\tzz\n", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCapEff(tt.status)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("got %#x, %v; want %#x, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

package peer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/peer/engine"
	"github.com/meshd/meshd/peer/health"
	"github.com/meshd/meshd/peer/liveness"
	"github.com/meshd/meshd/peer/meshdns"
	"github.com/meshd/meshd/peer/router"
	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/clock"
	"github.com/meshd/meshd/pkg/logging"
	"github.com/meshd/meshd/pkg/token"
)

// fakeResolver records what the agent asks of the host's resolver.
type fakeResolver struct {
	mu  sync.Mutex
	ops []string // guarded by mu: "set IFACE SERVER DOMAINS", "revert IFACE"
}

func (f *fakeResolver) Set(iface string, server netip.Addr, domains []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("set %s %s %s", iface, server, strings.Join(domains, ",")))
	return nil
}

func (f *fakeResolver) Revert(iface string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "revert "+iface)
	return nil
}

func (f *fakeResolver) done() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// The names tests give the peers loopback overlay addresses, so the
// agent's server listens where the test can reach it without root.
const dnsOverlay = "127.77.0.0/16"

var dnsPeers = []api.MapPeer{
	{ID: "c1", Name: "cl1", Role: "client", OverlayIP: "127.77.0.1"},
	{ID: "a1", Name: "gwa1", Role: "gateway", OverlayIP: "127.77.0.2"},
	{ID: "c2", Name: "cl2", Role: "client", OverlayIP: "127.77.0.3"},
}

// dnsAgent runs cl1's agent with names on port, fakes everywhere else; the
// test feeds its maps through ctl.
type dnsAgent struct {
	ctl    *fakeControl
	res    *fakeResolver
	clk    *clock.Fake
	eng    *engine.Fake
	a      *Agent
	addr   string // of the agent's name server
	cancel context.CancelFunc
	done   chan error
}

func startDNSAgent(t *testing.T, port int) *dnsAgent {
	t.Helper()
	dir := t.TempDir()
	cred, err := token.New(token.KindPeer, "pc1", [32]byte{1}, []string{"https://c1.test:8443"})
	if err != nil {
		t.Fatal(err)
	}
	ident := &controlclient.Identity{PeerID: "c1", Name: "cl1", VNet: "default", OverlayIP: "127.77.0.1",
		Overlay: dnsOverlay, Credential: cred.String(), Coordinators: []string{"https://c1.test:8443"}}
	if err := ident.Save(dir); err != nil {
		t.Fatal(err)
	}
	d := &dnsAgent{ctl: newFakeControl(), res: &fakeResolver{}, clk: clock.NewFake(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)),
		eng: &engine.Fake{IfName: "meshd0"}, done: make(chan error, 1), addr: fmt.Sprintf("127.77.0.1:%d", port)}
	lv := &fakeLiveness{Fake: health.NewFake()}
	d.a, err = New(Config{
		StateDir: dir, Name: "cl1", ListenPort: 51820,
		DNS:         DNSConfig{Enabled: true, Port: port, HostResolver: d.res},
		Logger:      logging.New(testWriter{t}, 0),
		NewEngine:   func(string) (engine.Engine, error) { return d.eng, nil },
		NewRouter:   func(string) (router.Router, error) { return router.NewFake("meshd0"), nil },
		Endpoints:   func(context.Context, []string) []string { return nil },
		NewControl:  func(*controlclient.Identity) (Control, error) { return d.ctl, nil },
		NewHealth:   func(health.Config) (Health, error) { return health.NewFake(), nil },
		NewLiveness: func(liveness.Config) (Liveness, error) { return lv, nil },
		Checker:     &fakeChecker{},
		Clock:       d.clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.done <- d.a.Run(ctx) }()
	t.Cleanup(d.stop)
	return d
}

// stop ends the agent and waits for Run to return (again and again).
func (d *dnsAgent) stop() {
	d.cancel()
	err := <-d.done
	d.done <- err
}

// mapOf is cl1's full map with the peers of ids.
func mapOf(t *testing.T, index uint64, ids ...string) *api.MapUpdate {
	t.Helper()
	u := &api.MapUpdate{Index: index, Full: true, VNet: "default", Overlay: dnsOverlay}
	for _, p := range dnsPeers {
		k, err := wgcfg.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		p.PublicKey = k.Public().String()
		switch {
		case p.ID == "c1":
			u.Self = &p
		case slices.Contains(ids, p.ID):
			u.Peers = append(u.Peers, p)
		}
	}
	return u
}

// lookup asks the agent's server; "" and the rcode when there is no answer.
func (d *dnsAgent) lookup(name string, qtype uint16) (string, int, error) {
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	m, _, err := c.Exchange(req, d.addr)
	if err != nil {
		return "", 0, err
	}
	var got []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			got = append(got, rr.A.String())
		case *dns.PTR:
			got = append(got, rr.Ptr)
		}
	}
	return strings.Join(got, ","), m.Rcode, nil
}

// freePort is a port free on the names tests' loopback address for UDP
// and TCP.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := meshdns.NewServer(nil).Listen(netip.MustParseAddrPort("127.77.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int(l.Addr().Port())
}

func TestAgentServesNames(t *testing.T) {
	port := freePort(t)
	d := startDNSAgent(t, port)
	d.ctl.updates <- mapOf(t, 10, "a1", "c2")

	waitFor(t, "cl2's name to resolve", func() bool {
		got, _, err := d.lookup("cl2.default.mesh.", dns.TypeA)
		return err == nil && got == "127.77.0.3"
	})
	for _, tt := range []struct {
		name  string
		qtype uint16
		want  string
		rcode int
	}{
		{"CL1.default.mesh.", dns.TypeA, "127.77.0.1", dns.RcodeSuccess}, // itself
		{"gwa1.default.mesh.", dns.TypeA, "127.77.0.2", dns.RcodeSuccess},
		{"2.0.77.127.in-addr.arpa.", dns.TypePTR, "gwa1.default.mesh.", dns.RcodeSuccess},
		{"nope.default.mesh.", dns.TypeA, "", dns.RcodeNameError},
		{"example.com.", dns.TypeA, "", dns.RcodeRefused},
	} {
		got, rcode, err := d.lookup(tt.name, tt.qtype)
		if err != nil || got != tt.want || rcode != tt.rcode {
			t.Errorf("%s: %q %s (%v); want %q %s", tt.name, got, dns.RcodeToString[rcode], err, tt.want, dns.RcodeToString[tt.rcode])
		}
	}
	wantSet := []string{"set meshd0 127.77.0.1 mesh,77.127.in-addr.arpa"}
	waitFor(t, "the host resolver to be pointed at the server", func() bool { return slices.Equal(d.res.done(), wantSet) })

	// cl2 leaves the map: its name stops resolving.
	d.ctl.updates <- &api.MapUpdate{Index: 11, Removed: []string{"c2"}}
	waitFor(t, "cl2's name to go", func() bool {
		_, rcode, err := d.lookup("cl2.default.mesh.", dns.TypeA)
		return err == nil && rcode == dns.RcodeNameError
	})
	if got, _, _ := d.lookup("gwa1.default.mesh.", dns.TypeA); got != "127.77.0.2" {
		t.Fatalf("gwa1 after cl2 left: %q", got)
	}

	// Stopping reverts the resolver and frees the port.
	d.stop()
	if got, want := d.res.done(), append(wantSet, "revert meshd0"); !slices.Equal(got, want) {
		t.Fatalf("host resolver calls %q; want %q", got, want)
	}
	l, err := meshdns.NewServer(nil).Listen(netip.MustParseAddrPort(d.addr))
	if err != nil {
		t.Fatalf("the port after the agent stopped: %v", err)
	}
	l.Close()
}

// A port another program holds: the agent runs on without names, leaves
// the host's resolver alone, and serves them once the port is free.
func TestAgentDNSPortTaken(t *testing.T) {
	port := freePort(t)
	other, err := net.ListenPacket("udp", fmt.Sprintf("127.77.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	d := startDNSAgent(t, port)
	d.ctl.updates <- mapOf(t, 10, "a1")
	waitFor(t, "the agent to configure WireGuard", func() bool {
		cfg, _ := d.eng.Applied()
		return cfg != nil && len(cfg.Peers) == 1
	})
	if _, err := d.a.Status(context.Background()); err != nil {
		t.Fatalf("the agent with its DNS port taken: %v", err)
	}
	if ops := d.res.done(); len(ops) != 0 {
		t.Fatalf("host resolver calls %q with no server listening; want none", ops)
	}

	other.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.clk.Advance(dnsRetry)
		if got, _, err := d.lookup("gwa1.default.mesh.", dns.TypeA); err == nil && got == "127.77.0.2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("names not served after the port was freed")
		}
	}
	waitFor(t, "the host resolver to be pointed at the server", func() bool { return len(d.res.done()) == 1 })
}

func TestDNSConfigNormalize(t *testing.T) {
	for _, tt := range []struct {
		name   string
		in     DNSConfig
		suffix string
		port   int
		ok     bool
	}{
		{"defaults", DNSConfig{}, "mesh", 53, true},
		{"a suffix in capitals with a dot", DNSConfig{Suffix: "Corp.Example."}, "corp.example", 53, true},
		{"a bad suffix", DNSConfig{Suffix: "a b"}, "", 0, false},
		{"a bad port", DNSConfig{Port: 70000}, "", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.in
			err := c.normalize()
			if (err == nil) != tt.ok || tt.ok && (c.Suffix != tt.suffix || c.Port != tt.port) {
				t.Fatalf("got %+v, %v; want suffix %q port %d ok %t", c, err, tt.suffix, tt.port, tt.ok)
			}
		})
	}
}

func TestDNSInput(t *testing.T) {
	var m netMap
	m.apply(mapOf(t, 7, "a1", "c2"))
	a := &Agent{cfg: Config{DNS: DNSConfig{Suffix: "mesh"}}, id: &controlclient.Identity{VNet: "default", Overlay: dnsOverlay}}
	in := a.dnsInput(&m)
	var hosts []string
	for _, h := range in.Hosts {
		hosts = append(hosts, fmt.Sprintf("%s=%v", h.Name, h.Addrs))
	}
	slices.Sort(hosts)
	if want := []string{"cl1=[127.77.0.1]", "cl2=[127.77.0.3]", "gwa1=[127.77.0.2]"}; !slices.Equal(hosts, want) {
		t.Errorf("hosts %q; want %q (this peer included)", hosts, want)
	}
	if in.Self != "cl1" || in.VNet != "default" || in.Serial != 7 || len(in.Overlays) != 1 || in.Overlays[0].String() != dnsOverlay {
		t.Errorf("input %+v", in)
	}
	// A map that has not said its vnet or overlay yet: the identity's.
	var bare netMap
	bare.apply(&api.MapUpdate{Index: 1, Self: &api.MapPeer{ID: "c1", Name: "cl1", OverlayIP: "127.77.0.1"}})
	if in := a.dnsInput(&bare); in.VNet != "default" || len(in.Overlays) != 1 {
		t.Errorf("from the identity: vnet %q overlays %v", in.VNet, in.Overlays)
	}
}

package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/policy"
)

// Kernel is the Linux WireGuard module, driven through wgctrl. It enforces
// the policy with nftables on what arrives through its interface (see
// nftFilter).
type Kernel struct {
	name   string
	log    *slog.Logger
	link   netlink.Link
	wg     *wgctrl.Client
	filter *nftFilter

	applied applied
}

var (
	_ Engine   = (*Kernel)(nil)
	_ Filterer = (*Kernel)(nil)
)

// NewKernel creates a kernel WireGuard interface name with mtu (0:
// DefaultMTU). It fails where the module is not available.
func NewKernel(name string, mtu int, log *slog.Logger) (*Kernel, error) {
	if mtu == 0 {
		mtu = DefaultMTU
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	link := &netlink.Wireguard{LinkAttrs: attrs}
	if err := netlink.LinkAdd(link); err != nil {
		return nil, fmt.Errorf("create kernel wireguard interface %s: %w", name, err)
	}
	wg, err := wgctrl.New()
	if err != nil {
		netlink.LinkDel(link)
		return nil, fmt.Errorf("open wireguard netlink: %w", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		wg.Close()
		netlink.LinkDel(link)
		return nil, fmt.Errorf("bring up %s: %w", name, err)
	}
	k := &Kernel{name: name, log: log.With("component", "engine", "interface", name), link: link, wg: wg}
	k.filter, err = newNFTFilter(name, k.log)
	if err != nil {
		wg.Close()
		netlink.LinkDel(link)
		return nil, err
	}
	// No policy yet: a table that passes everything but has the kernel
	// track connections, so that the first policy keeps the flows it
	// admits. It also replaces a table an earlier run left behind.
	if err := k.filter.set(nil); err != nil {
		k.log.Warn("policy filter not installed; a policy will not be enforced until nftables works", "err", err)
	}
	return k, nil
}

// SetPolicyRules implements Filterer: it swaps the nftables policy
// table's rules atomically (see nftFilter). An error leaves rules in force
// as they were; it is logged, and the next call tries again.
func (k *Kernel) SetPolicyRules(rules []policy.AddrRule) {
	if err := k.filter.set(rules); err != nil {
		k.log.Error("policy not enforced", "err", err)
		return
	}
	k.log.Debug("policy rules installed", "table", "inet "+k.filter.table.Name, "rules", len(rules), "none", rules == nil)
}

// PolicyDropped implements Filterer: the packets the policy table dropped.
func (k *Kernel) PolicyDropped() uint64 { return k.filter.dropped() }

// Name implements Engine.
func (k *Kernel) Name() string { return k.name }

// Reconfig implements Engine.
func (k *Kernel) Reconfig(cfg *wgcfg.Config) error {
	return k.applied.reconfig(cfg, func(old *wgcfg.Config) error {
		if err := k.wg.ConfigureDevice(k.name, kernelDiff(old, cfg)); err != nil {
			return fmt.Errorf("configure %s: %w", k.name, err)
		}
		return nil
	})
}

// kernelDiff is wgcfg.UAPI's difference in wgctrl's terms.
func kernelDiff(old, want *wgcfg.Config) wgtypes.Config {
	priv := wgtypes.Key(want.PrivateKey)
	port := int(want.ListenPort)
	out := wgtypes.Config{PrivateKey: &priv, ListenPort: &port, ReplacePeers: old == nil}
	if old != nil {
		for _, p := range old.Peers {
			if want.Peer(p.PublicKey) == nil {
				out.Peers = append(out.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), Remove: true})
			}
		}
	}
	for i := range want.Peers {
		p := &want.Peers[i]
		var o *wgcfg.Peer
		if old != nil {
			o = old.Peer(p.PublicKey)
		}
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey)}
		if p.Endpoint.IsValid() && (o == nil || o.Endpoint != p.Endpoint) {
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		ka := time.Duration(p.PersistentKeepalive) * time.Second
		pc.PersistentKeepaliveInterval = &ka
		pc.ReplaceAllowedIPs = true
		for _, a := range p.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		out.Peers = append(out.Peers, pc)
	}
	return out
}

// Status implements Engine.
func (k *Kernel) Status() ([]PeerStatus, error) {
	d, err := k.wg.Device(k.name)
	if err != nil {
		return nil, fmt.Errorf("read %s status: %w", k.name, err)
	}
	out := make([]PeerStatus, 0, len(d.Peers))
	for _, p := range d.Peers {
		ps := PeerStatus{PublicKey: wgcfg.Key(p.PublicKey), LastHandshake: p.LastHandshakeTime, RxBytes: uint64(p.ReceiveBytes), TxBytes: uint64(p.TransmitBytes)}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.AddrPort()
		}
		if !ps.LastHandshake.IsZero() && ps.LastHandshake.Unix() == 0 {
			ps.LastHandshake = time.Time{}
		}
		out = append(out, ps)
	}
	return out, nil
}

// Close implements Engine.
func (k *Kernel) Close() error {
	return errors.Join(k.filter.close(), k.wg.Close(), netlink.LinkDel(k.link))
}

func newKernel(name string, mtu int, log *slog.Logger) (Engine, error) {
	k, err := NewKernel(name, mtu, log)
	if err != nil {
		return nil, err
	}
	return k, nil
}

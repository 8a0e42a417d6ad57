package main

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"rsc.io/qr"

	"github.com/meshd/meshd/peer/wgcfg"
	"github.com/meshd/meshd/pkg/api"
)

// FormatWGQuick is the one format peer export writes: wg-quick(8)'s.
const FormatWGQuick = "wg-quick"

func newPeerExportCmd(g *globals) *cobra.Command {
	var (
		vnet, format, pubKey, out string
		routes, tags              []string
		showQR                    bool
	)
	cmd := &cobra.Command{
		Use:   "export NAME",
		Short: "Add a device that cannot run the agent and print its WireGuard config (wg-quick)",
		Long: `Register a device (role "device": a phone, a router, anything with a stock
WireGuard client) and print a wg-quick config for it: its overlay address and
one [Peer] for every mesh peer the vnet's policy lets it reach, each with its
public endpoint, its overlay address, and the routes whose active gateway it
is right now.

The device's private key is made here and printed in the config only; the
coordinators never see it. With --public-key the device keeps a key of its
own, and the config has a placeholder for it.

Routes follow the gateway that is active at export time: after a failover,
export the device again (peer remove, then peer export) to move them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := api.ValidName("peer", name); err != nil {
				return err
			}
			if format != FormatWGQuick {
				return fmt.Errorf("--format %q: the only format is %s", format, FormatWGQuick)
			}
			var priv *wgcfg.Key
			var pub wgcfg.Key
			if pubKey != "" {
				k, err := wgcfg.ParseKey(strings.TrimSpace(pubKey))
				if err != nil {
					return fmt.Errorf("--public-key is not a base64 WireGuard public key (wg pubkey prints one)")
				}
				pub = k
			} else {
				k, err := wgcfg.GenerateKey()
				if err != nil {
					return err
				}
				priv, pub = &k, k.Public()
			}
			req := api.ExportDeviceRequest{Name: name, VNet: vnet, PublicKey: pub.String(), Tags: tags}
			for _, r := range routes {
				p, err := netip.ParsePrefix(strings.TrimSpace(r))
				if err != nil || p != p.Masked() {
					return fmt.Errorf("--routes %q is not a network CIDR like 192.168.10.0/24", r)
				}
				req.Routes = append(req.Routes, p.String())
			}
			var dc api.DeviceConfig
			if err := g.call(cmd, http.MethodPost, "/v1/devices", req, &dc); err != nil {
				return err
			}
			text := wgQuickConfig(&dc, priv)
			switch {
			case out != "":
				if err := writePrivate(out, []byte(text)); err != nil {
					return fmt.Errorf("--out: %w (the device is registered: meshd peer remove %s --vnet %s, then export again)", err, name, dc.Peer.VNet)
				}
				fmt.Fprintf(g.errOut, "wrote %s\n", out)
			case !showQR:
				fmt.Fprint(g.out, text)
			}
			if showQR {
				if err := printQR(g.out, text); err != nil {
					return err
				}
			}
			fmt.Fprintf(g.errOut, "device %s added to vnet %s with overlay address %s.\n", dc.Peer.Name, dc.Peer.VNet, dc.Peer.OverlayIP)
			fmt.Fprintln(g.errOut, "note: routes follow the gateway that was active at export time; after a failover, export the device again to move them.")
			for _, s := range dc.Skipped {
				fmt.Fprintf(g.errOut, "note: route %s is left out\n", s)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&vnet, "vnet", api.DefaultVNet, "vnet the device joins")
	f.StringVar(&format, "format", FormatWGQuick, "config format: wg-quick")
	f.StringSliceVar(&routes, "routes", nil, "subnets the device reaches through the mesh (comma separated CIDRs, each inside an announced route; default: every route)")
	f.StringVar(&pubKey, "public-key", "", "the device's own WireGuard public key (the config then has a placeholder for its private key)")
	f.StringSliceVar(&tags, "tag", nil, "tags of the device, for policies")
	f.BoolVar(&showQR, "qr", false, "print the config as a QR code for the WireGuard mobile apps")
	f.StringVar(&out, "out", "", "write the config to this file (mode 0600) instead of standard output")
	return cmd
}

// PrivateKeyPlaceholder stands for the private key of a device exported
// with --public-key.
const PrivateKeyPlaceholder = "<the private key of this device>"

// wgQuickConfig renders a device's configuration for wg-quick: its overlay
// address and private key (priv nil: a placeholder), and a [Peer] for each
// mesh peer with its endpoint, allowed IPs and a 25 s keepalive (the mesh
// learns the device's endpoint from its packets, and the keepalive keeps
// its NAT mapping open).
func wgQuickConfig(dc *api.DeviceConfig, priv *wgcfg.Key) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# meshd device %s, vnet %s\n", dc.Peer.Name, dc.Peer.VNet)
	fmt.Fprintf(&b, "# Routes go to the gateway that was active at export time; export again after a failover.\n")
	b.WriteString("[Interface]\n")
	if priv != nil {
		fmt.Fprintf(&b, "PrivateKey = %s\n", priv)
	} else {
		fmt.Fprintf(&b, "# public key %s\n", dc.Peer.PublicKey)
		fmt.Fprintf(&b, "PrivateKey = %s\n", PrivateKeyPlaceholder)
	}
	if ip, err := netip.ParseAddr(dc.Peer.OverlayIP); err == nil {
		addr := netip.PrefixFrom(ip, ip.BitLen()).String()
		if ip6, err := netip.ParseAddr(dc.Peer.OverlayIP6); err == nil {
			addr += ", " + netip.PrefixFrom(ip6, ip6.BitLen()).String()
		}
		fmt.Fprintf(&b, "Address = %s\n", addr)
	}
	for _, p := range dc.Peers {
		fmt.Fprintf(&b, "\n[Peer]\n# %s (%s)\n", p.Name, p.Role)
		fmt.Fprintf(&b, "PublicKey = %s\n", p.PublicKey)
		if p.Endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\n", p.Endpoint)
		} else {
			b.WriteString("# no endpoint known: it reaches this device only after the device has sent to it\n")
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(p.AllowedIPs, ", "))
		fmt.Fprintf(&b, "PersistentKeepalive = %d\n", deviceKeepalive)
	}
	return b.String()
}

// deviceKeepalive is the PersistentKeepalive of a device's peers, in
// seconds (the agents use the same).
const deviceKeepalive = 25

// writePrivate writes data to path with mode 0600, refusing to replace a
// file that exists (it may hold another device's key).
func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// printQR prints text as a QR code for a terminal: two rows of modules per
// line with half-block characters, dark modules as spaces on a light
// quiet zone, so phones scan it from a dark or a light terminal alike.
func printQR(w io.Writer, text string) error {
	c, err := qr.Encode(text, qr.L)
	if err != nil {
		return fmt.Errorf("qr code: %w", err)
	}
	_, err = io.WriteString(w, renderQR(c.Size, c.Black))
	return err
}

// qrQuiet is the quiet zone around a QR code, in modules.
const qrQuiet = 2

// renderQR draws a size×size code whose module (x, y) is dark when
// black(x, y): each line is two module rows, upper and lower half of a
// character cell ('█' both light, '▀' upper light, '▄' lower light, ' '
// both dark), inside a light quiet zone.
func renderQR(size int, black func(x, y int) bool) string {
	light := func(x, y int) bool {
		if x < 0 || y < 0 || x >= size || y >= size {
			return true
		}
		return !black(x, y)
	}
	var b strings.Builder
	for y := -qrQuiet; y < size+qrQuiet; y += 2 {
		for x := -qrQuiet; x < size+qrQuiet; x++ {
			up, down := light(x, y), light(x, y+1)
			switch {
			case up && down:
				b.WriteRune('█')
			case up:
				b.WriteRune('▀')
			case down:
				b.WriteRune('▄')
			default:
				b.WriteRune(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

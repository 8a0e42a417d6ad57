package engine

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/meshd/meshd/peer/internal/netnstest"
	"github.com/meshd/meshd/peer/wgcfg"
)

func TestUserspaceReconfig(t *testing.T) {
	netnstest.Run(t, true, func() {
		name := fmt.Sprintf("meshdt%d", os.Getpid()%10000)
		e, err := NewUserspace(name, 0, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer e.Close()
		priv, _ := wgcfg.GenerateKey()
		p1, _ := wgcfg.GenerateKey()
		p2, _ := wgcfg.GenerateKey()
		cfg := &wgcfg.Config{PrivateKey: priv, ListenPort: 0, Peers: []wgcfg.Peer{
			{PublicKey: p1.Public(), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.1/32")}, PersistentKeepalive: 25},
			{PublicKey: p2.Public(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32"), netip.MustParsePrefix("10.1.0.0/24")}},
		}}
		cfg.Normalize()
		if err := e.Reconfig(cfg); err != nil {
			t.Error(err)
			return
		}
		if err := e.Reconfig(cfg.Clone()); !errors.Is(err, ErrNoChanges) {
			t.Errorf("same config again: got %v; want ErrNoChanges", err)
		}
		st, err := e.Status()
		if err != nil || len(st) != 2 {
			t.Errorf("status: got %d peers, %v; want 2", len(st), err)
			return
		}
		// Stock tools read the same state through the UAPI socket.
		got := uapiGet(t, name)
		if !strings.Contains(got, "public_key="+p1.Public().Hex()) || !strings.Contains(got, "allowed_ip=10.1.0.0/24") {
			t.Errorf("uapi get lacks the configured peers:\n%s", got)
		}
		less := cfg.Clone()
		less.Peers = less.Peers[:1]
		if err := e.Reconfig(less); err != nil {
			t.Error(err)
			return
		}
		if st, _ := e.Status(); len(st) != 1 {
			t.Errorf("after removing a peer: got %d peers; want 1", len(st))
		}
	})
}

func uapiGet(t *testing.T, name string) string {
	c, err := net.Dial("unix", "/var/run/wireguard/"+name+".sock")
	if err != nil {
		t.Errorf("dial uapi socket: %v", err)
		return ""
	}
	defer c.Close()
	fmt.Fprint(c, "get=1\n\n")
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if sc.Text() == "" {
			break
		}
		b.WriteString(sc.Text() + "\n")
	}
	return b.String()
}

func TestParseUAPIGet(t *testing.T) {
	k, _ := wgcfg.GenerateKey()
	in := "private_key=00\nlisten_port=51820\npublic_key=" + k.Public().Hex() + "\nendpoint=10.0.0.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nerrno=0\n"
	st, err := parseUAPIGet(in)
	if err != nil || len(st) != 1 {
		t.Fatalf("got %v, %v; want one peer", st, err)
	}
	if st[0].PublicKey != k.Public() || st[0].Endpoint.String() != "10.0.0.1:51820" || st[0].RxBytes != 10 || st[0].TxBytes != 20 || st[0].LastHandshake.Unix() != 1700000000 {
		t.Fatalf("got %+v", st[0])
	}
}

package bind

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/meshd/meshd/peer/wgcfg"
)

func TestDropCrossed(t *testing.T) {
	lo, hi := wgcfg.Key{1}, wgcfg.Key{2}
	now := time.Unix(1000, 0)
	sent := now.Add(-10 * time.Millisecond)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tt := range []struct {
		name       string
		self, peer wgcfg.Key
		sent       time.Time
		drops      []time.Time
		want       bool
	}{
		{"lower key, own initiation just sent", lo, hi, sent, nil, true},
		{"higher key answers", hi, lo, sent, nil, false},
		{"no initiation outstanding", lo, hi, time.Time{}, nil, false},
		{"own initiation too old to cross", lo, hi, now.Add(-CrossWindow), nil, false},
		{"one already dropped for this initiation", lo, hi, sent, []time.Time{ago(5 * time.Millisecond)}, false},
		{"dropped for an earlier initiation", lo, hi, sent, []time.Time{ago(time.Second)}, true},
		{"as many as allowed dropped lately", lo, hi, sent, []time.Time{ago(15 * time.Second), ago(10 * time.Second), ago(5 * time.Second)}, false},
		{"the oldest drop long ago", lo, hi, sent, []time.Time{ago(CrossDropEvery), ago(10 * time.Second), ago(5 * time.Second)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := dropCrossed(tt.self, tt.peer, tt.sent, tt.drops, now); got != tt.want {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestHoldCrossing(t *testing.T) {
	lo, hi := wgcfg.Key{1}, wgcfg.Key{2}
	now := time.Unix(1000, 0)
	for _, tt := range []struct {
		name       string
		self, peer wgcfg.Key
		passed     time.Time
		want       bool
	}{
		{"lower key, the peer's initiation just handed over", lo, hi, now.Add(-5 * time.Millisecond), true},
		{"higher key sends", hi, lo, now.Add(-5 * time.Millisecond), false},
		{"none handed over", lo, hi, time.Time{}, false},
		{"handed over too long ago", lo, hi, now.Add(-CrossWindow), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := holdCrossing(tt.self, tt.peer, tt.passed, now); got != tt.want {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestResendDelay(t *testing.T) {
	lo, hi := wgcfg.Key{1}, wgcfg.Key{2}
	if got := resendDelay(lo, hi); got != ResendAfter {
		t.Errorf("lower key: got %s; want %s", got, ResendAfter)
	}
	if got := resendDelay(hi, lo); got != 2*ResendAfter {
		t.Errorf("higher key: got %s; want %s", got, 2*ResendAfter)
	}
}

// captureBind records what WireGuard sends and receives nothing.
type captureBind struct {
	sent   chan []byte
	closed chan struct{}
}

func (b *captureBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	closed := b.closed
	return []conn.ReceiveFunc{func([][]byte, []int, []conn.Endpoint) (int, error) {
		<-closed
		return 0, net.ErrClosed
	}}, 1, nil
}
func (b *captureBind) Close() error {
	select {
	case <-b.closed:
	default:
		close(b.closed)
	}
	b.closed = make(chan struct{})
	return nil
}
func (b *captureBind) SetMark(uint32) error { return nil }
func (b *captureBind) BatchSize() int       { return 1 }
func (b *captureBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return &conn.StdNetEndpoint{AddrPort: ap}, err
}
func (b *captureBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	for _, p := range bufs {
		select {
		case b.sent <- append([]byte(nil), p...):
		default:
		}
	}
	return nil
}

// realInitiation returns a handshake initiation wireguard-go sends from
// from to to.
func realInitiation(t *testing.T, from, to wgcfg.Key) []byte {
	t.Helper()
	b := &captureBind{sent: make(chan []byte, 16), closed: make(chan struct{})}
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), b, device.NewLogger(device.LogLevelSilent, ""))
	defer dev.Close()
	cfg := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=127.0.0.1:9\npersistent_keepalive_interval=1\nallowed_ip=100.64.0.2/32\n",
		from.Hex(), to.Public().Hex())
	if err := dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case p := <-b.sent:
			if len(p) == wgInitiationSz && isWG(p, wgInitiation) {
				return p
			}
		case <-timeout:
			t.Fatal("wireguard-go sent no handshake initiation")
		}
	}
}

func TestInitOpenerSender(t *testing.T) {
	var keys [3]wgcfg.Key
	for i := range keys {
		k, err := wgcfg.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	a, b, other := keys[0], keys[1], keys[2]
	pkt := realInitiation(t, a, b)
	tampered := append([]byte(nil), pkt...)
	tampered[50] ^= 1
	for _, tt := range []struct {
		name   string
		to     wgcfg.Key // the host opening it
		pkt    []byte
		want   wgcfg.Key
		wantOK bool
	}{
		{"the responder finds the initiator", b, pkt, a.Public(), true},
		{"another host: mac1 does not match", other, pkt, wgcfg.Key{}, false},
		{"tampered", b, tampered, wgcfg.Key{}, false},
		{"not an initiation", b, pkt[:100], wgcfg.Key{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := newInitOpener(tt.to, tt.to.Public()).sender(tt.pkt)
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("got %v %v; want %v %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

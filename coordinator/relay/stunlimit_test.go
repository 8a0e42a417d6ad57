package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func TestIsSTUNRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"binding request", stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw, true},
		{"allocate request", stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest)).Raw, true},
		{"binding success", stun.MustBuild(stun.TransactionID, stun.BindingSuccess).Raw, false},
		{"send indication", stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication)).Raw, false},
		{"channel data", []byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false},
		{"short", []byte{0, 1, 0, 0}, false},
		{"no magic cookie", make([]byte, 20), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := isSTUNRequest(tt.pkt); got != tt.want {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
		})
	}
}

// TestSTUNRateLimitedPerSource floods the relay's UDP port with binding
// requests from one source address: only its allowance is answered, and
// another source address is answered meanwhile.
func TestSTUNRateLimitedPerSource(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	GrowBuffers(pc)
	r, err := New(Config{PacketConn: pc})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	srv := pc.LocalAddr().(*net.UDPAddr)

	flood, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, srv)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	GrowBuffers(flood)
	other, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, srv)
	if err != nil {
		t.Skipf("no second loopback address here: %v", err)
	}
	defer other.Close()

	const n = 1000
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	start := time.Now()
	for range n {
		if _, err := flood.Write(req.Raw); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Since(start)
	// Another address is answered while the flood is being dropped.
	if _, err := other.Write(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw); err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	if _, err := other.Read(buf); err != nil {
		t.Fatalf("another source address got no answer during the flood: %v", err)
	}
	answers := 0
	for {
		flood.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := flood.Read(buf); err != nil {
			break
		}
		answers++
	}
	allowance := DefaultRequestBurst + int(time.Since(start).Seconds()*DefaultRequestRate) + 1
	if answers > allowance {
		t.Fatalf("%d binding requests from one address in %s got %d answers; want at most %d", n, sent.Round(time.Millisecond), answers, allowance)
	}
	if answers < DefaultRequestBurst/2 {
		t.Fatalf("got %d answers; want at least %d (the burst)", answers, DefaultRequestBurst/2)
	}
	if d := r.RequestsDropped(); d == 0 {
		t.Fatal("RequestsDropped is 0")
	}
	t.Logf("%d requests in %s: %d answered, %d dropped", n, sent.Round(time.Millisecond), answers, r.RequestsDropped())
}

// TestRequestLimiterForgets checks that sources whose allowance is whole
// again are forgotten.
func TestRequestLimiterForgets(t *testing.T) {
	now := time.Unix(0, 0)
	l := newRequestLimiter(10, 20, func() time.Time { return now })
	a := netipAddr(t, "192.0.2.1")
	for i := range 25 {
		if got, want := l.allow(a), i < 20; got != want {
			t.Fatalf("request %d: allowed %v; want %v", i, got, want)
		}
	}
	now = now.Add(100 * time.Millisecond) // one more
	if !l.allow(a) || l.allow(a) {
		t.Fatal("want exactly one request after 100 ms at 10/s")
	}
	now = now.Add(sweepEvery + time.Second)
	l.allow(netipAddr(t, "192.0.2.2"))
	if _, ok := l.src[a]; ok {
		t.Fatal("an idle source is still tracked after a sweep")
	}
}

func netipAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	return netip.MustParseAddr(s)
}

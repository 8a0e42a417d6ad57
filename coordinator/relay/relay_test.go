package relay

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/meshd/meshd/pkg/logging"
)

func TestCredential(t *testing.T) {
	secret := []byte("static-auth-secret")
	exp := time.Unix(1_900_000_000, 0)
	user, pass := Credential(secret, "peer1", exp)
	if user != "1900000000:peer1" {
		t.Fatalf("username %q; want 1900000000:peer1", user)
	}
	// pion's TURN REST handler (the use-auth-secret scheme coturn uses)
	// derives the same long-term key from the secret.
	at := time.Now()
	user2, pass2 := Credential(secret, "peer1", at.Add(time.Hour))
	key, ok := turn.LongTermTURNRESTAuthHandler(string(secret), nil)(user2, Realm, &net.UDPAddr{})
	if !ok || string(key) != string(turn.GenerateAuthKey(user2, Realm, pass2)) {
		t.Fatalf("pion's TURN REST handler disagrees (ok %v)", ok)
	}
	if _, other := Credential([]byte("other"), "peer1", exp); other == pass {
		t.Fatal("two secrets gave one password")
	}
}

func TestParseUsername(t *testing.T) {
	for _, tt := range []struct {
		in   string
		exp  int64
		peer string
		ok   bool
	}{
		{"1900000000:abc", 1_900_000_000, "abc", true},
		{"1900000000:a:b", 1_900_000_000, "a:b", true},
		{"", 0, "", false},
		{"1900000000", 0, "", false},
		{"1900000000:", 0, "", false},
		{"soon:abc", 0, "", false},
		{"-5:abc", 0, "", false},
		{"0:abc", 0, "", false},
	} {
		t.Run(tt.in, func(t *testing.T) {
			exp, peer, err := ParseUsername(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("got %v; want ok %v", err, tt.ok)
			}
			if !tt.ok {
				if !errors.Is(err, ErrUsername) {
					t.Fatalf("got %v; want %v", err, ErrUsername)
				}
				return
			}
			if exp.Unix() != tt.exp || peer != tt.peer {
				t.Fatalf("got %v %q; want %d %q", exp.Unix(), peer, tt.exp, tt.peer)
			}
		})
	}
}

// TestBucket drives the token bucket with a fake clock.
func TestBucket(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	b := newBucket(100_000, clock) // burst: 10,000
	steps := []struct {
		name    string
		advance time.Duration
		n       int
		ok      bool
	}{
		{"starts full", 0, 10_000, true},
		{"then empty", 0, 1, false},
		{"refills at the rate", 10 * time.Millisecond, 1_000, true},
		{"no more than it refilled", 0, 1, false},
		{"refills up to the burst only", time.Hour, 10_001, false},
		{"the burst passes", 0, 10_000, true},
		{"a clock going back adds nothing", -time.Second, 1, false},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		if got := b.take(s.n); got != s.ok {
			t.Fatalf("%s: take(%d) = %v; want %v", s.name, s.n, got, s.ok)
		}
	}
	if newBucket(0, clock) != nil || !(*bucket)(nil).take(1<<20) {
		t.Fatal("a zero rate should mean no bucket, which passes everything")
	}
	if small := newBucket(1, clock); !small.take(minBurst) {
		t.Fatalf("a tiny rate should still pass a burst of %d bytes", minBurst)
	}
}

// TestQuotaAndRevoke: relayed addresses are RelayIP with a port in the
// range; a peer holds at most MaxAllocations; Revoke ends the allocations of
// peers that are gone and frees their quota.
func TestQuotaAndRevoke(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("s")
	s, err := New(Config{
		PacketConn: pc, RelayIP: netip.MustParseAddr("127.0.0.1"), Secret: secret,
		PeerOK:   func(id string) bool { return strings.HasPrefix(id, "p") },
		PeerIPOK: func(netip.Addr) bool { return true },
		PortMin:  41000, PortMax: 41999,
		MaxAllocations: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	allocate := func(peer string) (func(), error) {
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		user, pass := Credential(secret, peer, time.Now().Add(time.Hour))
		c, err := turn.NewClient(&turn.ClientConfig{
			TURNServerAddr: pc.LocalAddr().String(), Conn: conn, Username: user, Password: pass,
			RTO: 100 * time.Millisecond, LoggerFactory: logging.Pion(logging.Discard()),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Listen(); err != nil {
			t.Fatal(err)
		}
		closeAll := func() { c.Close(); conn.Close() }
		t.Cleanup(closeAll)
		rc, err := c.Allocate()
		if err != nil {
			return closeAll, err
		}
		ra := rc.LocalAddr().(*net.UDPAddr)
		if !ra.IP.Equal(net.IPv4(127, 0, 0, 1)) || ra.Port < 41000 || ra.Port > 41999 {
			t.Fatalf("relayed address %v; want 127.0.0.1 with a port in 41000-41999", ra)
		}
		return func() { rc.Close(); closeAll() }, nil
	}
	for i, want := range []bool{true, true, false} {
		if _, err := allocate("p1"); (err == nil) != want {
			t.Fatalf("allocation %d of p1: got %v; want success %v", i+1, err, want)
		}
	}
	if _, err := allocate("p2"); err != nil {
		t.Fatalf("another peer's allocation: %v", err)
	}
	if got := s.Allocations("p1"); got != 2 {
		t.Fatalf("p1 holds %d allocations; want 2", got)
	}
	if n := s.Revoke(func(id string) bool { return id != "p1" }); n != 2 {
		t.Fatalf("revoked %d; want p1's 2", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Allocations("p1") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("p1 still holds %d allocations after Revoke", s.Allocations("p1"))
		}
		time.Sleep(10 * time.Millisecond) // polling interval, bounded by the deadline
	}
	if s.Allocations("p2") != 1 {
		t.Fatalf("p2 holds %d allocations; want its 1 untouched", s.Allocations("p2"))
	}
	if _, err := allocate("p1"); err != nil {
		t.Fatalf("p1 allocates again once its quota is free: %v", err)
	}
}

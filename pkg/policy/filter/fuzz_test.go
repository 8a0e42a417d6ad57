package filter

import (
	"testing"
	"time"
)

// FuzzPacket feeds the filter arbitrary packets, with and without rules,
// in both directions: it must never panic nor read past a packet.
func FuzzPacket(f *testing.F) {
	for _, seed := range [][]byte{
		tcp("100.96.0.2", "100.96.0.1", 1, 443, tcpSYN),
		udp("fd7a::2", "fd7a::1", 1, 53),
		echo("100.96.0.3", "100.96.0.1", true, 1),
		unreachable("100.96.0.3", "100.96.0.1", udp("100.96.0.1", "100.96.0.3", 1, 2)),
		unreachable("fd7a::2", "fd7a::1", udp("fd7a::1", "fd7a::2", 1, 2)),
		{0x45}, {0x60}, {},
	} {
		f.Add(seed)
	}
	rs := rulesFor(f, testPolicy, "srv")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, r := range []*Ruleset{nil, rs} {
			flt := New(Config{Now: func() time.Time { return time.Unix(0, 0) }})
			flt.SetRules(r)
			flt.Out(b)
			flt.In(b)
			flt.In(b)
		}
	})
}

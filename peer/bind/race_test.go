package bind

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRacePrefersEarlierRelay: the first relay in the coordinators' order
// wins when it answers within PreferWithin of a later one; a slower one
// loses to whoever answered; failures are skipped.
func TestRacePrefersEarlierRelay(t *testing.T) {
	cases := []struct {
		name   string
		delays []time.Duration // per URL; negative: fails after -d
		want   string
	}{
		{"first answers first", []time.Duration{10 * time.Millisecond, 50 * time.Millisecond}, "r0"},
		{"first answers a little later", []time.Duration{80 * time.Millisecond, 5 * time.Millisecond}, "r0"},
		{"first too slow", []time.Duration{PreferWithin + 400*time.Millisecond, 5 * time.Millisecond}, "r1"},
		{"first fails", []time.Duration{-5 * time.Millisecond, 30 * time.Millisecond, 10 * time.Millisecond}, "r1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &relayMgr{}
			var urls []relayURL
			for i := range tc.delays {
				urls = append(urls, relayURL{raw: "r" + string(rune('0'+i))})
			}
			fn := func(ctx context.Context, u relayURL) (*allocation, error) {
				d := tc.delays[u.raw[1]-'0']
				fail := d < 0
				if fail {
					d = -d
				}
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				if fail {
					return nil, errors.New("refused")
				}
				return &allocation{url: u, done: make(chan struct{})}, nil
			}
			a, err := m.race(urls, 2*time.Second, fn)
			if err != nil {
				t.Fatal(err)
			}
			if a.url.raw != tc.want {
				t.Fatalf("won %s; want %s", a.url.raw, tc.want)
			}
		})
	}
}

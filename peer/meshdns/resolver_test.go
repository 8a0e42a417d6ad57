package meshdns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// fakeCommands records the commands a Resolved runs; fail names the
// subcommands (the first argument) that fail.
type fakeCommands struct {
	ran  []string
	fail map[string]bool
}

var errFake = errors.New("exit status 1")

func (f *fakeCommands) run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.ran = append(f.ran, name+" "+strings.Join(args, " "))
	if f.fail[args[0]] {
		return []byte("Failed"), errFake
	}
	return nil, nil
}

func TestResolved(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fail    map[string]bool
		wantErr bool
		ran     []string
	}{
		{"sets DNS, routing-only domains, no default route", nil, false, []string{
			"resolvectl dns wg0 100.96.0.5",
			"resolvectl domain wg0 ~mesh ~96.100.in-addr.arpa",
			"resolvectl default-route wg0 false",
		}},
		{"an old systemd without default-route still works", map[string]bool{"default-route": true}, false, []string{
			"resolvectl dns wg0 100.96.0.5",
			"resolvectl domain wg0 ~mesh ~96.100.in-addr.arpa",
			"resolvectl default-route wg0 false",
		}},
		{"resolved refuses the server: stop there", map[string]bool{"dns": true}, true, []string{
			"resolvectl dns wg0 100.96.0.5",
		}},
		{"resolved refuses the domains", map[string]bool{"domain": true}, true, []string{
			"resolvectl dns wg0 100.96.0.5",
			"resolvectl domain wg0 ~mesh ~96.100.in-addr.arpa",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeCommands{fail: tt.fail}
			r := &Resolved{Run: f.run}
			err := r.Set("wg0", netip.MustParseAddr("100.96.0.5"), []string{"mesh", "96.100.in-addr.arpa"})
			if (err != nil) != tt.wantErr || err != nil && !errors.Is(err, errFake) {
				t.Fatalf("Set: %v; want error %t", err, tt.wantErr)
			}
			if !slices.Equal(f.ran, tt.ran) {
				t.Fatalf("ran %q; want %q", f.ran, tt.ran)
			}
		})
	}
	t.Run("revert", func(t *testing.T) {
		f := &fakeCommands{}
		if err := (&Resolved{Run: f.run}).Revert("wg0"); err != nil {
			t.Fatal(err)
		}
		if want := []string{"resolvectl revert wg0"}; !slices.Equal(f.ran, want) {
			t.Fatalf("ran %q; want %q", f.ran, want)
		}
	})
}

func TestChooseResolver(t *testing.T) {
	for _, tt := range []struct {
		name string
		f    ResolverFacts
		want bool
	}{
		{"systemd-resolved on the host", ResolverFacts{HostNetNS: true, ResolvedRunning: true, Resolvectl: true}, true},
		{"in a namespace of its own (the lab)", ResolverFacts{HostNetNS: false, ResolvedRunning: true, Resolvectl: true}, false},
		{"no systemd-resolved", ResolverFacts{HostNetNS: true, Resolvectl: true}, false},
		{"no resolvectl", ResolverFacts{HostNetNS: true, ResolvedRunning: true}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, why := ChooseResolver(tt.f)
			if got != tt.want || got == (why != "") {
				t.Fatalf("got %t (%q); want %t, with a reason exactly when false", got, why, tt.want)
			}
		})
	}
}

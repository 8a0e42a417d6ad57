package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

const keyGrace = time.Minute

func seed(b byte) []byte { return bytes.Repeat([]byte{b}, GossipSeedBytes) }

var legacyKey = make([]byte, 32) // setup's bootstrap key

// ringSetup is setup plus vnet "site" with a ring of its own (seed 1), vnet
// "lab" without one (it uses the legacy ring), and peers d1, d2 in default,
// s1, s2 in site and l1 in lab, the *2 ones ephemeral.
func ringSetup(t *testing.T) *Store {
	t.Helper()
	s := setup(t)
	for _, v := range []struct{ name, overlay string }{{"site", "100.112.0.0/16"}, {"lab", "100.113.0.0/16"}} {
		if err := s.CreateVNet(v.name, v.overlay, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.InitGossipRing("site", seed(1)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		id, vnet  string
		ephemeral bool
	}{{"d1", api.DefaultVNet, false}, {"d2", api.DefaultVNet, true}, {"s1", "site", false}, {"s2", "site", true}, {"l1", "lab", false}} {
		tok := "join-" + p.id
		if err := s.CreateToken(TokenSpec{ID: tok, SecretHash: hash('t'), VNet: p.vnet, Uses: 1, Expires: t0.Add(time.Hour), Ephemeral: p.ephemeral}, t0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Join(JoinSpec{TokenID: tok, SecretHash: hash('t'), PeerID: p.id, Name: p.id, PublicKey: key(), CredHash: hash('c')}, t0); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// ring describes vnet's ring as the peers get it, and when each key was
// superseded: "K1 K0@+1m" is K1 primary, K0 superseded at t0+1m.
func ring(s *Store, vnet string) string {
	var out []string
	s.Read(func(t *Tables, _ uint64) {
		if _, ok := t.VNets[vnet]; !ok {
			out = []string{"-"}
			return
		}
		r, own := t.GossipRings[vnet]
		keys := t.VNetGossipKeys(vnet)
		for i, k := range keys {
			d := keyName(k, vnet)
			if own && !r[i].Superseded.IsZero() {
				d += "@+" + since(r[i].Superseded)
			}
			out = append(out, d)
		}
	})
	return strings.Join(out, " ")
}

// since is how long after t0 at was: 0s, 30s, 1m, 1h.
func since(at time.Time) string {
	d := at.Sub(t0).String()
	if strings.HasSuffix(d, "m0s") {
		d = d[:len(d)-2]
	}
	if strings.HasSuffix(d, "h0m") {
		d = d[:len(d)-2]
	}
	return d
}

// keyName names a key: L (legacy) or S<n> when derived from seed(n) for vnet.
func keyName(k []byte, vnet string) string {
	if bytes.Equal(k, legacyKey) {
		return "L"
	}
	for n := byte(1); n < 20; n++ {
		if bytes.Equal(k, DeriveGossipKey(seed(n), vnet)) {
			return fmt.Sprintf("S%d", n)
		}
	}
	return "?"
}

func vnetGlobal(s *Store, vnet string, since uint64) bool {
	_, global, ok := s.ChangesSince(vnet, since)
	return ok && global
}

// TestGossipKeyRotation: each change to the rings, the rings of every vnet
// after it, and which vnets' watchers are told.
func TestGossipKeyRotation(t *testing.T) {
	mins := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	for _, tt := range []struct {
		name   string
		do     func(s *Store) error
		code   string
		rings  map[string]string // vnet -> ring; vnets not named are as ringSetup left them
		notify []string          // vnets whose watchers hear of a key change
	}{
		{"setup", func(s *Store) error { return nil }, "", nil, nil},
		{"removal rotates that vnet alone", func(s *Store) error { return s.RemovePeer("s1", mins(1), seed(2)) },
			"", map[string]string{"site": "S2 S1@+1m"}, []string{"site"}},
		{"first rotation of a legacy vnet keeps the legacy key for the grace", func(s *Store) error { return s.RemovePeer("d1", mins(1), seed(2)) },
			"", map[string]string{"default": "S2 L@+1m"}, []string{api.DefaultVNet}},
		{"removal written before rotation on removal rotates nothing", func(s *Store) error { return s.RemovePeer("s1", time.Time{}, nil) },
			"", nil, nil},
		{"a bad seed is refused", func(s *Store) error { return s.RemovePeer("s1", mins(1), []byte("short")) },
			api.CodeInvalidArgument, nil, nil},
		{"unknown peer", func(s *Store) error { return s.RemovePeer("nope", mins(1), seed(2)) },
			api.CodeNotFound, nil, nil},
		{"reaping rotates each vnet that lost a peer", func(s *Store) error {
			if got := s.ReapEphemeral(mins(60), time.Minute, seed(3)); !slices.Equal(got, []string{"d2", "s2"}) {
				return fmt.Errorf("reaped %v; want [d2 s2]", got)
			}
			return nil
		}, "", map[string]string{"default": "S3 L@+1h", "site": "S3 S1@+1h"}, []string{api.DefaultVNet, "site"}},
		{"admin rotation of one vnet", func(s *Store) error {
			_, err := s.RotateGossipKeys("lab", seed(4), mins(2))
			return err
		}, "", map[string]string{"lab": "S4 L@+2m"}, []string{"lab"}},
		{"admin rotation of every vnet", func(s *Store) error {
			got, err := s.RotateGossipKeys("", seed(4), mins(2))
			if err == nil && !slices.Equal(got, []string{api.DefaultVNet, "lab", "site"}) {
				err = fmt.Errorf("rotated %v; want every vnet", got)
			}
			return err
		}, "", map[string]string{"default": "S4 L@+2m", "lab": "S4 L@+2m", "site": "S4 S1@+2m"}, []string{api.DefaultVNet, "lab", "site"}},
		{"admin rotation of an unknown vnet", func(s *Store) error {
			_, err := s.RotateGossipKeys("nope", seed(4), mins(2))
			return err
		}, api.CodeNotFound, nil, nil},
		{"deleting a vnet deletes its ring", func(s *Store) error {
			if err := s.RemovePeer("l1", time.Time{}, nil); err != nil {
				return err
			}
			if _, err := s.RotateGossipKeys("lab", seed(4), mins(2)); err != nil {
				return err
			}
			if err := s.DeleteVNet("lab"); err != nil {
				return err
			}
			var has bool
			s.Read(func(t *Tables, _ uint64) { _, has = t.GossipRings["lab"] })
			if has {
				return fmt.Errorf("lab's ring outlived it")
			}
			return nil
		}, "", map[string]string{"lab": "-"}, []string{"lab"}},
		{"a burst of removals keeps the newest keys", func(s *Store) error {
			for n := byte(2); n < 12; n++ {
				if _, err := s.RotateGossipKeys("site", seed(n), mins(int(n))); err != nil {
					return err
				}
			}
			return nil
		}, "", map[string]string{"site": "S11 S10@+11m S9@+10m S8@+9m S7@+8m S6@+7m S5@+6m S4@+5m"}, []string{"site"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := ringSetup(t)
			want := map[string]string{api.DefaultVNet: "L", "site": "S1", "lab": "L"}
			for v, r := range tt.rings {
				want[v] = r
			}
			before, dump := s.Index(), s.Dump()
			s.SetIndex(before + 1)
			err := tt.do(s)
			if tt.code != "" {
				if !api.IsCode(err, tt.code) {
					t.Fatalf("got %v; want code %s", err, tt.code)
				}
				if !bytes.Equal(s.Dump(), dump) {
					t.Fatal("a refused command changed the state")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			for _, v := range []string{api.DefaultVNet, "site", "lab"} {
				if got := ring(s, v); got != want[v] {
					t.Errorf("vnet %s: got ring %q; want %q", v, got, want[v])
				}
				if got := vnetGlobal(s, v, before); got != slices.Contains(tt.notify, v) {
					t.Errorf("vnet %s: watchers told %v; want %v", v, got, !got)
				}
			}
		})
	}
}

// TestGossipKeyPrune: a superseded key stays for the grace, then goes, in
// every vnet at once and nowhere else; the vnets that changed are told.
func TestGossipKeyPrune(t *testing.T) {
	s := ringSetup(t)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	if err := s.RemovePeer("s1", at(0), seed(2)); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePeer("d1", at(30*time.Second), seed(2)); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePeer("s2", at(40*time.Second), seed(3)); err != nil {
		t.Fatal(err)
	}
	var next time.Time
	s.Read(func(t *Tables, _ uint64) { next = t.NextGossipKeyExpiry(keyGrace) })
	if !next.Equal(at(keyGrace)) {
		t.Fatalf("next expiry %v; want %v", next, at(keyGrace))
	}
	for _, step := range []struct {
		now            time.Duration
		changed        []string
		def, site, lab string
	}{
		{59 * time.Second, nil, "S2 L@+30s", "S3 S2@+40s S1@+0s", "L"},
		{60 * time.Second, []string{"site"}, "S2 L@+30s", "S3 S2@+40s", "L"},
		{100 * time.Second, []string{api.DefaultVNet, "site"}, "S2", "S3", "L"},
		{time.Hour, nil, "S2", "S3", "L"},
	} {
		before := s.Index()
		s.SetIndex(before + 1)
		got := s.PruneGossipKeys(at(step.now), keyGrace)
		s.Applied(before + 1)
		if !slices.Equal(got, step.changed) {
			t.Fatalf("at +%s: pruned %v; want %v", step.now, got, step.changed)
		}
		for v, want := range map[string]string{api.DefaultVNet: step.def, "site": step.site, "lab": step.lab} {
			if r := ring(s, v); r != want {
				t.Fatalf("at +%s: vnet %s ring %q; want %q", step.now, v, r, want)
			}
			if told := vnetGlobal(s, v, before); told != slices.Contains(step.changed, v) {
				t.Fatalf("at +%s: vnet %s watchers told %v", step.now, v, told)
			}
		}
	}
	s.Read(func(t *Tables, _ uint64) { next = t.NextGossipKeyExpiry(keyGrace) })
	if !next.IsZero() {
		t.Fatalf("next expiry %v once every ring is pruned; want none", next)
	}
}

// TestGossipRingsSnapshotRoundTrip: rings survive a snapshot and restore
// exactly, superseded times included.
func TestGossipRingsSnapshotRoundTrip(t *testing.T) {
	s := ringSetup(t)
	if err := s.RemovePeer("s1", t0.Add(time.Second), seed(2)); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePeer("d1", t0.Add(2*time.Second), seed(3)); err != nil {
		t.Fatal(err)
	}
	r := roundTrip(t, s)
	for _, v := range []string{api.DefaultVNet, "site", "lab"} {
		if got, want := ring(r, v), ring(s, v); got != want {
			t.Fatalf("vnet %s: restored ring %q; want %q", v, got, want)
		}
	}
	// The restored store prunes like the original.
	if got := r.PruneGossipKeys(t0.Add(time.Hour), keyGrace); !slices.Equal(got, []string{api.DefaultVNet, "site"}) {
		t.Fatalf("restored store pruned %v; want [default site]", got)
	}
}

// TestOldStateLoads: a snapshot written before keyrings were per vnet (one
// cluster-wide ring, no gossip_rings) loads; every vnet uses that ring
// until its first rotation, which keeps it as a secondary for the grace.
func TestOldStateLoads(t *testing.T) {
	k0, k1 := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{8}, 32)
	old := map[string]any{
		"index": 42,
		"tables": map[string]any{
			"bootstrapped": true,
			"vnets": map[string]any{
				"default": map[string]any{"name": "default", "overlay": "100.96.0.0/12", "created_at": t0, "next_ip": "100.96.0.2"},
				"site":    map[string]any{"name": "site", "overlay": "100.112.0.0/16", "created_at": t0, "next_ip": "100.112.0.1"},
			},
			"peers": map[string]any{
				"p1": map[string]any{"id": "p1", "name": "p1", "vnet": "default", "role": "client", "public_key": key(),
					"overlay_ip": "100.96.0.1", "created_at": t0, "last_seen": t0},
			},
			"tokens":       map[string]any{},
			"gossip_keys":  [][]byte{k1, k0},
			"coordinators": map[string]any{},
		},
	}
	data, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	s := New()
	if err := s.Restore(data); err != nil {
		t.Fatal(err)
	}
	var def, site [][]byte
	s.Read(func(t *Tables, _ uint64) { def, site = t.VNetGossipKeys(api.DefaultVNet), t.VNetGossipKeys("site") })
	if !slices.EqualFunc(def, [][]byte{k1, k0}, bytes.Equal) || !slices.EqualFunc(site, [][]byte{k1, k0}, bytes.Equal) {
		t.Fatalf("got default %x, site %x; want the legacy ring for both", def, site)
	}
	s.SetIndex(43)
	if err := s.RemovePeer("p1", t0.Add(time.Minute), seed(5)); err != nil {
		t.Fatal(err)
	}
	s.Read(func(t *Tables, _ uint64) { def, site = t.VNetGossipKeys(api.DefaultVNet), t.VNetGossipKeys("site") })
	if want := [][]byte{DeriveGossipKey(seed(5), api.DefaultVNet), k1, k0}; !slices.EqualFunc(def, want, bytes.Equal) {
		t.Fatalf("default after its first rotation: got %x; want %x", def, want)
	}
	if !slices.EqualFunc(site, [][]byte{k1, k0}, bytes.Equal) {
		t.Fatalf("site changed with default's rotation: got %x", site)
	}
	if got := s.PruneGossipKeys(t0.Add(2*time.Minute), keyGrace); !slices.Equal(got, []string{api.DefaultVNet}) {
		t.Fatalf("pruned %v; want [default]", got)
	}
	s.Read(func(t *Tables, _ uint64) { def = t.VNetGossipKeys(api.DefaultVNet) })
	if len(def) != 1 {
		t.Fatalf("default keeps %d keys after the grace; want 1", len(def))
	}
}

// TestDerivedKeysDiffer: one seed gives every vnet a key of its own.
func TestDerivedKeysDiffer(t *testing.T) {
	a, b := DeriveGossipKey(seed(1), "a"), DeriveGossipKey(seed(1), "b")
	if len(a) != 32 || bytes.Equal(a, b) || bytes.Equal(a, DeriveGossipKey(seed(2), "a")) {
		t.Fatalf("derived keys %x %x: want 32 bytes, distinct per vnet and per seed", a, b)
	}
}

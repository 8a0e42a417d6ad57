package state

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

const openDoc = `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`

func TestSetPolicyVersionsAndHistory(t *testing.T) {
	s := setup(t)
	// Refused: no such vnet, a stale version, not JSON, no author.
	for _, tt := range []struct {
		name, vnet, doc, by string
		prev                int
		code                string
	}{
		{"unknown vnet", "nope", openDoc, "admin", 0, api.CodeNotFound},
		{"stale version", api.DefaultVNet, openDoc, "admin", 3, api.CodeConflict},
		{"not json", api.DefaultVNet, `{"acls": [`, "admin", 0, api.CodeInvalidPolicy},
		{"empty", api.DefaultVNet, ``, "admin", 0, api.CodeInvalidArgument},
		{"no author", api.DefaultVNet, openDoc, "", 0, api.CodeInvalidArgument},
		{"too large", api.DefaultVNet, `"` + strings.Repeat("a", MaxPolicyBytes) + `"`, "admin", 0, api.CodeInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Dump()
			if _, err := s.SetPolicy(tt.vnet, []byte(tt.doc), tt.by, t0, tt.prev); !api.IsCode(err, tt.code) {
				t.Fatalf("got %v; want %s", err, tt.code)
			}
			if string(s.Dump()) != string(before) {
				t.Fatal("a refused policy changed the state")
			}
		})
	}
	if _, err := s.DeletePolicy(api.DefaultVNet, "admin", t0, 0); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("deleting a policy that does not exist: got %v; want %s", err, api.CodeNotFound)
	}
	// Versions count up; the document is kept as compact JSON.
	for i := range PolicyHistory + 3 {
		v, err := s.SetPolicy(api.DefaultVNet, []byte(openDoc), fmt.Sprintf("ops%d", i), t0.Add(time.Duration(i)*time.Minute), i)
		if err != nil || v != i+1 {
			t.Fatalf("set %d: got version %d, %v; want %d", i, v, err, i+1)
		}
	}
	var vp VNetPolicy
	var pol bool
	s.Read(func(tb *Tables, _ uint64) { vp, pol = *tb.Policies[api.DefaultVNet], tb.Policy(api.DefaultVNet) != nil })
	if len(vp.Versions) != PolicyHistory || vp.Versions[0].Version != 4 || !pol {
		t.Fatalf("kept %d versions from %d, in force %v; want %d from 4, in force", len(vp.Versions), vp.Versions[0].Version, pol, PolicyHistory)
	}
	cur := vp.Current()
	if cur.Version != 13 || cur.SetBy != "ops12" || !cur.SetAt.Equal(t0.Add(12*time.Minute)) || string(cur.Policy) != `{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}` {
		t.Fatalf("got %+v; want version 13 by ops12 at +12m with the compacted document", cur)
	}
	// Deleting is a version too; then the vnet has no policy.
	if v, err := s.DeletePolicy(api.DefaultVNet, "ops", t0, 13); err != nil || v != 14 {
		t.Fatalf("delete: got %d, %v; want version 14", v, err)
	}
	s.Read(func(tb *Tables, _ uint64) {
		if tb.Policy(api.DefaultVNet) != nil || tb.PolicyVersion(api.DefaultVNet) != 14 || !tb.Policies[api.DefaultVNet].Current().Deleted {
			t.Fatalf("after delete: policy %v, version %d; want none, 14", tb.Policy(api.DefaultVNet), tb.PolicyVersion(api.DefaultVNet))
		}
	})
}

// TestPolicyChangeNeedsFullMaps: after a policy change the vnet's watchers
// cannot be caught up with deltas; other vnets' can.
func TestPolicyChangeNeedsFullMaps(t *testing.T) {
	s := setup(t)
	if err := s.CreateVNet("site", "100.112.0.0/16", t0); err != nil {
		t.Fatal(err)
	}
	s.SetIndex(10)
	if _, err := s.SetPolicy(api.DefaultVNet, []byte(openDoc), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.ChangesSince(api.DefaultVNet, 9); ok {
		t.Fatal("a watcher from before the policy change can be caught up with a delta; want a full map")
	}
	if _, _, ok := s.ChangesSince(api.DefaultVNet, 10); !ok {
		t.Fatal("a watcher that saw the policy change needs a full map")
	}
	if _, _, ok := s.ChangesSince("site", 9); !ok {
		t.Fatal("another vnet's watchers need a full map")
	}
}

func TestPolicyUnreadableAcceptsNothing(t *testing.T) {
	s := setup(t)
	// An action this version does not know: it must not open the vnet.
	if _, err := s.SetPolicy(api.DefaultVNet, []byte(`{"acls":[{"action":"drop","src":["*"],"dst":["*:*"]}]}`), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *Tables, _ uint64) {
		if p := tb.Policy(api.DefaultVNet); p == nil || len(p.Rules) != 0 || len(p.Skipped) == 0 {
			t.Fatalf("got %+v; want a policy that accepts nothing and says what it skipped", p)
		}
	})
	// Fields of a newer version are ignored.
	if _, err := s.SetPolicy(api.DefaultVNet, []byte(`{"acls":[{"action":"accept","src":["*"],"dst":["*:*"],"posture":"x"}],"groups":{}}`), "admin", t0, 1); err != nil {
		t.Fatal(err)
	}
	s.Read(func(tb *Tables, _ uint64) {
		if p := tb.Policy(api.DefaultVNet); p == nil || len(p.Rules) != 1 {
			t.Fatalf("got %+v; want the one rule", p)
		}
	})
}

func TestPolicySnapshotRoundTrip(t *testing.T) {
	s := setup(t)
	for i, doc := range []string{openDoc, `{"acls":[{"action":"accept","src":["tag:a"],"dst":["tag:a:*"]}]}`} {
		if _, err := s.SetPolicy(api.DefaultVNet, []byte(doc), "admin", t0, i); err != nil {
			t.Fatal(err)
		}
	}
	r := roundTrip(t, s)
	r.Read(func(tb *Tables, _ uint64) {
		p := tb.Policy(api.DefaultVNet)
		if p == nil || len(p.Rules) != 1 || p.Rules[0].Src[0].Name != "a" || tb.PolicyVersion(api.DefaultVNet) != 2 {
			t.Fatalf("restored policy %+v version %d; want version 2 decoded", p, tb.PolicyVersion(api.DefaultVNet))
		}
	})
	// Deleting the vnet drops its policy.
	if err := r.DeleteVNet(api.DefaultVNet); err == nil {
		r.Read(func(tb *Tables, _ uint64) {
			if _, ok := tb.Policies[api.DefaultVNet]; ok {
				t.Fatal("a deleted vnet kept its policy")
			}
		})
	}
}

// TestOldSnapshotLoads: a snapshot taken before policies existed (no
// "policies" table) loads, with no policy anywhere, and new policies can
// be set on top of it.
func TestOldSnapshotLoads(t *testing.T) {
	s := setup(t)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Index  uint64                     `json:"index"`
		Tables map[string]json.RawMessage `json:"tables"`
	}
	if err := json.Unmarshal(snap, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Tables["policies"]; ok {
		t.Fatal("a state without policies writes a policies table; older versions' snapshots have none")
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetPolicy(api.DefaultVNet, []byte(openDoc), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	// A snapshot with a table this version does not know loads too.
	m.Tables["future_table"] = json.RawMessage(`{"x":1}`)
	b, _ := json.Marshal(m)
	if err := New().Restore(b); err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotationIsNoPolicyChange: both a policy change and a gossip key
// rotation are vnet-wide changes, but only the policy change needs full
// maps; a rotation reaches the vnet's watchers as a delta with the keys.
func TestKeyRotationIsNoPolicyChange(t *testing.T) {
	s := setup(t)
	s.SetIndex(10)
	if _, err := s.SetPolicy(api.DefaultVNet, []byte(openDoc), "admin", t0, 0); err != nil {
		t.Fatal(err)
	}
	s.SetIndex(11)
	if _, err := s.RotateGossipKeys(api.DefaultVNet, seed(4), t0); err != nil {
		t.Fatal(err)
	}
	ids, global, ok := s.ChangesSince(api.DefaultVNet, 10)
	if !ok || !global || len(ids) != 0 {
		t.Fatalf("after a key rotation: ids %v, global %v, ok %v; want a vnet-wide delta", ids, global, ok)
	}
	if _, _, ok := s.ChangesSince(api.DefaultVNet, 9); ok {
		t.Fatal("a watcher from before the policy change got a delta")
	}
}

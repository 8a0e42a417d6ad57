package fsm

import (
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/logging"
)

func TestGate(t *testing.T) {
	current := state.Coordinator{FeatureLevel: FeatureLevel, Version: "v2"}
	old := state.Coordinator{} // a version from before feature levels
	named := state.Coordinator{Version: "v0.9"}
	for _, tt := range []struct {
		name    string
		t       MessageType
		members []string
		records map[string]state.Coordinator
		want    []string // the members named; nil: allowed
	}{
		{name: "every member current", t: DeregisterCoordinatorType, members: []string{"c1", "c2", "c3"},
			records: map[string]state.Coordinator{"c1": current, "c2": current, "c3": current}},
		{name: "one member before levels", t: DeregisterCoordinatorType, members: []string{"c1", "c2", "c3"},
			records: map[string]state.Coordinator{"c1": current, "c2": old, "c3": current}, want: []string{"c2"}},
		{name: "a named old version", t: DeregisterCoordinatorType, members: []string{"c1", "c2"},
			records: map[string]state.Coordinator{"c1": named, "c2": current}, want: []string{"c1"}},
		{name: "never registered counts as oldest", t: DeregisterCoordinatorType, members: []string{"c1", "c2", "c4"},
			records: map[string]state.Coordinator{"c1": current, "c2": current}, want: []string{"c4"}},
		{name: "several behind, sorted", t: DeregisterCoordinatorType, members: []string{"c3", "c1", "c2"},
			records: map[string]state.Coordinator{"c1": old, "c2": current, "c3": named}, want: []string{"c1", "c3"}},
		{name: "records of non-members do not count", t: DeregisterCoordinatorType, members: []string{"c1"},
			records: map[string]state.Coordinator{"c1": current, "gone": old}},
		{name: "a newer member passes", t: DeregisterCoordinatorType, members: []string{"c1", "c2"},
			records: map[string]state.Coordinator{"c1": current, "c2": {FeatureLevel: FeatureLevel + 1}}},
		{name: "ipv6 vnet with a level-2 member", t: CreateVNetIPv6Type, members: []string{"c1", "c2", "c3"},
			records: map[string]state.Coordinator{"c1": current, "c2": {FeatureLevel: 2, Version: "v1"}, "c3": current}, want: []string{"c2"}},
		{name: "ipv6 vnet with a level-3 member", t: CreateVNetIPv6Type, members: []string{"c1", "c2"},
			records: map[string]state.Coordinator{"c1": {FeatureLevel: 3}, "c2": current}, want: []string{"c1"}},
		{name: "ipv6 vnet with every member at level 4", t: CreateVNetIPv6Type, members: []string{"c1", "c2"},
			records: map[string]state.Coordinator{"c1": {FeatureLevel: 4}, "c2": current}},
		{name: "ungated type with old members", t: CreateTokenType, members: []string{"c1", "c2"},
			records: map[string]state.Coordinator{"c1": old}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := Gate(tt.t, tt.members, tt.records)
			if tt.want == nil {
				if e != nil {
					t.Fatalf("got %v; want allowed", e)
				}
				return
			}
			if e == nil || e.Code != api.CodeUpgradeRequired || e.Message == "" || !slices.Equal(e.Coordinators, tt.want) {
				t.Fatalf("got %+v; want %s naming %v", e, api.CodeUpgradeRequired, tt.want)
			}
		})
	}
}

// TestFeaturesKnown: every gated type is a command this version applies,
// at a level no higher than its own, listed once.
func TestFeaturesKnown(t *testing.T) {
	seen := map[MessageType]bool{}
	for _, f := range Features() {
		if _, ok := newBody[f.Type]; !ok || f.Level < 1 || f.Level > FeatureLevel || f.What == "" || seen[f.Type] {
			t.Errorf("feature %+v: want a known type, listed once, at a level from 1 to %d, with a name", f, FeatureLevel)
		}
		seen[f.Type] = true
		if Required(f.Type) != f {
			t.Errorf("Required(%d) = %+v; want %+v", f.Type, Required(f.Type), f)
		}
	}
	if Required(CreateTokenType).Level != 0 {
		t.Error("an ungated type needs a level")
	}
}

// TestCoordinatorRecordLevels: a registration as versions from before
// feature levels wrote it records level 0, one from a later version keeps
// its level (and a field this version does not know is ignored); the gate
// reads them from the applied state.
func TestCoordinatorRecordLevels(t *testing.T) {
	st := state.New()
	f := New(st, logging.Discard())
	entries := []string{
		`{"coordinator":{"name":"c1","raft_addr":"127.0.0.1:1","api_url":"https://127.0.0.1:2"}}`,
		`{"coordinator":{"name":"c2","raft_addr":"127.0.0.1:3","api_url":"https://127.0.0.1:4","feature_level":7,"version":"v9","future":{"x":1}}}`,
	}
	for i, body := range entries {
		data := append([]byte{byte(RegisterCoordinatorType)}, body...)
		if r := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*Result); r.Err != nil {
			t.Fatalf("entry %d: %v", i, r.Err)
		}
	}
	records := map[string]state.Coordinator{}
	st.Read(func(tb *state.Tables, _ uint64) {
		for n, c := range tb.Coordinators {
			records[n] = *c
		}
	})
	if c := records["c1"]; c.FeatureLevel != 0 || c.Version != "" {
		t.Fatalf("old record %+v; want level 0 and no version", c)
	}
	if c := records["c2"]; c.FeatureLevel != 7 || c.Version != "v9" {
		t.Fatalf("newer record %+v; want level 7, version v9", c)
	}
	e := Gate(DeregisterCoordinatorType, []string{"c1", "c2"}, records)
	if e == nil || !slices.Equal(e.Coordinators, []string{"c1"}) {
		t.Fatalf("gate: %+v; want c1 named", e)
	}
	t.Log(e.Message)
}

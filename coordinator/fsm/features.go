package fsm

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// The cluster-wide feature gate. Every coordinator records in its
// coordinator record (state.Coordinator) the feature level of its version:
// which command types it can apply. The leader writes a command type only
// when every member of the Raft configuration records at least the level
// that type needs (Gate), so an upgraded leader never writes an entry that
// a coordinator still on an older version would stop on. A member that
// records no level (a version from before levels, or one that has not
// registered yet) counts as level 0, the oldest.
//
// When a version adds a command type that older ones cannot apply, it
// raises FeatureLevel by one and lists the type in gates with that level
// (types flagged IgnorableFlag that older versions may skip need no gate,
// unless skipping them would leave a coordinator without state it serves).

// FeatureLevel is the feature level of this version.
const FeatureLevel = 4

// Feature is a command type that needs a feature level.
type Feature struct {
	Type MessageType
	// Level is the feature level a coordinator needs to apply Type.
	Level int
	// What names it for people: the command that writes it.
	What string
}

// gates lists every command type that needs more than level 0. Types from
// before level 1 are not listed: a level-0 record cannot tell which of
// them its coordinator knows, and versions that old are upgraded all at
// once (README, Upgrades).
var gates = []Feature{
	// Level 1: the first version that records its level.
	{Type: DeregisterCoordinatorType, Level: 1, What: "cluster remove"},
	// Level 2: agents leave on their own (a failed first start undoes its
	// join) and devices without the agent.
	{Type: LeavePeerType, Level: 2, What: "an agent undoing its join"},
	{Type: AddDeviceType, Level: 2, What: "peer export"},
	// Level 3: dead join tokens are pruned.
	{Type: PruneTokensType, Level: 3, What: "token prune"},
	// Level 4: IPv6 overlays (dual-stack vnets). Level 3 is another
	// feature's.
	{Type: CreateVNetIPv6Type, Level: 4, What: "IPv6 overlays (vnet create with one, and peers joining such a vnet)"},
}

// Features lists the gated command types, lowest level first.
func Features() []Feature { return slices.Clone(gates) }

// Required is the feature level command type t needs (0: any coordinator
// applies it) and what writes it.
func Required(t MessageType) Feature {
	for _, f := range gates {
		if f.Type == t {
			return f
		}
	}
	return Feature{Type: t}
}

// MemberLevel is the feature level of Raft member name as its record
// says: 0 when it records none or has no record.
func MemberLevel(name string, records map[string]state.Coordinator) int {
	return records[name].FeatureLevel
}

// Outdated lists, sorted, the members whose level is below level.
func Outdated(level int, members []string, records map[string]state.Coordinator) []string {
	var out []string
	for _, m := range members {
		if MemberLevel(m, records) < level {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Gate decides whether the leader may write command type t to a cluster
// whose Raft configuration holds members, given the coordinators' records:
// nil when every member's level is at least the level t needs, else an
// error with api.CodeUpgradeRequired naming the members that are behind.
func Gate(t MessageType, members []string, records map[string]state.Coordinator) *api.Error {
	f := Required(t)
	if f.Level == 0 {
		return nil
	}
	behind := Outdated(f.Level, members, records)
	if len(behind) == 0 {
		return nil
	}
	var who []string
	for _, m := range behind {
		c, registered := records[m]
		who = append(who, "coordinator "+m+" runs "+describeVersion(c, registered))
	}
	they := "it does"
	if len(who) > 1 {
		they = "they do"
	}
	e := api.Errorf(api.CodeUpgradeRequired, "%s: %s not know '%s', which needs feature level %d; upgrade every coordinator first",
		strings.Join(who, " and "), they, f.What, f.Level)
	e.Coordinators = behind
	return e
}

// describeVersion says what a coordinator with record c runs.
func describeVersion(c state.Coordinator, registered bool) string {
	switch {
	case !registered:
		return "a version not known yet (it has not registered; taken as feature level 0)"
	case c.Version == "" && c.FeatureLevel == 0:
		return "a version from before feature levels (level 0)"
	case c.Version == "":
		return fmt.Sprintf("an unnamed version (feature level %d)", c.FeatureLevel)
	default:
		return fmt.Sprintf("%s (feature level %d)", c.Version, c.FeatureLevel)
	}
}

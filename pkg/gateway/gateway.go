// Package gateway is the rule that decides which of the gateways announcing a
// prefix carries it. Peers apply it to their network map and health view to
// place AllowedIPs; coordinators apply it to the replicated state to answer
// `meshd route lookup` and `meshd route list`. Both call Choose, so given the
// same candidates they cannot disagree.
//
// The rule, in order of preference:
//
//  1. An unhealthy gateway never carries a route, drained or not.
//  2. A healthy gateway that is not drained is preferred to any drained one.
//  3. Among equals, the highest priority wins.
//  4. Ties are broken by name (byte-wise, lowest first), so every peer picks
//     the same gateway.
//
// Drained means an admin has taken the gateway out of service
// (`meshd route drain`): a drained gateway carries a route only when no
// undrained healthy gateway can. It is a last resort, not an outage, so a
// drained gateway that is the only healthy one still carries its routes.
//
// What healthy means is the caller's: peers combine gossip and hold-down,
// coordinators whether the agent holds its network-map watch. Whether a
// candidate is the caller itself is not this package's concern either.
package gateway

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Candidate is one gateway announcing a prefix.
type Candidate struct {
	Name     string
	Priority int
	// Healthy is the caller's view of whether the gateway can forward.
	Healthy bool
	// Offline, with Healthy false, says the gateway is not there at all
	// (coordinators: no coordinator hears from it), rather than there but
	// failing its health checks.
	Offline bool
	// Drained is set by an admin with `meshd route drain`.
	Drained bool
}

// State is what a gateway is doing for one route, in the one word every
// command shows: route list, route lookup, status, peer list.
type State string

// The states, from the route's point of view:
//
//	active     carries the route now (a drained gateway too, when no
//	           undrained one is healthy)
//	standby    healthy and undrained; takes over when the active one fails
//	drained    healthy, taken out of service by an admin (meshd route drain)
//	unhealthy  there, but failing its health checks (a zombie, a failed LAN
//	           check, held down after coming back)
//	offline    not there at all
const (
	Active    State = "active"
	Standby   State = "standby"
	Drained   State = "drained"
	Unhealthy State = "unhealthy"
	Offline   State = "offline"
)

// Status is one candidate's state for a route and why, in a phrase that
// does not repeat the state: "lower priority than gwa1(200)".
type Status struct {
	State  State
	Reason string
}

// String is the candidate as a reason lists it: "gwa1(200)".
func (c Candidate) String() string {
	return fmt.Sprintf("%s(%d)", c.Name, c.Priority)
}

// down is the state of a candidate that is not healthy.
func (c Candidate) down() State {
	if c.Offline {
		return Offline
	}
	return Unhealthy
}

// tier ranks what a candidate may do: 0 carries routes, 1 carries them only
// as a last resort, 2 never does.
func (c Candidate) tier() int {
	switch {
	case !c.Healthy:
		return 2
	case c.Drained:
		return 1
	}
	return 0
}

// Compare orders candidates by preference, the better one first: healthy
// and undrained, then healthy and drained, then unhealthy; within each, the
// higher priority, then the lower name. It is a cmp-style function for
// slices.SortFunc.
func Compare(a, b Candidate) int {
	if c := cmp.Compare(a.tier(), b.tier()); c != 0 {
		return c
	}
	if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// Choose returns the index in cands of the gateway that carries the prefix,
// or -1 when none can (no candidate is healthy), and why: a sentence that
// lists every candidate with its priority and state, best first, e.g.
// "highest-priority healthy gateway; candidates: gwa2(100) active,
// gwa1(200) offline". cands is not modified; its order does not matter.
func Choose(cands []Candidate) (active int, why string) {
	active, sts := Assess(cands)
	if len(cands) == 0 {
		return -1, "no gateway announces it"
	}
	order := sorted(cands)
	list := make([]string, len(order))
	for k, i := range order {
		list[k] = cands[i].String() + " " + string(sts[i].State)
	}
	lead := "no healthy gateway"
	if active >= 0 {
		lead = sts[active].Reason
	}
	return active, lead + "; candidates: " + strings.Join(list, ", ")
}

// sorted returns the indexes of cands, best first (Compare).
func sorted(cands []Candidate) []int {
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return Compare(cands[i], cands[j]) })
	return order
}

// Assess applies the rule to cands and returns the index of the active
// gateway (-1: none) and every candidate's state and reason, in cands'
// order. cands is not modified; its order does not matter.
func Assess(cands []Candidate) (active int, sts []Status) {
	sts = make([]Status, len(cands))
	if len(cands) == 0 {
		return -1, sts
	}
	order := sorted(cands)
	best := cands[order[0]]
	active = -1
	switch best.tier() {
	case 0:
		active = order[0]
		sts[active] = Status{Active, "highest-priority healthy gateway"}
	case 1:
		active = order[0]
		sts[active] = Status{Active, "drained, but no undrained gateway is healthy"}
	}
	for _, i := range order {
		if i == active {
			continue
		}
		c := cands[i]
		switch {
		case !c.Healthy && c.Drained:
			why := "failing its health checks (and drained)"
			if c.Offline {
				why = "not connected (and drained)"
			}
			sts[i] = Status{c.down(), why}
		case !c.Healthy && c.Offline:
			sts[i] = Status{Offline, "not connected"}
		case !c.Healthy:
			sts[i] = Status{Unhealthy, "failing its health checks"}
		case c.Drained:
			sts[i] = Status{Drained, "drained by an admin: carries the route only when no undrained gateway is healthy"}
		case cands[active].Priority == c.Priority:
			sts[i] = Status{Standby, fmt.Sprintf("same priority as %s, which comes first by name", cands[active].Name)}
		default:
			sts[i] = Status{Standby, fmt.Sprintf("lower priority than %s", cands[active])}
		}
	}
	return active, sts
}

// Summary is a gateway's state across the routes it announces, given its
// state for each: active when it carries any of them, else the first of
// offline, unhealthy, drained and standby that any has. With no routes it
// is "".
func Summary(states []State) State {
	for _, s := range []State{Active, Offline, Unhealthy, Drained, Standby} {
		if slices.Contains(states, s) {
			return s
		}
	}
	return ""
}

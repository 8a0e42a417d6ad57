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
	// Drained is set by an admin with `meshd route drain`.
	Drained bool
}

// State describes the candidate in one word (or two): "healthy", "drained"
// (healthy but drained), "unhealthy" or "unhealthy+drained".
func (c Candidate) State() string {
	switch {
	case c.Healthy && !c.Drained:
		return "healthy"
	case c.Healthy:
		return "drained"
	case c.Drained:
		return "unhealthy+drained"
	}
	return "unhealthy"
}

// String is the candidate as the reason shows it: "gwa1(200) healthy".
func (c Candidate) String() string {
	return fmt.Sprintf("%s(%d) %s", c.Name, c.Priority, c.State())
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
// "highest-priority healthy gateway; candidates: gwa2(100) healthy,
// gwa1(200) unhealthy". cands is not modified; its order does not matter.
func Choose(cands []Candidate) (active int, why string) {
	if len(cands) == 0 {
		return -1, "no gateway announces it"
	}
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return Compare(cands[i], cands[j]) })
	list := make([]string, len(order))
	for k, i := range order {
		list[k] = cands[i].String()
	}
	best := cands[order[0]]
	var lead string
	switch best.tier() {
	case 0:
		active, lead = order[0], "highest-priority healthy gateway"
	case 1:
		active, lead = order[0], "drained, but no undrained gateway is healthy"
	default:
		active, lead = -1, "no healthy gateway"
	}
	return active, lead + "; candidates: " + strings.Join(list, ", ")
}

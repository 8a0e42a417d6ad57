package gateway

import (
	"slices"
	"testing"
)

func up(name string, prio int) Candidate   { return Candidate{Name: name, Priority: prio, Healthy: true} }
func down(name string, prio int) Candidate { return Candidate{Name: name, Priority: prio} }
func drained(c Candidate) Candidate        { c.Drained = true; return c }

func TestChoose(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cands  []Candidate
		active string // "" for none
		why    string
	}{
		{"one healthy", []Candidate{up("gwa1", 100)}, "gwa1",
			"highest-priority healthy gateway; candidates: gwa1(100) active"},
		{"highest priority wins", []Candidate{up("gwa2", 100), up("gwa1", 200)}, "gwa1",
			"highest-priority healthy gateway; candidates: gwa1(200) active, gwa2(100) standby"},
		{"standby takes over", []Candidate{down("gwa1", 200), up("gwa2", 100)}, "gwa2",
			"highest-priority healthy gateway; candidates: gwa2(100) active, gwa1(200) unhealthy"},
		{"tie broken by name", []Candidate{up("gwb", 100), up("gwa", 100), up("gwc", 100)}, "gwa",
			"highest-priority healthy gateway; candidates: gwa(100) active, gwb(100) standby, gwc(100) standby"},
		{"tie among the healthy only", []Candidate{down("gwa", 100), up("gwc", 100), up("gwb", 100)}, "gwb",
			"highest-priority healthy gateway; candidates: gwb(100) active, gwc(100) standby, gwa(100) unhealthy"},
		{"drained alone carries it", []Candidate{drained(up("gwa1", 200))}, "gwa1",
			"drained, but no undrained gateway is healthy; candidates: gwa1(200) active"},
		{"drained yields to a healthy standby", []Candidate{drained(up("gwa1", 200)), up("gwa2", 100)}, "gwa2",
			"highest-priority healthy gateway; candidates: gwa2(100) active, gwa1(200) drained"},
		{"drained keeps it when the standby is unhealthy", []Candidate{drained(up("gwa1", 200)), down("gwa2", 100)}, "gwa1",
			"drained, but no undrained gateway is healthy; candidates: gwa1(200) active, gwa2(100) unhealthy"},
		{"drained unhealthy never carries it", []Candidate{drained(down("gwa1", 200)), down("gwa2", 100)}, "",
			"no healthy gateway; candidates: gwa1(200) unhealthy, gwa2(100) unhealthy"},
		{"drained unhealthy beside a drained healthy", []Candidate{drained(down("gwa1", 200)), drained(up("gwa2", 100))}, "gwa2",
			"drained, but no undrained gateway is healthy; candidates: gwa2(100) active, gwa1(200) unhealthy"},
		{"among drained the highest priority", []Candidate{drained(up("gwa2", 100)), drained(up("gwa1", 200)), down("gwa3", 300)}, "gwa1",
			"drained, but no undrained gateway is healthy; candidates: gwa1(200) active, gwa2(100) drained, gwa3(300) unhealthy"},
		{"among drained a tie goes by name", []Candidate{drained(up("gwb", 100)), drained(up("gwa", 100))}, "gwa",
			"drained, but no undrained gateway is healthy; candidates: gwa(100) active, gwb(100) drained"},
		{"all unhealthy", []Candidate{down("gwa1", 200), down("gwa2", 100)}, "",
			"no healthy gateway; candidates: gwa1(200) unhealthy, gwa2(100) unhealthy"},
		{"no candidates", nil, "", "no gateway announces it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.cands)
			i, why := Choose(tt.cands)
			got := ""
			if i >= 0 {
				got = tt.cands[i].Name
			}
			if got != tt.active || why != tt.why {
				t.Fatalf("got %q (%s); want %q (%s)", got, why, tt.active, tt.why)
			}
			if !slices.Equal(tt.cands, before) {
				t.Fatalf("got cands %v after Choose; want them unchanged %v", tt.cands, before)
			}
			// Every peer sees its candidates in its own order: the answer
			// must not depend on it.
			rev := slices.Clone(tt.cands)
			slices.Reverse(rev)
			j, rwhy := Choose(rev)
			rgot := ""
			if j >= 0 {
				rgot = rev[j].Name
			}
			if rgot != got || rwhy != why {
				t.Fatalf("reversed input: got %q (%s); want %q (%s)", rgot, rwhy, got, why)
			}
		})
	}
}

func TestCompareSortsActiveFirst(t *testing.T) {
	cands := []Candidate{down("gwd", 300), drained(up("gwc", 200)), up("gwb", 50), up("gwa", 50), drained(down("gwe", 100))}
	slices.SortFunc(cands, Compare)
	var got []string
	for _, c := range cands {
		got = append(got, c.Name)
	}
	if want := []string{"gwa", "gwb", "gwc", "gwd", "gwe"}; !slices.Equal(got, want) {
		t.Fatalf("got %v; want %v", got, want)
	}
	if i, _ := Choose(cands); i != 0 {
		t.Fatalf("got active %d after sorting with Compare; want 0", i)
	}
}

func offline(name string, prio int) Candidate {
	return Candidate{Name: name, Priority: prio, Offline: true}
}

// TestAssess: every candidate gets one of the five words and a reason;
// the words do not depend on the order of the candidates.
func TestAssess(t *testing.T) {
	for _, tt := range []struct {
		name  string
		cands []Candidate
		want  []Status // in cands' order
	}{
		{"active and standby", []Candidate{up("gwa2", 100), up("gwa1", 200)}, []Status{
			{Standby, "lower priority than gwa1(200)"},
			{Active, "highest-priority healthy gateway"}}},
		{"standby by name", []Candidate{up("gwb", 100), up("gwa", 100)}, []Status{
			{Standby, "same priority as gwa, which comes first by name"},
			{Active, "highest-priority healthy gateway"}}},
		{"drained with a standby taking over", []Candidate{drained(up("gwa1", 200)), up("gwa2", 100)}, []Status{
			{Drained, "drained by an admin: carries the route only when no undrained gateway is healthy"},
			{Active, "highest-priority healthy gateway"}}},
		{"drained as the last resort", []Candidate{drained(up("gwa1", 200)), offline("gwa2", 100)}, []Status{
			{Active, "drained, but no undrained gateway is healthy"},
			{Offline, "not connected"}}},
		{"unhealthy against offline", []Candidate{down("gwa1", 200), offline("gwa2", 100), up("gwa3", 50)}, []Status{
			{Unhealthy, "failing its health checks"},
			{Offline, "not connected"},
			{Active, "highest-priority healthy gateway"}}},
		{"offline and drained says offline", []Candidate{drained(offline("gwa1", 200)), drained(down("gwa2", 100))}, []Status{
			{Offline, "not connected (and drained)"},
			{Unhealthy, "failing its health checks (and drained)"}}},
		{"none", nil, []Status{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, got := Assess(tt.cands)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v; want %v", got, tt.want)
			}
			rev := slices.Clone(tt.cands)
			slices.Reverse(rev)
			_, rgot := Assess(rev)
			slices.Reverse(rgot)
			if !slices.Equal(rgot, got) {
				t.Fatalf("reversed input: got %v; want %v", rgot, got)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	for _, tt := range []struct {
		in   []State
		want State
	}{
		{nil, ""},
		{[]State{Standby}, Standby},
		{[]State{Standby, Active}, Active},
		{[]State{Drained, Standby}, Drained},
		{[]State{Unhealthy, Drained}, Unhealthy},
		{[]State{Offline, Unhealthy}, Offline},
		{[]State{Offline, Active}, Active},
	} {
		if got := Summary(tt.in); got != tt.want {
			t.Errorf("Summary(%v) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

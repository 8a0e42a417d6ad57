package chaos

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/meshd/meshd/pkg/api"
)

// table is a model state: key -> flag (a token's tag -> revoked; a peer's
// name -> false). It is never changed once made; every step makes a new one.
// h is the xor of the entries' hashes, so equal tables hash alike.
type table struct {
	m map[string]bool
	h uint64
}

func entryHash(k string, v bool) uint64 {
	f := fnv.New64a()
	f.Write([]byte(k))
	if v {
		f.Write([]byte{1})
	}
	return f.Sum64()
}

func newTable(m map[string]bool) table {
	t := table{m: maps.Clone(m)}
	if t.m == nil {
		t.m = map[string]bool{}
	}
	for k, v := range t.m {
		t.h ^= entryHash(k, v)
	}
	return t
}

// with returns t with k set to v.
func (t table) with(k string, v bool) table {
	n := table{m: maps.Clone(t.m), h: t.h}
	if old, ok := n.m[k]; ok {
		n.h ^= entryHash(k, old)
	}
	n.m[k] = v
	n.h ^= entryHash(k, v)
	return n
}

// without returns t without k.
func (t table) without(k string) table {
	old, ok := t.m[k]
	if !ok {
		return t
	}
	n := table{m: maps.Clone(t.m), h: t.h ^ entryHash(k, old)}
	delete(n.m, k)
	return n
}

func (t table) equal(o table) bool { return t.h == o.h && maps.Equal(t.m, o.m) }

func (t table) String() string {
	keys := slices.Sorted(maps.Keys(t.m))
	for i, k := range keys {
		if t.m[k] {
			keys[i] += "(revoked)"
		}
	}
	return "{" + strings.Join(keys, " ") + "}"
}

// tokenStep is the sequential specification of join tokens, by tag.
func tokenStep(t table, in Input, out Output) (bool, table) {
	_, present := t.m[in.Key]
	switch in.Kind {
	case CreateToken:
		switch out.Outcome {
		case OK:
			return !present, t.with(in.Key, false)
		case Failed:
			return true, t
		default:
			if present {
				return true, t
			}
			return true, t.with(in.Key, false)
		}
	case RevokeToken:
		switch out.Outcome {
		case OK:
			return present, t.with(in.Key, true)
		case Failed:
			if out.Code == api.CodeNotFound {
				return !present, t
			}
			return true, t
		default:
			if present {
				return true, t.with(in.Key, true)
			}
			return true, t
		}
	case ListTokens:
		if out.Outcome != OK {
			return true, t
		}
		if len(out.Tokens) != len(t.m) {
			return false, t
		}
		for _, e := range out.Tokens {
			if v, ok := t.m[e.Tag]; !ok || v != e.Revoked {
				return false, t
			}
		}
		return true, t
	}
	return false, t
}

// peerStep is the sequential specification of peers, by name.
func peerStep(t table, in Input, out Output) (bool, table) {
	_, present := t.m[in.Key]
	switch in.Kind {
	case JoinPeer:
		switch out.Outcome {
		case OK:
			return !present, t.with(in.Key, false)
		case Failed:
			return true, t
		default:
			if present {
				return true, t
			}
			return true, t.with(in.Key, false)
		}
	case RemovePeer:
		switch out.Outcome {
		case OK:
			return present, t.without(in.Key)
		case Failed:
			if out.Code == api.CodeNotFound {
				return !present, t
			}
			return true, t
		default:
			return true, t.without(in.Key)
		}
	case ListPeers:
		if out.Outcome != OK {
			return true, t
		}
		if len(out.Peers) != len(t.m) {
			return false, t
		}
		for _, name := range out.Peers {
			if _, ok := t.m[name]; !ok {
				return false, t
			}
		}
		return true, t
	}
	return false, t
}

// State is what the cluster holds as far as the models see: token tags
// (-> revoked) and peer names. A check starts from one (what a quiet read
// saw at the end of the previous round).
type State struct {
	Tokens map[string]bool
	Peers  map[string]bool
}

// Model is the porcupine model of the whole API the suite uses. Token and
// peer operations touch disjoint state, so the history is checked as two
// partitions (linearizability is local: the whole is linearizable when
// each part is).
func Model(init State) porcupine.Model {
	tokens, peers := newTable(init.Tokens), newTable(init.Peers)
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			var tok, peer []porcupine.Operation
			for _, op := range h {
				if op.Input.(Input).Kind.onTokens() {
					tok = append(tok, op)
				} else {
					peer = append(peer, op)
				}
			}
			return [][]porcupine.Operation{tok, peer}
		},
		Init: func() any { return part{} },
		Step: func(s, in, out any) (bool, any) {
			p := s.(part)
			i := in.(Input)
			if p.kind == none {
				if i.Kind.onTokens() {
					p = part{kind: tokensPart, t: tokens}
				} else {
					p = part{kind: peersPart, t: peers}
				}
			}
			var ok bool
			if p.kind == tokensPart {
				ok, p.t = tokenStep(p.t, i, out.(Output))
			} else {
				ok, p.t = peerStep(p.t, i, out.(Output))
			}
			return ok, p
		},
		Equal: func(a, b any) bool {
			x, y := a.(part), b.(part)
			return x.kind == y.kind && x.t.equal(y.t)
		},
		Hash: func(s any) uint64 { return s.(part).t.h },
		DescribeOperation: func(in, out any) string {
			i, o := in.(Input), out.(Output)
			switch {
			case o.Outcome == Failed:
				return fmt.Sprintf("%s(%s) -> %s", i.Kind, i.Key, o.Code)
			case i.Kind == ListTokens:
				return fmt.Sprintf("%s -> %v", i.Kind, o.Tokens)
			case i.Kind == ListPeers:
				return fmt.Sprintf("%s -> %v", i.Kind, o.Peers)
			}
			return fmt.Sprintf("%s(%s) -> %s", i.Kind, i.Key, o.Outcome)
		},
		DescribeState: func(s any) string { return s.(part).t.String() },
	}
}

type partKind uint8

const (
	none partKind = iota
	tokensPart
	peersPart
)

// part is the state of one partition; its table is taken from the initial
// state at the first step, when the partition's kind becomes known.
type part struct {
	kind partKind
	t    table
}

// Verdict is the result of checking one history.
type Verdict struct {
	Ops     int                   // operations checked
	Unknown int                   // of which with an unknown outcome
	Result  porcupine.CheckResult // Ok, Illegal or Unknown (timed out)
	Info    porcupine.LinearizationInfo
}

// Check checks ops from init, giving up after timeout (an Unknown result).
func Check(init State, ops []porcupine.Operation, timeout time.Duration) Verdict {
	res, info := porcupine.CheckOperationsVerbose(Model(init), ops, timeout)
	return Verdict{Ops: len(ops), Unknown: Counts(ops)[Unknown], Result: res, Info: info}
}

// SortTokens orders a token list by tag, as the model compares it.
func SortTokens(ts []TokenEntry) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Tag < ts[j].Tag })
}

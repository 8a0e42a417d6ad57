package chaos

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/meshd/meshd/pkg/api"
)

// cell is the model state of one key: a token tag or a peer name.
type cell uint8

const (
	cellAbsent  cell = iota
	cellLive         // a token not revoked; a peer
	cellRevoked      // a revoked token
)

func (c cell) String() string { return [...]string{"absent", "live", "revoked"}[c] }

// tokenStep is the sequential specification of one join token, by tag. A
// list has been cut down to the entry of this tag (none: absent).
func tokenStep(c cell, in Input, out Output) (bool, cell) {
	switch in.Kind {
	case CreateToken:
		switch out.Outcome {
		case OK:
			return c == cellAbsent, cellLive
		case Failed:
			return true, c
		default:
			if c == cellAbsent {
				return true, cellLive
			}
			return true, c
		}
	case RevokeToken:
		switch out.Outcome {
		case OK:
			return c == cellLive, cellRevoked
		case Failed:
			switch out.Code {
			case api.CodeNotFound:
				return c == cellAbsent, c
			case api.CodeAlreadyRevoked:
				return c == cellRevoked, c
			}
			return true, c
		default:
			if c != cellAbsent {
				return true, cellRevoked
			}
			return true, c
		}
	case ListTokens:
		if out.Outcome != OK {
			return true, c
		}
		switch len(out.Tokens) {
		case 0:
			return c == cellAbsent, c
		case 1:
			return c == map[bool]cell{false: cellLive, true: cellRevoked}[out.Tokens[0].Revoked], c
		}
		return false, c
	}
	return false, c
}

// peerStep is the sequential specification of one peer, by name. A list has
// been cut down to this name (none: absent).
func peerStep(c cell, in Input, out Output) (bool, cell) {
	switch in.Kind {
	case JoinPeer:
		switch out.Outcome {
		case OK:
			return c == cellAbsent, cellLive
		case Failed:
			return true, c
		default:
			return true, cellLive
		}
	case RemovePeer:
		switch out.Outcome {
		case OK:
			return c == cellLive, cellAbsent
		case Failed:
			if out.Code == api.CodeNotFound {
				return c == cellAbsent, c
			}
			return true, c
		default:
			return true, cellAbsent
		}
	case ListPeers:
		if out.Outcome != OK {
			return true, c
		}
		switch len(out.Peers) {
		case 0:
			return c == cellAbsent, c
		case 1:
			return c == cellLive, c
		}
		return false, c
	}
	return false, c
}

// State is what the cluster holds as far as the models see: token tags
// (-> revoked) and peer names. A check starts from one (what a quiet read
// saw at the end of the previous round).
type State struct {
	Tokens map[string]bool
	Peers  map[string]bool
}

// Model is the porcupine model of the whole API the suite uses, checked
// one key at a time: a token by its tag, a peer by its name. Each
// partition holds the writes on its key and every successful list cut down
// to that key (linearizability is local: the whole is linearizable when
// each object is, and a list is checked as one read of each key). Per-key
// states are tiny, so the search stays small however many operations a
// round has; what it gives up is a list's atomicity across keys.
func Model(init State) porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation { return partition(init, h) },
		Init:      func() any { return part{} },
		Step: func(s, in, out any) (bool, any) {
			p := s.(part)
			i := in.(Input)
			if !p.known {
				p = part{known: true, tokens: i.Kind.onTokens(), key: i.Key}
				if p.tokens {
					if rev, ok := init.Tokens[i.Key]; ok {
						p.c = map[bool]cell{false: cellLive, true: cellRevoked}[rev]
					}
				} else if _, ok := init.Peers[i.Key]; ok {
					p.c = cellLive
				}
			}
			var ok bool
			if p.tokens {
				ok, p.c = tokenStep(p.c, i, out.(Output))
			} else {
				ok, p.c = peerStep(p.c, i, out.(Output))
			}
			return ok, p
		},
		Equal: func(a, b any) bool { return a.(part) == b.(part) },
		Hash: func(s any) uint64 {
			p := s.(part)
			return uint64(p.c)
		},
		DescribeOperation: func(in, out any) string {
			i, o := in.(Input), out.(Output)
			switch {
			case o.Outcome == Failed:
				return fmt.Sprintf("%s(%s) -> %s", i.Kind, i.Key, o.Code)
			case i.Kind == ListTokens:
				return fmt.Sprintf("%s(%s) -> %v", i.Kind, i.Key, o.Tokens)
			case i.Kind == ListPeers:
				return fmt.Sprintf("%s(%s) -> %v", i.Kind, i.Key, o.Peers)
			}
			return fmt.Sprintf("%s(%s) -> %s", i.Kind, i.Key, o.Outcome)
		},
		DescribeState: func(s any) string {
			p := s.(part)
			return p.key + ": " + p.c.String()
		},
	}
}

// part is the state of one partition: its key and kind, taken at the
// first step (the partition's operations all name them), and its cell.
type part struct {
	known  bool
	tokens bool
	key    string
	c      cell
}

// partition splits h by key: every key of init, of a write or of a list's
// entries gets the writes on it and each list cut down to it.
func partition(init State, h []porcupine.Operation) [][]porcupine.Operation {
	type pkey struct {
		tokens bool
		key    string
	}
	byKey := map[pkey][]porcupine.Operation{}
	var order []pkey
	add := func(k pkey) {
		if _, ok := byKey[k]; !ok {
			byKey[k] = []porcupine.Operation{}
			order = append(order, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(init.Tokens)) {
		add(pkey{true, k})
	}
	for _, k := range slices.Sorted(maps.Keys(init.Peers)) {
		add(pkey{false, k})
	}
	for _, op := range h {
		in, out := op.Input.(Input), op.Output.(Output)
		switch in.Kind {
		case ListTokens:
			for _, e := range out.Tokens {
				add(pkey{true, e.Tag})
			}
		case ListPeers:
			for _, n := range out.Peers {
				add(pkey{false, n})
			}
		default:
			add(pkey{in.Kind.onTokens(), in.Key})
		}
	}
	for _, op := range h {
		in, out := op.Input.(Input), op.Output.(Output)
		if in.Kind.IsWrite() {
			k := pkey{in.Kind.onTokens(), in.Key}
			byKey[k] = append(byKey[k], op)
			continue
		}
		for _, k := range order {
			if k.tokens != in.Kind.onTokens() {
				continue
			}
			cut := op
			cut.Input = Input{Kind: in.Kind, Key: k.key}
			o := Output{Outcome: out.Outcome, Code: out.Code}
			if k.tokens {
				o.Tokens = []TokenEntry{}
				for _, e := range out.Tokens {
					if e.Tag == k.key {
						o.Tokens = append(o.Tokens, e)
					}
				}
			} else {
				o.Peers = []string{}
				for _, n := range out.Peers {
					if n == k.key {
						o.Peers = append(o.Peers, n)
					}
				}
			}
			cut.Output = o
			byKey[k] = append(byKey[k], cut)
		}
	}
	out := make([][]porcupine.Operation, 0, len(order))
	for _, k := range order {
		out = append(out, byKey[k])
	}
	return out
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

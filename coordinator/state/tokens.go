package state

import (
	"slices"
	"time"
)

// Dead reports whether a join token can admit no peer at now: revoked,
// expired or used up. A dead token only ever shows in token list until it
// is pruned.
func (t *Token) Dead(now time.Time) bool {
	return t.Revoked || !now.Before(t.Expires) || t.UsesLeft <= 0
}

// deadFor is how long a token has been dead at now, and whether it is.
// A token used up within JoinRetryWindow is not dead for this purpose: a
// join whose answer was lost may still be repeated with it, and an agent
// whose first start failed gives its use back (LeavePeer). When a version
// that did not record RevokedAt or LastUsed applied the change, the
// token's creation stands in for it.
func (t *Token) deadFor(now time.Time) (time.Duration, bool) {
	var since time.Time
	dead := false
	earliest := func(at time.Time) {
		if at.IsZero() {
			at = t.CreatedAt
		}
		if !dead || at.Before(since) {
			since = at
		}
		dead = true
	}
	if t.Revoked {
		earliest(t.RevokedAt)
	}
	if !now.Before(t.Expires) {
		earliest(t.Expires)
	}
	if t.UsesLeft <= 0 {
		used := t.LastUsed
		if used.IsZero() {
			used = t.CreatedAt
		}
		if now.Sub(used) >= JoinRetryWindow {
			earliest(used)
		}
	}
	if !dead {
		return 0, false
	}
	return max(now.Sub(since), 0), true
}

// DeadTokens lists, sorted, the join tokens that have been dead (revoked,
// expired or used up) for at least minAge at now: what `meshd token prune`
// (minAge 0) and the leader's chores (TokenRetention) remove. A token used
// up less than JoinRetryWindow ago is left for a join that may be
// repeated or given back.
func (t *Tables) DeadTokens(now time.Time, minAge time.Duration) []string {
	var out []string
	for id, tok := range t.Tokens {
		if age, dead := tok.deadFor(now); dead && age >= minAge {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// PruneTokens deletes the join tokens ids names that are dead at now and
// returns those it deleted, sorted. A token that has come back to life
// since ids were chosen (a use given back) or does not exist is skipped,
// so the outcome depends only on the state the command is applied to.
func (s *Store) PruneTokens(ids []string, now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for _, id := range ids {
		if t, ok := s.t.Tokens[id]; ok && t.Dead(now) {
			delete(s.t.Tokens, id)
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	return slices.Compact(gone)
}

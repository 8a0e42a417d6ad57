package state

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/policy"
)

// PolicyHistory is how many versions of a vnet's policy are kept, the one
// in force among them.
const PolicyHistory = 10

// MaxPolicyBytes bounds a stored policy document.
const MaxPolicyBytes = api.MaxPolicyBytes

// maxSetByLen bounds the name of whoever set a policy.
const maxSetByLen = 128

// PolicyVersion is one version of a vnet's access policy.
type PolicyVersion struct {
	Version int    `json:"version"`
	SetBy   string `json:"set_by"`
	// SetAt is the leader's clock when the version was written.
	SetAt time.Time `json:"set_at"`
	// Policy is the document as it was set (compacted JSON); empty when
	// this version removed the policy.
	Policy json.RawMessage `json:"policy,omitempty"`
	// Deleted: this version removed the policy; the vnet allows
	// everything inside it again.
	Deleted bool `json:"deleted,omitempty"`
}

// VNetPolicy is a vnet's access policy: its latest versions, oldest first.
// The last one is in force unless it is Deleted.
type VNetPolicy struct {
	Versions []PolicyVersion `json:"versions"`

	// parsed is the policy in force, decoded tolerantly (policy.Decode);
	// nil when there is none. Rebuilt from Versions on restore.
	parsed *policy.Policy
}

// Current is the latest version, or nil when the vnet never had a policy.
func (vp *VNetPolicy) Current() *PolicyVersion {
	if vp == nil || len(vp.Versions) == 0 {
		return nil
	}
	return &vp.Versions[len(vp.Versions)-1]
}

// decode sets parsed from the latest version. A document this version
// cannot read at all accepts nothing (policy.Decode's contract): an
// unreadable policy must not open the vnet.
func (vp *VNetPolicy) decode() {
	vp.parsed = nil
	cur := vp.Current()
	if cur == nil || cur.Deleted {
		return
	}
	p, err := policy.Decode(cur.Policy)
	if err != nil {
		p = &policy.Policy{Skipped: []string{err.Error()}}
	}
	vp.parsed = p
}

// Policy is the access policy in force in vnet, or nil when it has none
// (every peer of the vnet may reach every other). Callers must not modify
// it.
func (t *Tables) Policy(vnet string) *policy.Policy {
	if vp := t.Policies[vnet]; vp != nil {
		return vp.parsed
	}
	return nil
}

// PolicyVersion is the number of the latest version of vnet's policy
// (a deletion counts), 0 when it never had one.
func (t *Tables) PolicyVersion(vnet string) int {
	if cur := t.Policies[vnet].Current(); cur != nil {
		return cur.Version
	}
	return 0
}

// SetPolicy stores doc as the next version of vnet's policy and returns
// its number. prev is the version the caller validated doc against: if
// another version came first the write is refused, so a policy is never
// put in force over one its author did not see. The store does not judge
// the document beyond its size and JSON syntax: the API validates it
// strictly before the write, and replicas of every version must apply the
// same command the same way.
func (s *Store) SetPolicy(vnet string, doc []byte, by string, now time.Time, prev int) (int, error) {
	if len(doc) == 0 || len(doc) > MaxPolicyBytes {
		return 0, api.Errorf(api.CodeInvalidArgument, "a policy is 1 to %d bytes of JSON, not %d", MaxPolicyBytes, len(doc))
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, doc); err != nil {
		return 0, api.Errorf(api.CodeInvalidPolicy, "policy is not JSON: %v", err)
	}
	return s.putPolicy(vnet, PolicyVersion{SetBy: by, SetAt: now, Policy: buf.Bytes()}, prev)
}

// DeletePolicy removes vnet's policy (as a new version, so the history
// shows who removed it and when) and returns the version's number.
func (s *Store) DeletePolicy(vnet, by string, now time.Time, prev int) (int, error) {
	return s.putPolicy(vnet, PolicyVersion{SetBy: by, SetAt: now, Deleted: true}, prev)
}

func (s *Store) putPolicy(vnet string, v PolicyVersion, prev int) (int, error) {
	if v.SetBy == "" || len(v.SetBy) > maxSetByLen {
		return 0, api.Errorf(api.CodeInvalidArgument, "a policy version names who set it, in at most %d bytes", maxSetByLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.VNets[vnet]; !ok {
		return 0, api.Errorf(api.CodeNotFound, "vnet %q does not exist", vnet)
	}
	vp := s.t.Policies[vnet]
	cur := vp.Current()
	n := 0
	if cur != nil {
		n = cur.Version
	}
	if prev != n {
		return 0, api.Errorf(api.CodeConflict, "the policy of vnet %q changed meanwhile (now version %d, not %d); check it and try again", vnet, n, prev)
	}
	if v.Deleted && (cur == nil || cur.Deleted) {
		return 0, api.Errorf(api.CodeNotFound, "vnet %q has no policy", vnet)
	}
	if vp == nil {
		vp = &VNetPolicy{}
		s.t.Policies[vnet] = vp
	}
	v.Version = n + 1
	vp.Versions = append(vp.Versions, v)
	if len(vp.Versions) > PolicyHistory {
		vp.Versions = append([]PolicyVersion(nil), vp.Versions[len(vp.Versions)-PolicyHistory:]...)
	}
	vp.decode()
	// Who sees whom changes for the whole vnet: its watchers get full maps.
	s.recordPolicy(vnet)
	return v.Version, nil
}

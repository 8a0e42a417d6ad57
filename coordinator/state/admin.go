package state

import (
	"slices"
	"time"

	"github.com/meshd/meshd/pkg/api"
)

// BootstrapAdminID is the id and the name of the bootstrap admin
// credential: the one DATA_DIR/admin.token holds, derived from the cluster
// key. It needs no record to be valid; revoking it writes one.
const BootstrapAdminID = "admin"

// MaxAdminTokens bounds the admin credentials kept, revoked ones included.
const MaxAdminTokens = 1000

// AdminToken is a named admin credential; only the hash of its secret is
// kept. A full one may call every admin endpoint, a read-only one only
// those that change nothing. A revoked one stays listed (its name stays
// taken, so that who did what stays unambiguous).
//
// The bootstrap credential (Bootstrap, id and name BootstrapAdminID) has a
// record only once it is revoked; its secret follows from the cluster key.
type AdminToken struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	SecretHash string    `json:"secret_hash,omitempty"`
	ReadOnly   bool      `json:"read_only,omitempty"`
	Bootstrap  bool      `json:"bootstrap,omitempty"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	CreatedBy  string    `json:"created_by,omitempty"`
	Revoked    bool      `json:"revoked,omitempty"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	RevokedBy  string    `json:"revoked_by,omitempty"`
}

// AdminTokenSpec is an admin credential to create.
type AdminTokenSpec struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	SecretHash string `json:"secret_hash"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	// CreatedBy is the name of the admin credential that asked.
	CreatedBy string `json:"created_by,omitempty"`
}

// BootstrapAdminRevoked reports whether the bootstrap admin credential was
// revoked.
func (t *Tables) BootstrapAdminRevoked() bool {
	a, ok := t.AdminTokens[BootstrapAdminID]
	return ok && a.Bootstrap && a.Revoked
}

// AdminTokenByRef finds an admin credential by id or by name; the
// bootstrap one is found (as a record that is not stored) even before it
// has a record.
func (t *Tables) AdminTokenByRef(ref string) (*AdminToken, bool) {
	if a, ok := t.AdminTokens[ref]; ok {
		return a, true
	}
	for _, a := range t.AdminTokens {
		if a.Name == ref {
			return a, true
		}
	}
	if ref == BootstrapAdminID {
		return &AdminToken{ID: BootstrapAdminID, Name: BootstrapAdminID, Bootstrap: true}, true
	}
	return nil, false
}

// fullAdmins counts the admin credentials that are neither revoked nor
// read-only, the bootstrap one included.
func (t *Tables) fullAdmins() int {
	n := 0
	if !t.BootstrapAdminRevoked() {
		n++
	}
	for _, a := range t.AdminTokens {
		if !a.Bootstrap && !a.Revoked && !a.ReadOnly {
			n++
		}
	}
	return n
}

// CreateAdminToken stores a named admin credential. Names are DNS labels,
// unique among every credential ever created (revoked ones included) and
// BootstrapAdminID is the bootstrap credential's.
func (s *Store) CreateAdminToken(spec AdminTokenSpec, now time.Time) error {
	if err := ValidName("admin token", spec.Name); err != nil {
		return err
	}
	if spec.ID == "" || spec.ID == BootstrapAdminID || len(spec.SecretHash) != 64 {
		return api.Errorf(api.CodeInvalidArgument, "admin token id and secret hash are required")
	}
	if len(spec.CreatedBy) > maxSetByLen {
		return api.Errorf(api.CodeInvalidArgument, "created_by is longer than %d bytes", maxSetByLen)
	}
	if spec.Name == BootstrapAdminID {
		return api.Errorf(api.CodeConflict, "admin token name %q is the bootstrap credential's; choose another", spec.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.t.AdminTokens) >= MaxAdminTokens {
		return api.Errorf(api.CodeExhausted, "the cluster keeps at most %d admin tokens, revoked ones included", MaxAdminTokens)
	}
	if _, ok := s.t.AdminTokens[spec.ID]; ok {
		return api.Errorf(api.CodeConflict, "admin token id %q already exists", spec.ID)
	}
	for _, a := range s.t.AdminTokens {
		if a.Name == spec.Name {
			state := "exists"
			if a.Revoked {
				state = "was revoked; names are not reused, so that who did what stays clear"
			}
			return api.Errorf(api.CodeConflict, "admin token %q already %s", spec.Name, state)
		}
	}
	s.t.AdminTokens[spec.ID] = &AdminToken{
		ID: spec.ID, Name: spec.Name, SecretHash: spec.SecretHash, ReadOnly: spec.ReadOnly,
		CreatedAt: now, CreatedBy: spec.CreatedBy,
	}
	return nil
}

// RevokeAdminToken revokes the admin credential with id or name ref, the
// bootstrap one included, unless it is the last full (not read-only)
// credential left: the cluster would have no one left to administer it.
// Revoking a revoked credential is refused with api.CodeAlreadyRevoked
// and changes nothing. It returns the revoked credential's id.
func (s *Store) RevokeAdminToken(ref, by string, now time.Time) (string, error) {
	if len(by) > maxSetByLen {
		return "", api.Errorf(api.CodeInvalidArgument, "revoked_by is longer than %d bytes", maxSetByLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.t.AdminTokenByRef(ref)
	if !ok {
		return "", api.Errorf(api.CodeNotFound, "admin token %q does not exist", ref)
	}
	if a.Revoked {
		return a.ID, api.Errorf(api.CodeAlreadyRevoked, "admin token %q is revoked already; nothing changed", a.Name)
	}
	if !a.ReadOnly && s.t.fullAdmins() <= 1 {
		return "", api.Errorf(api.CodeConflict, "admin token %q is the last full admin credential; create another (meshd admin token create NAME) before revoking it", a.Name)
	}
	if a.Bootstrap {
		a = &AdminToken{ID: BootstrapAdminID, Name: BootstrapAdminID, Bootstrap: true}
		s.t.AdminTokens[BootstrapAdminID] = a
	}
	a.Revoked, a.RevokedAt, a.RevokedBy = true, now, by
	return a.ID, nil
}

// SortedAdminTokens lists the admin credentials, the bootstrap one first
// (with a record made up while it has none), then by creation time and id.
func (t *Tables) SortedAdminTokens() []*AdminToken {
	out := make([]*AdminToken, 0, len(t.AdminTokens)+1)
	if _, ok := t.AdminTokens[BootstrapAdminID]; !ok {
		out = append(out, &AdminToken{ID: BootstrapAdminID, Name: BootstrapAdminID, Bootstrap: true})
	}
	for _, a := range t.AdminTokens {
		out = append(out, a)
	}
	slices.SortStableFunc(out, func(a, b *AdminToken) int {
		switch {
		case a.Bootstrap != b.Bootstrap:
			if a.Bootstrap {
				return -1
			}
			return 1
		case !a.CreatedAt.Equal(b.CreatedAt):
			return a.CreatedAt.Compare(b.CreatedAt)
		}
		return cmpString(a.ID, b.ID)
	})
	return out
}

package api

import "regexp"

// nameRE is a DNS label in lower case: the form of vnet, peer, admin token
// and coordinator names.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName checks a vnet, peer or other object name (kind says which, for
// the message): a DNS label of 1 to 63 lower-case letters, digits and
// dashes. The coordinators apply it to what they store and the agent to
// --name before it joins, so both refuse the same names.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return Errorf(CodeInvalidName, "%s name %q is invalid: use 1 to 63 lower-case letters, digits and dashes, not starting or ending with a dash", kind, name)
	}
	return nil
}

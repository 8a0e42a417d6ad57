// Package policy is the access policy of a vnet: its JSON form, its
// validation, and the rule both planes apply. Coordinators use it to
// validate `meshd policy set`, to answer `meshd policy test` and to give
// each peer only the keys of the peers it may talk to (Visibility); peers
// use it to build the packet filter that judges what they receive
// (ReceiverRules, compiled by package filter). Both call the same code, so
// they cannot disagree.
//
// # Semantics
//
//   - No policy (a nil *Policy) allows everything inside the vnet.
//   - Once a policy exists, a flow passes only when a rule accepts it;
//     everything else is denied. There is only one action, "accept", so
//     rules never conflict: overlapping rules add up, any accept wins, and
//     the order of the rules changes nothing but which rule Match names.
//   - A rule accepts a flow from any of its src to any of its dst, over the
//     protocols in proto (tcp, udp and icmp when proto is left out), to the
//     ports the dst entry lists. ICMP has no ports: a dst entry admits ICMP
//     only when it opens every port ("tag:db:*"), so a rule that opens
//     port 5432 does not open ping. ICMPv6 is icmp. Other IP protocols are
//     denied.
//   - Selectors: "*" is any address; "tag:NAME" and "peer:NAME" are the
//     overlay addresses of the peers carrying that tag or of that peer; a
//     CIDR (or one address) is the addresses inside it. A host on a
//     gateway's LAN is no peer: only "*" and CIDRs select it, as source or
//     destination, and "peer:gw1" selects the gateway itself, not its LAN.
//   - Replies to an accepted flow pass (package filter tracks flows); a
//     flow is judged in the direction it was opened.
//   - Visibility: a peer sees (gets the key and endpoints of) every peer it
//     may reach or be reached by over any port; a gateway counts as
//     reached when a rule names addresses behind it (a destination CIDR
//     that overlaps a subnet it announces) and as reaching when a source
//     CIDR overlaps them.
//
// # Validation
//
// Parse reads a policy as a user wrote it and refuses unknown fields,
// unknown selector kinds, bad ports, CIDRs with host bits set, and
// oversized documents. Check looks every tag and peer up in the vnet's
// Directory and runs the policy's own tests. Each problem is an *Error
// that names the rule ("acls[2]" and its name) or test, the field and the
// entry, and wraps a sentinel (ErrBadPorts, ErrUnknownTag, ErrTestFailed,
// ...) for errors.Is. Decode reads a stored policy, perhaps written by a
// newer version: it ignores unknown fields and leaves out the entries it
// cannot read, which only ever accepts less.
//
// A policy refers to peers by name and to tags; a peer or tag that
// disappears after the policy was set matches nothing, and the policy
// keeps working for the rest.
//
// See README.md beside this file for the JSON format with an example.
package policy

// Package filter is the receiving side's stateful packet filter: the
// data-plane half of a vnet's policy. Every peer runs one over the raw IP
// packets (IPv4 and IPv6) that cross its WireGuard interface.
//
// In judges what arrives through the mesh, to be delivered to the peer or
// forwarded by a gateway into its LAN; Out notes what leaves into the
// mesh. A packet that In receives passes when it belongs to a tracked flow
// (replies to a flow either side opened), or when the Ruleset admits it,
// which starts a tracked flow. Flows are keyed by protocol, addresses and
// ports (the identifier for an ICMP echo); ICMP errors pass when the
// packet they quote belongs to a tracked flow; fragments after the first
// pass, the first one having been judged. Anything else is dropped.
//
// A Ruleset is compiled from policy.ReceiverRules: the source address of a
// packet is authenticated by WireGuard's cryptokey routing, so mapping it
// to a peer (and so to its tags) is one lookup in a table built from the
// network map. A nil Ruleset is "no policy": everything passes, and flows
// are still tracked so that the first policy keeps those it accepts.
//
// SetRules swaps the Ruleset atomically. Flows opened inbound under an
// older Ruleset are judged again at their next packet: kept if the new
// rules admit them, cut in both directions otherwise. Flows the peer
// opened itself are the far side's to judge and are kept.
//
// Idle flows expire (per protocol, see Config; the clock is injectable),
// and the table is bounded by Config.MaxFlows: a full table drops its
// expired flows, or else the idlest of a few. The hot path, a packet of an
// established flow, takes a read lock on one of 64 shards, makes no
// allocation and costs about 100 ns (60 ns a packet through InBatch,
// which reads the clock once per batch) with a 100-rule policy.
package filter

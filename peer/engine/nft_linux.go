package engine

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/pkg/policy"
)

// nftFilter enforces one peer's receiver rules with nftables on what
// arrives through one interface: the kernel engine's counterpart of the
// userspace engine's filteredTUN, with the kernel's connection tracking
// in place of pkg/policy/filter's flow table. It owns one table, family
// inet, named PolicyTableName(dev); with rules of generation GEN:
//
//	table inet meshd-policy-DEV {
//		counter dropped
//		chain input   { type filter hook input priority filter; policy accept;   iifname "DEV" jump policy }
//		chain forward { type filter hook forward priority filter; policy accept; iifname "DEV" jump policy }
//		chain policy {
//			ct direction reply accept              # replies to flows this side (or its LAN) opened
//			ct mark & 0xff000000 == GEN<<24 accept # flows the rules in force admitted
//			jump rules_GEN
//			counter name "dropped" drop
//		}
//		chain rules_GEN {
//			ip saddr ... th dport ... goto admit_GEN # per AddrRule, family and kind (nftRules)
//		}
//		chain admit_GEN {
//			ct mark set ct mark & 0x00ffffff | GEN<<24 # admitted by this generation of rules
//			accept
//		}
//	}
//
// The top byte of the connection mark holds the generation of the rules
// that last admitted a flow opened from the mesh. Every change of rules
// gets a new generation (1 to 255, then 1 again), so the next packet of
// each such flow is judged again: kept if the new rules admit it, dropped
// otherwise. That is the userspace filter's behaviour: a policy change
// never cuts a flow the new rules accept, and does cut one they refuse.
// (A flow silent through exactly 255 changes would skip one judgement.)
// The other 24 bits of the mark are left to whoever else uses it.
//
// With no policy (nil rules) the policy chain holds one rule that passes
// everything; it reads the connection state, which keeps the kernel
// tracking connections in this network namespace, so that the first
// policy keeps the established flows it admits.
//
// A change takes two netlink batches, each applied atomically by the
// kernel. The first adds the chains of the new generation, which nothing
// jumps to yet; the second rewrites the policy chain to jump there and
// deletes the previous generation's chains. Packets see the old rules or
// the new, never a mix, and never an interval set the kernel is still
// building: a lookup in an interval set created in the same batch that
// puts it to use misses for a moment after the commit, which would drop
// packets the new rules admit. A table built whole (the first time, or
// after it was deleted under the filter) is one batch, with that moment
// failing closed.
type nftFilter struct {
	dev   string
	table *nftables.Table
	log   *slog.Logger

	mu      sync.Mutex
	ns      netns.NsHandle // guarded by mu: network namespace of the table; closed by close
	built   bool           // guarded by mu: the table in the kernel is as this filter last made it
	owned   bool           // guarded by mu: this filter has made the table (its counter is ours to carry)
	current []nftRule      // guarded by mu: the rules installed (nil: no policy); meaningful when built
	gen     uint32         // guarded by mu: generation of the last rules installed, 1..255
	base    uint64         // guarded by mu: drops counted by tables this filter has since replaced
	last    uint64         // guarded by mu: the counter as last read
}

// Names and values in the policy table.
const (
	policyChain    = "policy"
	droppedCounter = "dropped"
	ctMarkGenMask  = 0xff000000 // the connection mark's bits that hold the generation
	ctMarkGenShift = 24
	ctDirReply     = 1 // IP_CT_DIR_REPLY
	icmpEchoReq    = 8
	icmp6EchoReq   = 128
)

// newNFTFilter returns a filter for packets arriving through dev, in the
// network namespace of the calling thread. It changes nothing until set.
func newNFTFilter(dev string, log *slog.Logger) (*nftFilter, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("policy filter on %s: network namespace: %w", dev, err)
	}
	return &nftFilter{
		dev:   dev,
		table: &nftables.Table{Family: nftables.TableFamilyINet, Name: PolicyTableName(dev)},
		log:   log,
		ns:    ns,
		gen:   1 + rand.Uint32N(255), // unlike a restarted meshd's, most likely
	}, nil
}

func (f *nftFilter) conn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithNetNSFd(int(f.ns)))
}

// set installs rules (nil: no policy, everything passes; empty: nothing
// new passes). The same rules again change nothing. After an error the
// kernel keeps rules that were in force (old or new), and the next call
// rebuilds the table whole.
func (f *nftFilter) set(rules []policy.AddrRule) error {
	want := nftRules(rules)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ns.IsOpen() {
		return fmt.Errorf("policy filter on %s: closed", f.dev)
	}
	if f.built && (want == nil) == (f.current == nil) && slices.EqualFunc(want, f.current, func(a, b nftRule) bool { return a.String() == b.String() }) {
		return nil
	}
	gen := f.gen
	if want != nil {
		gen = gen%255 + 1
	}
	var err error
	if f.built {
		err = f.update(want, gen)
	}
	if !f.built || err != nil {
		// First time, or the table may have been deleted under us.
		err = f.build(want, gen)
	}
	if err != nil {
		f.built = false
		return fmt.Errorf("policy filter: nftables table inet %s: %w", f.table.Name, err)
	}
	f.built, f.owned, f.current, f.gen = true, true, want, gen
	return nil
}

func (f *nftFilter) chains(gen uint32) (policyCh, rulesCh, admitCh *nftables.Chain) {
	return &nftables.Chain{Name: policyChain, Table: f.table},
		&nftables.Chain{Name: rulesChain(gen), Table: f.table},
		&nftables.Chain{Name: admitChain(gen), Table: f.table}
}

// update replaces the rules of the table in place: the chains of
// generation gen first, then, in a second batch, the switch to them.
func (f *nftFilter) update(rules []nftRule, gen uint32) error {
	policyCh, rulesCh, admitCh := f.chains(gen)
	if rules != nil {
		c, err := f.conn()
		if err != nil {
			return err
		}
		if err := f.addGen(c, rules, gen, rulesCh, admitCh); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return err
		}
	}
	c, err := f.conn()
	if err != nil {
		return err
	}
	c.FlushChain(policyCh)
	f.addPolicy(c, policyCh, rules, gen)
	if f.current != nil {
		_, oldRules, oldAdmit := f.chains(f.gen)
		c.DelChain(oldRules) // with its rules; they hold the only reference to oldAdmit
		c.DelChain(oldAdmit)
	}
	return c.Flush()
}

// build makes the table anew in one batch, deleting the one in place.
func (f *nftFilter) build(rules []nftRule, gen uint32) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	var carry uint64 // the count of the table this batch replaces
	if f.owned {
		carry = f.readLocked(c)
	}
	t := f.table
	// Adding, then deleting, removes the table whether or not it existed.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	c.AddObj(&nftables.CounterObj{Table: t, Name: droppedCounter})
	policyCh, rulesCh, admitCh := f.chains(gen)
	if rules != nil {
		if err := f.addGen(c, rules, gen, rulesCh, admitCh); err != nil {
			return err
		}
	}
	c.AddChain(policyCh)
	f.addPolicy(c, policyCh, rules, gen)
	accept := nftables.ChainPolicyAccept
	for _, hook := range []struct {
		name string
		num  *nftables.ChainHook
	}{{"input", nftables.ChainHookInput}, {"forward", nftables.ChainHookForward}} {
		ch := c.AddChain(&nftables.Chain{Name: hook.name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook.num, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(f.dev)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: policyChain},
		}})
	}
	if err := c.Flush(); err != nil {
		return err
	}
	f.base, f.last = f.base+carry, 0
	return nil
}

// addGen adds the chains of one generation of rules to c's batch.
func (f *nftFilter) addGen(c *nftables.Conn, rules []nftRule, gen uint32, rulesCh, admitCh *nftables.Chain) error {
	c.AddChain(admitCh)
	for _, r := range admitRules(gen) {
		r.Table, r.Chain = f.table, admitCh
		c.AddRule(&r)
	}
	c.AddChain(rulesCh)
	for _, r := range acceptRules(rules, gen) {
		r.Table, r.Chain = f.table, rulesCh
		for _, s := range r.sets {
			s.set.Table = f.table
			if err := c.AddSet(s.set, s.elems); err != nil {
				return err
			}
		}
		c.AddRule(&r.Rule)
	}
	return nil
}

func (f *nftFilter) addPolicy(c *nftables.Conn, policyCh *nftables.Chain, rules []nftRule, gen uint32) {
	for _, r := range policyRules(rules, gen) {
		r.Table, r.Chain = f.table, policyCh
		c.AddRule(&r)
	}
}

// close deletes the table and releases the namespace; the filter is
// unusable afterwards.
func (f *nftFilter) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ns.IsOpen() {
		return nil
	}
	defer func() {
		f.ns.Close()
		f.ns = netns.None()
	}()
	c, err := f.conn()
	if err != nil {
		return err
	}
	var carry uint64
	if f.owned {
		carry = f.readLocked(c)
	}
	c.AddTable(f.table)
	c.DelTable(f.table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("policy filter: delete nftables table inet %s: %w", f.table.Name, err)
	}
	f.built, f.owned, f.base, f.last = false, false, f.base+carry, 0
	return nil
}

// dropped counts the packets the policy dropped since the filter was made.
func (f *nftFilter) dropped() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.owned || !f.ns.IsOpen() {
		return f.base
	}
	if c, err := f.conn(); err == nil {
		f.readLocked(c)
	}
	return f.base + f.last
}

// readLocked reads the drop counter of the installed table into f.last and
// returns it; a counter that cannot be read keeps its last value.
func (f *nftFilter) readLocked(c *nftables.Conn) uint64 {
	o, err := c.GetObject(&nftables.CounterObj{Table: f.table, Name: droppedCounter})
	if err != nil {
		f.log.Debug("read policy drop counter", "err", err)
		return f.last
	}
	switch o := o.(type) {
	case *nftables.CounterObj:
		f.last = o.Packets
	case *nftables.NamedObj:
		if ctr, ok := o.Obj.(*expr.Counter); ok {
			f.last = ctr.Packets
		}
	}
	return f.last
}

// nftRuleSets is a rule with the anonymous sets it looks up, which must be
// added in the same batch before it.
type nftRuleSets struct {
	nftables.Rule
	sets []anonSet
}

type anonSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

// policyRules is the policy chain for rules of generation gen (nil rules:
// no policy). Tables and chains are left for the caller to fill in.
func policyRules(rules []nftRule, gen uint32) []nftables.Rule {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	if rules == nil {
		states := expr.CtStateBitNEW | expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED | expr.CtStateBitUNTRACKED
		return []nftables.Rule{{Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(states), Xor: native32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
			accept,
		}, UserData: comment("no policy: everything passes, connections are tracked")}}
	}
	return []nftables.Rule{
		{Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}},
			accept,
		}, UserData: comment("replies to flows opened from this side")},
		{Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(ctMarkGenMask), Xor: native32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(gen << ctMarkGenShift)},
			accept,
		}, UserData: comment("flows the rules in force admitted")},
		{Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: rulesChain(gen)}}},
		{Exprs: []expr.Any{
			&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: droppedCounter},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}},
	}
}

// acceptRules is the rules chain of generation gen: each rule goes to the
// admit chain.
func acceptRules(rules []nftRule, gen uint32) []nftRuleSets {
	var out []nftRuleSets
	var setID uint32
	for _, r := range rules {
		out = append(out, ruleExprs(r, admitChain(gen), &setID))
	}
	return out
}

// admitRules is the admit chain of generation gen: mark the flow as
// admitted by gen (a packet without a connection skips that), and accept.
func admitRules(gen uint32) []nftables.Rule {
	return []nftables.Rule{
		{Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^uint32(ctMarkGenMask)), Xor: native32(gen << ctMarkGenShift)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}},
		{Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}},
	}
}

// The chains of one generation of rules.
func rulesChain(gen uint32) string { return fmt.Sprintf("rules_%d", gen) }
func admitChain(gen uint32) string { return fmt.Sprintf("admit_%d", gen) }

// ruleExprs is r in nftables expressions, going to chain admit; *setID
// numbers the anonymous sets within the batch.
func ruleExprs(r nftRule, admit string, setID *uint32) nftRuleSets {
	out := nftRuleSets{Rule: nftables.Rule{UserData: comment(r.comment())}}
	newSet := func(key nftables.SetDatatype, interval bool, elems []nftables.SetElement) *expr.Lookup {
		*setID++
		s := &nftables.Set{ID: *setID, Name: "__set%d", Anonymous: true, Constant: true, Interval: interval, KeyType: key}
		out.sets = append(out.sets, anonSet{s, elems})
		return &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}
	}
	e := []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}}
	proto, addrLen, srcOff, dstOff, addrType := byte(unix.NFPROTO_IPV4), uint32(4), uint32(12), uint32(16), nftables.TypeIPAddr
	if r.v6 {
		proto, addrLen, srcOff, dstOff, addrType = unix.NFPROTO_IPV6, 16, 8, 24, nftables.TypeIP6Addr
	}
	e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}})
	for _, side := range []struct {
		off    uint32
		ranges []addrRange
	}{{srcOff, r.src}, {dstOff, r.dst}} {
		if side.ranges == nil {
			continue
		}
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: side.off, Len: addrLen})
		if rg := side.ranges; len(rg) == 1 && rg[0].first == rg[0].last {
			e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: rg[0].first.AsSlice()})
		} else {
			e = append(e, newSet(addrType, true, addrElems(rg)))
		}
	}
	e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
	if len(r.proto) == 1 {
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(r.proto[0])}})
	} else {
		var elems []nftables.SetElement
		for _, p := range r.proto {
			elems = append(elems, nftables.SetElement{Key: []byte{byte(p)}})
		}
		e = append(e, newSet(nftables.TypeInetProto, false, elems))
	}
	switch {
	case r.proto[0] == policy.ICMP || r.proto[0] == policy.ICMPv6:
		typ := byte(icmpEchoReq)
		if r.v6 {
			typ = icmp6EchoReq
		}
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}})
	case r.ports != nil:
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if len(r.ports) == 1 && r.ports[0].First == r.ports[0].Last {
			e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(r.ports[0].First)})
		} else {
			e = append(e, newSet(nftables.TypeInetService, true, portElems(r.ports)))
		}
	}
	out.Exprs = append(e, &expr.Verdict{Kind: expr.VerdictGoto, Chain: admit})
	return out
}

// addrElems are the elements of an interval set holding rs (sorted and
// disjoint): each range is its first address and, flagged as an interval
// end, the address after its last (none after the highest address). Like
// nft, an interval end at zero opens the set when the first range does
// not start there.
func addrElems(rs []addrRange) []nftables.SetElement {
	var out []nftables.SetElement
	if !rs[0].first.IsUnspecified() {
		out = append(out, nftables.SetElement{Key: make([]byte, rs[0].first.BitLen()/8), IntervalEnd: true})
	}
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.first.AsSlice()})
		if next := r.last.Next(); next.IsValid() {
			out = append(out, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// portElems is addrElems for ports.
func portElems(ps policy.PortSet) []nftables.SetElement {
	var out []nftables.SetElement
	if ps[0].First != 0 {
		out = append(out, nftables.SetElement{Key: be16(0), IntervalEnd: true})
	}
	for _, r := range ps {
		out = append(out, nftables.SetElement{Key: be16(r.First)})
		if r.Last != 65535 {
			out = append(out, nftables.SetElement{Key: be16(r.Last + 1), IntervalEnd: true})
		}
	}
	return out
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// native32 is v as the kernel keeps marks and states in registers.
func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// ifname is dev as meta iifname loads it: NUL-padded to IFNAMSIZ.
func ifname(dev string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, dev)
	return b
}

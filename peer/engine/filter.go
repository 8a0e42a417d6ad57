package engine

import (
	"sync"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/meshd/meshd/pkg/policy"
	"github.com/meshd/meshd/pkg/policy/filter"
)

// Filterer is an engine that enforces the vnet's policy on what reaches
// this host through the mesh (and, on a gateway, what it forwards into its
// LAN): rules are this peer's receiver rules (policy.ReceiverRules); nil
// (no policy) lets everything pass, an empty list nothing new. Replies to
// an accepted flow always pass, and flows are tracked with or without a
// policy, so a policy that arrives later keeps the established flows it
// accepts.
type Filterer interface {
	SetPolicyRules(rules []policy.AddrRule)
	// PolicyDropped counts the packets the policy dropped.
	PolicyDropped() uint64
}

// filteredTUN is the userspace engine's TUN device with the policy filter
// in the packet path. It sits there, between wireguard-go and the TUN,
// because that is the one place every packet passes in the clear exactly
// once, already authenticated as coming from the peer whose key decrypted
// it (WireGuard drops a packet whose inner source is not in that peer's
// allowed IPs), and before the kernel delivers it to a local socket or
// forwards it into a gateway's LAN. Write is what arrives from the mesh:
// judged by the receiver's rules (In). Read is what this host sends into
// the mesh: tracked (Out), so that replies to it pass.
type filteredTUN struct {
	tun.Device
	f       *filter.Filter
	scratch sync.Pool // *filterScratch; Write runs on several goroutines
}

type filterScratch struct {
	verdicts []filter.Verdict
	pkts     [][]byte
}

func newFilteredTUN(dev tun.Device) *filteredTUN {
	t := &filteredTUN{Device: dev, f: filter.New(filter.Config{})}
	t.scratch.New = func() any { return &filterScratch{} }
	return t
}

func (t *filteredTUN) get(n int) *filterScratch {
	s := t.scratch.Get().(*filterScratch)
	if cap(s.verdicts) < n {
		s.verdicts = make([]filter.Verdict, n)
		s.pkts = make([][]byte, n)
	}
	s.verdicts, s.pkts = s.verdicts[:n], s.pkts[:n]
	return s
}

// Read notes what this host sends into the mesh; a packet of a flow a new
// policy cut is dropped (its size becomes 0, which wireguard-go skips).
func (t *filteredTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	if n <= 0 {
		return n, err
	}
	s := t.get(n)
	for i := range n {
		s.pkts[i] = bufs[i][:offset+sizes[i]]
	}
	t.f.OutBatch(s.pkts, offset, s.verdicts)
	for i, v := range s.verdicts {
		if v != filter.Accept {
			sizes[i] = 0
		}
	}
	clear(s.pkts)
	t.scratch.Put(s)
	return n, err
}

// Write delivers what the policy accepts of what arrived from the mesh.
func (t *filteredTUN) Write(bufs [][]byte, offset int) (int, error) {
	s := t.get(len(bufs))
	t.f.InBatch(bufs, offset, s.verdicts)
	kept := s.pkts[:0]
	for i, v := range s.verdicts {
		if v == filter.Accept {
			kept = append(kept, bufs[i])
		}
	}
	var err error
	if len(kept) > 0 {
		_, err = t.Device.Write(kept, offset)
	}
	clear(s.pkts[:cap(s.pkts)])
	t.scratch.Put(s)
	if err != nil {
		return 0, err
	}
	return len(bufs), nil
}

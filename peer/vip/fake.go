package vip

import "sync"

// FakeLAN is one LAN segment for Fake VIPs: at most one of them answers
// for the address at a time, as the ARP probe before a takeover ensures on
// a real LAN.
type FakeLAN struct {
	mu    sync.Mutex
	owner *Fake // guarded by mu
}

// Fake is a VIP on a FakeLAN. It records its takeovers.
type Fake struct {
	lan  *FakeLAN
	name string

	mu        sync.Mutex
	takeovers int // guarded by mu
}

var _ VIP = (*Fake)(nil)

// NewFake returns host name's VIP on lan.
func (l *FakeLAN) NewFake(name string) *Fake { return &Fake{lan: l, name: name} }

// Owner names the host that answers for the address; "" when none does.
func (l *FakeLAN) Owner() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner == nil {
		return ""
	}
	return l.owner.name
}

// Claim implements VIP: ErrInUse while another Fake on the LAN owns it.
func (f *Fake) Claim() error {
	f.lan.mu.Lock()
	defer f.lan.mu.Unlock()
	switch f.lan.owner {
	case f:
		return nil
	case nil:
		f.lan.owner = f
		f.mu.Lock()
		f.takeovers++
		f.mu.Unlock()
		return nil
	}
	return ErrInUse
}

// Release implements VIP.
func (f *Fake) Release() error {
	f.lan.mu.Lock()
	defer f.lan.mu.Unlock()
	if f.lan.owner == f {
		f.lan.owner = nil
	}
	return nil
}

// Owned implements VIP.
func (f *Fake) Owned() bool {
	f.lan.mu.Lock()
	defer f.lan.mu.Unlock()
	return f.lan.owner == f
}

// Takeovers is how many times Claim took the address.
func (f *Fake) Takeovers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.takeovers
}

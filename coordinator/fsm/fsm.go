// Package fsm is the coordinators' Raft state machine: every log entry is a
// one-byte command type followed by a JSON body, applied to a state.Store.
// A body that does not decode means the replicas have diverged and Apply
// panics rather than guess. Fields a body does not know are ignored, so a
// coordinator applies entries written by a newer one that added fields
// (a rolling upgrade); new fields are omitted when empty, so entries that
// do not use them encode as before.
package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// MessageType is the first byte of every log entry. Values are append-only:
// never renumber, add new ones at the end.
type MessageType uint8

// IgnorableFlag marks a command type that a version which does not know it
// may skip: an optional feature, whose absence on a replica only means the
// replica lacks that feature's state. A later version sets it on such new
// types (as nomad's IgnoreUnknownTypeFlag); an unknown type without it
// stops the replica, as it must when skipping would make replicas disagree.
const IgnorableFlag MessageType = 0x80

// ErrIgnorable is returned by Decode for an unknown command type that
// carries IgnorableFlag.
var ErrIgnorable = errors.New("unknown command type marked ignorable")

// Command types.
const (
	BootstrapType MessageType = iota + 1
	CreateVNetType
	DeleteVNetType
	CreateTokenType
	RevokeTokenType
	JoinPeerType
	RemovePeerType
	UpdatePeerType
	TouchPeersType
	RegisterCoordinatorType
	ExpireTokensType
	ReapEphemeralType
	RotateGossipKeyType
	MarkWatchesType
	SetPolicyType
	DeletePolicyType
	RotateVNetKeysType
	PruneGossipKeysType
	CreateAdminTokenType
	RevokeAdminTokenType
	DeregisterCoordinatorType
	LeavePeerType
	AddDeviceType
	PruneTokensType
	CreateVNetIPv6Type
)

// Command bodies.
type (
	Bootstrap struct {
		Now       time.Time `json:"now"`
		GossipKey []byte    `json:"gossip_key"`
	}
	// CreateVNet with a GossipSeed gives the vnet a gossip keyring of its
	// own; without one (older entries) it uses the cluster-wide ring.
	CreateVNet struct {
		Name       string    `json:"name"`
		Overlay    string    `json:"overlay"`
		Now        time.Time `json:"now"`
		GossipSeed []byte    `json:"gossip_seed,omitempty"`
	}
	DeleteVNet struct {
		Name string `json:"name"`
	}
	CreateToken struct {
		Spec state.TokenSpec `json:"spec"`
		Now  time.Time       `json:"now"`
	}
	// RevokeToken revokes a join token; Now (zero in entries of older
	// versions) records when, for token prune.
	RevokeToken struct {
		ID  string    `json:"id"`
		Now time.Time `json:"now,omitzero"`
	}
	JoinPeer struct {
		Spec state.JoinSpec `json:"spec"`
		Now  time.Time      `json:"now"`
	}
	// RemovePeer with a GossipSeed rotates the peer's vnet's gossip key
	// in the same step; the previous key is superseded at Now.
	RemovePeer struct {
		ID         string    `json:"id"`
		Now        time.Time `json:"now,omitzero"`
		GossipSeed []byte    `json:"gossip_seed,omitempty"`
	}
	UpdatePeer struct {
		Update state.PeerUpdate `json:"update"`
	}
	TouchPeers struct {
		Seen map[string]time.Time `json:"seen"`
	}
	RegisterCoordinator struct {
		Coordinator state.Coordinator `json:"coordinator"`
	}
	ExpireTokens struct {
		Now time.Time `json:"now"`
	}
	// ReapEphemeral with a GossipSeed rotates the gossip key of every vnet
	// that loses a peer.
	ReapEphemeral struct {
		Now        time.Time     `json:"now"`
		Grace      time.Duration `json:"grace"`
		GossipSeed []byte        `json:"gossip_seed,omitempty"`
	}
	// RotateGossipKey rotates the cluster-wide legacy ring (entries written
	// before keyrings were per vnet).
	RotateGossipKey struct {
		Key []byte `json:"key"`
	}
	// MarkWatches is one coordinator's batch of watch starts and ends.
	MarkWatches struct {
		Coordinator string               `json:"coordinator"`
		Held        []string             `json:"held,omitempty"`
		Released    map[string]time.Time `json:"released,omitempty"`
	}
	// SetPolicy puts a new version of a vnet's access policy in force.
	// Prev is the version the API validated it against (0: none).
	SetPolicy struct {
		VNet   string          `json:"vnet"`
		Policy json.RawMessage `json:"policy"`
		SetBy  string          `json:"set_by"`
		Now    time.Time       `json:"now"`
		Prev   int             `json:"prev"`
	}
	// DeletePolicy removes a vnet's policy (as a new version).
	DeletePolicy struct {
		VNet  string    `json:"vnet"`
		SetBy string    `json:"set_by"`
		Now   time.Time `json:"now"`
		Prev  int       `json:"prev"`
	}
	// RotateVNetKeys gives VNet ("" every vnet) a new primary gossip
	// key derived from GossipSeed; the previous keys are superseded at Now.
	RotateVNetKeys struct {
		VNet       string    `json:"vnet,omitempty"`
		GossipSeed []byte    `json:"gossip_seed"`
		Now        time.Time `json:"now"`
	}
	// PruneGossipKeys drops the gossip keys superseded Grace or longer
	// before Now.
	PruneGossipKeys struct {
		Now   time.Time     `json:"now"`
		Grace time.Duration `json:"grace"`
	}
	// CreateAdminToken stores a named admin credential (its secret's
	// hash).
	CreateAdminToken struct {
		Spec state.AdminTokenSpec `json:"spec"`
		Now  time.Time            `json:"now"`
	}
	// RevokeAdminToken revokes the admin credential with id or name Ref
	// (the bootstrap one is "admin"); By names the credential that asked.
	RevokeAdminToken struct {
		Ref string    `json:"ref"`
		By  string    `json:"by,omitempty"`
		Now time.Time `json:"now"`
	}
	// DeregisterCoordinator drops a coordinator removed from the cluster
	// from the coordinators peers and clients are given.
	DeregisterCoordinator struct {
		Name string `json:"name"`
	}
	// LeavePeer removes a peer at its own request; a peer that never came
	// up gives its join token the use back (state.LeavePeer).
	LeavePeer struct {
		ID         string    `json:"id"`
		Now        time.Time `json:"now"`
		GossipSeed []byte    `json:"gossip_seed,omitempty"`
	}
	// AddDevice adds a peer of role device (meshd peer export).
	AddDevice struct {
		Spec state.DeviceSpec `json:"spec"`
		Now  time.Time        `json:"now"`
	}
	// PruneTokens deletes the join tokens IDs names that are dead
	// (revoked, expired or used up) at Now; the writer chose them
	// (state.Tables.DeadTokens), the apply checks each again.
	PruneTokens struct {
		IDs []string  `json:"ids"`
		Now time.Time `json:"now"`
	}
	// CreateVNetIPv6 creates a vnet with an IPv6 overlay, alone or beside
	// an IPv4 one (dual-stack). Versions before it would drop the IPv6
	// overlay, so it is gated (features.go).
	CreateVNetIPv6 struct {
		Name       string    `json:"name"`
		Overlays   []string  `json:"overlays"`
		Now        time.Time `json:"now"`
		GossipSeed []byte    `json:"gossip_seed,omitempty"`
	}
)

// MaxCommandBytes bounds an encoded command.
const MaxCommandBytes = 1 << 20

var newBody = map[MessageType]func() any{
	BootstrapType:             func() any { return new(Bootstrap) },
	CreateVNetType:            func() any { return new(CreateVNet) },
	DeleteVNetType:            func() any { return new(DeleteVNet) },
	CreateTokenType:           func() any { return new(CreateToken) },
	RevokeTokenType:           func() any { return new(RevokeToken) },
	JoinPeerType:              func() any { return new(JoinPeer) },
	RemovePeerType:            func() any { return new(RemovePeer) },
	UpdatePeerType:            func() any { return new(UpdatePeer) },
	TouchPeersType:            func() any { return new(TouchPeers) },
	RegisterCoordinatorType:   func() any { return new(RegisterCoordinator) },
	ExpireTokensType:          func() any { return new(ExpireTokens) },
	ReapEphemeralType:         func() any { return new(ReapEphemeral) },
	RotateGossipKeyType:       func() any { return new(RotateGossipKey) },
	MarkWatchesType:           func() any { return new(MarkWatches) },
	SetPolicyType:             func() any { return new(SetPolicy) },
	DeletePolicyType:          func() any { return new(DeletePolicy) },
	RotateVNetKeysType:        func() any { return new(RotateVNetKeys) },
	PruneGossipKeysType:       func() any { return new(PruneGossipKeys) },
	CreateAdminTokenType:      func() any { return new(CreateAdminToken) },
	RevokeAdminTokenType:      func() any { return new(RevokeAdminToken) },
	DeregisterCoordinatorType: func() any { return new(DeregisterCoordinator) },
	LeavePeerType:             func() any { return new(LeavePeer) },
	AddDeviceType:             func() any { return new(AddDevice) },
	PruneTokensType:           func() any { return new(PruneTokens) },
	CreateVNetIPv6Type:        func() any { return new(CreateVNetIPv6) },
}

// ErrDecode is returned by Decode for data that is not a command.
var ErrDecode = errors.New("decode command")

// Encode makes a log entry from a command type and body.
func Encode(t MessageType, body any) ([]byte, error) {
	if _, ok := newBody[t]; !ok {
		return nil, fmt.Errorf("encode command: unknown type %d", t)
	}
	var buf bytes.Buffer
	buf.WriteByte(byte(t))
	if err := json.NewEncoder(&buf).Encode(body); err != nil {
		return nil, fmt.Errorf("encode command %d: %w", t, err)
	}
	if buf.Len() > MaxCommandBytes {
		return nil, fmt.Errorf("encode command %d: %d bytes is over the limit", t, buf.Len())
	}
	return buf.Bytes(), nil
}

// Decode parses a log entry into its type and a pointer to its body,
// ignoring fields the body does not have.
func Decode(data []byte) (MessageType, any, error) {
	if len(data) < 2 || len(data) > MaxCommandBytes {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrDecode, len(data))
	}
	t := MessageType(data[0])
	mk, ok := newBody[t]
	if !ok {
		if t&IgnorableFlag != 0 {
			return t, nil, fmt.Errorf("%w: type %d", ErrIgnorable, t)
		}
		return 0, nil, fmt.Errorf("%w: unknown type %d", ErrDecode, t)
	}
	body := mk()
	dec := json.NewDecoder(bytes.NewReader(data[1:]))
	if err := dec.Decode(body); err != nil {
		return 0, nil, fmt.Errorf("%w: type %d: %v", ErrDecode, t, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, nil, fmt.Errorf("%w: type %d: trailing data", ErrDecode, t)
	}
	return t, body, nil
}

// Result is what applying a command returns to the writer.
type Result struct {
	Index uint64      `json:"index"`
	Err   *api.Error  `json:"error,omitempty"`
	Peer  *state.Peer `json:"peer,omitempty"`
	Count int         `json:"count,omitempty"`
	IDs   []string    `json:"ids,omitempty"`
	// Version is the policy version a SetPolicy or DeletePolicy wrote.
	Version int `json:"version,omitempty"`
}

// FSM applies commands to a store.
type FSM struct {
	store *state.Store
	log   *slog.Logger
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an FSM over store.
func New(store *state.Store, log *slog.Logger) *FSM {
	return &FSM{store: store, log: log.With("component", "fsm")}
}

// Apply applies one log entry.
func (f *FSM) Apply(l *raft.Log) any {
	r := f.apply(l)
	f.store.Notify()
	return r
}

// ApplyBatch applies entries in order and wakes watchers once.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	for i, l := range logs {
		out[i] = f.apply(l)
	}
	f.store.Notify()
	return out
}

func (f *FSM) apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	t, body, err := Decode(l.Data)
	if errors.Is(err, ErrIgnorable) {
		// A newer version's optional command: this replica skips it.
		f.store.SetIndex(l.Index)
		f.store.Applied(l.Index)
		return &Result{Index: l.Index}
	}
	if err != nil {
		panic(fmt.Sprintf("fsm: log %d: %v", l.Index, err))
	}
	f.store.SetIndex(l.Index)
	defer f.store.Applied(l.Index)
	r := &Result{Index: l.Index}
	switch t {
	case BootstrapType:
		c := body.(*Bootstrap)
		err = f.store.Bootstrap(c.Now, c.GossipKey)
	case CreateVNetType:
		c := body.(*CreateVNet)
		if err = state.ValidGossipSeed(c.GossipSeed); err == nil {
			err = f.store.CreateVNet(c.Name, c.Overlay, c.Now)
		}
		if err == nil && c.GossipSeed != nil {
			err = f.store.InitGossipRing(c.Name, c.GossipSeed)
		}
	case DeleteVNetType:
		err = f.store.DeleteVNet(body.(*DeleteVNet).Name)
	case CreateTokenType:
		c := body.(*CreateToken)
		err = f.store.CreateToken(c.Spec, c.Now)
	case RevokeTokenType:
		c := body.(*RevokeToken)
		err = f.store.RevokeToken(c.ID, c.Now)
	case JoinPeerType:
		c := body.(*JoinPeer)
		r.Peer, err = f.store.Join(c.Spec, c.Now)
	case RemovePeerType:
		c := body.(*RemovePeer)
		err = f.store.RemovePeer(c.ID, c.Now, c.GossipSeed)
	case UpdatePeerType:
		err = f.store.UpdatePeer(body.(*UpdatePeer).Update)
	case TouchPeersType:
		f.store.TouchPeers(body.(*TouchPeers).Seen)
	case RegisterCoordinatorType:
		err = f.store.RegisterCoordinator(body.(*RegisterCoordinator).Coordinator)
	case ExpireTokensType:
		r.Count = f.store.ExpireTokens(body.(*ExpireTokens).Now)
	case ReapEphemeralType:
		c := body.(*ReapEphemeral)
		r.IDs = f.store.ReapEphemeral(c.Now, c.Grace, c.GossipSeed)
	case RotateGossipKeyType:
		err = f.store.RotateGossipKey(body.(*RotateGossipKey).Key)
	case MarkWatchesType:
		c := body.(*MarkWatches)
		f.store.MarkWatches(c.Coordinator, c.Held, c.Released)
	case SetPolicyType:
		c := body.(*SetPolicy)
		r.Version, err = f.store.SetPolicy(c.VNet, c.Policy, c.SetBy, c.Now, c.Prev)
	case DeletePolicyType:
		c := body.(*DeletePolicy)
		r.Version, err = f.store.DeletePolicy(c.VNet, c.SetBy, c.Now, c.Prev)
	case RotateVNetKeysType:
		c := body.(*RotateVNetKeys)
		r.IDs, err = f.store.RotateGossipKeys(c.VNet, c.GossipSeed, c.Now)
	case PruneGossipKeysType:
		c := body.(*PruneGossipKeys)
		r.IDs = f.store.PruneGossipKeys(c.Now, c.Grace)
	case CreateAdminTokenType:
		c := body.(*CreateAdminToken)
		err = f.store.CreateAdminToken(c.Spec, c.Now)
	case RevokeAdminTokenType:
		c := body.(*RevokeAdminToken)
		var id string
		if id, err = f.store.RevokeAdminToken(c.Ref, c.By, c.Now); err == nil {
			r.IDs = []string{id}
		}
	case DeregisterCoordinatorType:
		f.store.DeregisterCoordinator(body.(*DeregisterCoordinator).Name)
	case LeavePeerType:
		c := body.(*LeavePeer)
		var refunded bool
		if refunded, err = f.store.LeavePeer(c.ID, c.Now, c.GossipSeed); err == nil && refunded {
			r.Count = 1
		}
	case AddDeviceType:
		c := body.(*AddDevice)
		r.Peer, err = f.store.AddDevice(c.Spec, c.Now)
	case PruneTokensType:
		c := body.(*PruneTokens)
		r.IDs = f.store.PruneTokens(c.IDs, c.Now)
	case CreateVNetIPv6Type:
		c := body.(*CreateVNetIPv6)
		if err = state.ValidGossipSeed(c.GossipSeed); err == nil {
			err = f.store.CreateVNetIPv6(c.Name, c.Overlays, c.Now)
		}
		if err == nil && c.GossipSeed != nil {
			err = f.store.InitGossipRing(c.Name, c.GossipSeed)
		}
	default:
		panic(fmt.Sprintf("fsm: log %d: no apply for type %d", l.Index, t))
	}
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = api.Errorf(api.CodeInternal, "%v", err)
		}
		r.Err = ae
	}
	return r
}

// Snapshot captures the state for Raft.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	b, err := f.store.Snapshot()
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore replaces the state from a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	return f.store.Restore(b)
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}

package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/coordinator/netmap"
	"github.com/meshd/meshd/coordinator/state"
)

// fullMapCompute builds a replica's state with n peers in this process
// (the coordinators' own state code) and times what a new watcher costs a
// coordinator before any byte is sent: computing its full map and encoding
// it. The median of 5.
func fullMapCompute(n int) (ms float64, size int, err error) {
	s := state.New()
	now := time.Now()
	if err := s.Bootstrap(now, make([]byte, 32)); err != nil {
		return 0, 0, err
	}
	hash := strings.Repeat("a", 64)
	if err := s.CreateToken(state.TokenSpec{ID: "t", SecretHash: hash, VNet: "default", Uses: n, Expires: now.Add(time.Hour)}, now); err != nil {
		return 0, 0, err
	}
	ids := make([]string, n)
	for i := range n {
		id := make([]byte, 16)
		rand.Read(id)
		ids[i] = hex.EncodeToString(id)
		j := state.JoinSpec{TokenID: "t", SecretHash: hash, PeerID: ids[i], Name: fmt.Sprintf("sim%05d", i), PublicKey: wgKey(),
			Endpoints: []string{fmt.Sprintf("198.18.%d.%d:51820", i/250, i%250+1)}, CredHash: hash}
		if _, err := s.Join(j, now); err != nil {
			return 0, 0, err
		}
	}
	var times []float64
	for k := range 5 {
		t0 := time.Now()
		var b []byte
		s.Read(func(t *state.Tables, idx uint64) {
			b, err = json.Marshal(netmap.Full(t, idx, ids[k]))
		})
		if err != nil {
			return 0, 0, err
		}
		times = append(times, float64(time.Since(t0).Microseconds())/1000)
		size = len(b)
	}
	slices.Sort(times)
	return times[len(times)/2], size, nil
}

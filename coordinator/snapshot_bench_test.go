package coordinator

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/backup"
	"github.com/meshd/meshd/coordinator/state"
	"github.com/meshd/meshd/pkg/api"
)

// BenchmarkSnapshotRestore10k saves the state of 10,000 peers as a backup
// file and restores it into a new data dir, as `meshd cluster snapshot
// save` and `meshd coordinator restore` do (without the network):
//
//	go test -run '^$' -bench SnapshotRestore10k -benchtime 5x ./coordinator
func BenchmarkSnapshotRestore10k(b *testing.B) {
	// The state of the fan-out benchmark, without its watchers.
	fb := &fanoutBench{st: state.New()}
	now := time.Now()
	fb.next()
	if err := fb.st.Bootstrap(now, make([]byte, 32)); err != nil {
		b.Fatal(err)
	}
	for g := range 10 {
		fb.next()
		if err := fb.st.CreateToken(state.TokenSpec{ID: fmt.Sprintf("t%d", g), SecretHash: strings.Repeat("a", 64), VNet: api.DefaultVNet,
			Uses: 10000, Expires: now.Add(time.Hour), Tags: []string{fmt.Sprintf("g%d", g)}}, now); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 10000 {
		fb.join(b, i, now)
	}
	fb.next()
	if _, err := fb.st.SetPolicy(api.DefaultVNet, []byte(groupPolicy(0)), "admin", now, 0); err != nil {
		b.Fatal(err)
	}
	fb.st.Applied(fb.idx)
	var size int
	b.ResetTimer()
	for range b.N {
		body, index, tables, err := fb.st.Backup()
		if err != nil {
			b.Fatal(err)
		}
		var file bytes.Buffer
		if err := backup.Write(&file, &backup.Header{Index: index, Tables: tables}, body); err != nil {
			b.Fatal(err)
		}
		size = file.Len()
		if _, err := Restore(RestoreConfig{DataDir: filepath.Join(b.TempDir(), "d"), Name: "c1", RaftAddr: "10.0.0.1:8301"}, &file); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size), "file-bytes")
}

package coordinator

import (
	"context"
	"net/http"
	"testing"
)

// BenchmarkAdminRead lists tokens through the leader of a 3-node cluster,
// 8 callers at once: with the read barrier's quorum check (as served), and
// without it (as reads were before it), in the same run. The ratio of the
// two is the cost of linearizable reads.
func BenchmarkAdminRead(b *testing.B) {
	c := startCluster(b, 3)
	leader := c.leader()
	admin := c.admin(leader)
	ctx := context.Background()
	for range 20 {
		if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", map[string]any{}, nil); err != nil {
			b.Fatal(err)
		}
	}
	for _, mode := range []string{"quorum-checked", "unchecked"} {
		b.Run(mode, func(b *testing.B) {
			if mode == "unchecked" {
				leader.srv.leaderCheck.verify = func() error { return nil }
				defer func() { leader.srv.leaderCheck.verify = leader.srv.verifyLeader }()
			}
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := admin.Do(ctx, http.MethodGet, "/v1/tokens", nil, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
		})
	}
}

package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// BenchmarkJoin measures joins through the HTTPS API of a single node, with
// many clients in parallel.
func BenchmarkJoin(b *testing.B) {
	srv, admin := startSingle(b)
	ctx := context.Background()
	var tok api.CreateTokenResponse
	if err := admin.Do(ctx, http.MethodPost, "/v1/tokens", api.CreateTokenRequest{Uses: 1_000_000}, &tok); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cl := apiclient.New([]string{srv.APIURL()}, srv.Pin(), "")
		for pb.Next() {
			req := api.JoinRequest{ProtocolVersion: api.ProtocolVersion, Token: tok.Token, Name: fmt.Sprintf("p%d", n.Add(1)), PublicKey: wgKey(), OmitMap: true}
			if err := cl.Do(ctx, http.MethodPost, "/v1/join", req, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

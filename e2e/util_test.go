package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"
)

func randomKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, bounded by the deadline
	}
	return time.Since(start)
}

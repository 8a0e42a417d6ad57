package api

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestCompressLineRoundTrip(t *testing.T) {
	u := MapUpdate{Index: 7}
	for i := range 200 {
		u.Peers = append(u.Peers, MapPeer{ID: fmt.Sprintf("%032x", i), Name: fmt.Sprintf("p%d", i), Role: RoleClient, OverlayIP: "100.96.0.1"})
	}
	line, _ := json.Marshal(u)
	z, err := CompressLine(line)
	if err != nil {
		t.Fatal(err)
	}
	if !IsCompressedLine(z) || len(z) >= len(line) || z[len(z)-1] != '\n' {
		t.Fatalf("compressed line of %d bytes from %d; want a shorter {\"z\":...} line", len(z), len(line))
	}
	back, err := ExpandLine(bytes.TrimSpace(z))
	if err != nil || !bytes.Equal(back, line) {
		t.Fatalf("ExpandLine = %.60q, %v; want the original line", back, err)
	}
	if plain, err := ExpandLine(line); err != nil || !bytes.Equal(plain, line) {
		t.Fatalf("a plain line must pass through unchanged: %v", err)
	}
}

func TestExpandLineRefusesBombsAndJunk(t *testing.T) {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	zeros := make([]byte, 1<<20)
	const limit = 4 << 20 // MaxUpdateBytes, scaled down for speed
	for range limit/len(zeros) + 1 {
		w.Write(zeros)
	}
	w.Close()
	bomb, _ := json.Marshal(compressedLine{Z: buf.Bytes()})
	if _, err := expandLine(bomb, limit); err == nil || !strings.Contains(err.Error(), "size limit") {
		t.Fatalf("a line inflating past %d bytes: %v; want refused", limit, err)
	}
	for _, junk := range []string{`{"z":"not base64!"}`, `{"z":"AAAA"}`, `{"z":`} {
		if _, err := ExpandLine([]byte(junk)); err == nil {
			t.Errorf("ExpandLine(%q) accepted junk", junk)
		}
	}
}

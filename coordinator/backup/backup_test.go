package backup

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func sample(t *testing.T) ([]byte, []byte) {
	t.Helper()
	body := []byte(`{"index":42,"tables":{"vnets":{}}}`)
	h := &Header{Index: 42, Term: 3, TakenAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), TakenBy: "c2", Leader: "c1",
		Members: []Member{{Name: "c1", RaftAddr: "10.0.0.1:8301", Role: "leader"}}}
	var buf bytes.Buffer
	if err := Write(&buf, h, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), body
}

func TestRoundTrip(t *testing.T) {
	file, body := sample(t)
	h, got, err := Read(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("body %q; want %q", got, body)
	}
	if h.Format != Format || h.Index != 42 || h.Term != 3 || h.TakenBy != "c2" || h.Size != int64(len(body)) || len(h.SHA256) != 64 {
		t.Fatalf("header %+v", h)
	}
	var copied bytes.Buffer
	h2, err := Copy(&copied, bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(copied.Bytes(), file) {
		t.Fatalf("Copy wrote %d bytes; want the %d of the file", copied.Len(), len(file))
	}
	if h2.SHA256 != h.SHA256 {
		t.Fatalf("Copy header digest %s; want %s", h2.SHA256, h.SHA256)
	}
}

// TestRefused: every way a file can be damaged is refused with ErrCorrupt
// (or, for a newer format, a clear error).
func TestRefused(t *testing.T) {
	file, body := sample(t)
	headerEnd := len(file) - len(body)
	flip := func(i int) []byte {
		b := bytes.Clone(file)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "not a meshd snapshot"},
		{"not a snapshot", []byte("hello world\n{}\n"), "not a meshd snapshot"},
		{"newer format", []byte(strings.Replace(string(file), "meshd-snapshot 1", "meshd-snapshot 9", 1)), "newer"},
		{"truncated in the header", file[:headerEnd-5], "header"},
		{"truncated body", file[:len(file)-3], "truncated"},
		{"no body", file[:headerEnd], "truncated"},
		{"one body byte altered", flip(len(file) - 5), "checksum mismatch"},
		{"first body byte altered", flip(headerEnd), "checksum mismatch"},
		{"trailing data", append(bytes.Clone(file), 'x'), "data after"},
		{"header not JSON", []byte("meshd-snapshot 1\n{nope\n"), "not valid JSON"},
		{"digest missing", []byte("meshd-snapshot 1\n{\"format\":1,\"size\":0}\n"), "sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Read(bytes.NewReader(tt.file))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v; want ErrCorrupt mentioning %q", err, tt.want)
			}
			if _, err := Verify(bytes.NewReader(tt.file)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify: got %v; want ErrCorrupt", err)
			}
		})
	}
}

// TestUnknownHeaderFields: a later version may add header fields.
func TestUnknownHeaderFields(t *testing.T) {
	file, body := sample(t)
	s := strings.Replace(string(file), `{"format":1,`, `{"format":1,"future":{"x":1},`, 1)
	h, got, err := Read(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	if h.Index != 42 || !bytes.Equal(got, body) {
		t.Fatalf("got %+v %q", h, got)
	}
}

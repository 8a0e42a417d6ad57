package api

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// A network-map watch opened with ?compress=1 may carry a large update as
// one line {"z":"BASE64"}: the update's JSON line, deflated (RFC 1951).
// Coordinators compress a delta once and send the same bytes to every
// watcher that asked; small updates and the first full map stay plain.
const (
	WatchCompressParam = "compress"
	// CompressMin is the smallest update line worth compressing.
	CompressMin = 4 << 10
	// MaxUpdateBytes bounds an update line, inflated or not.
	MaxUpdateBytes = 256 << 20
)

type compressedLine struct {
	Z []byte `json:"z"`
}

var zPrefix = []byte(`{"z":`)

// CompressLine deflates one update line into a {"z":...} line, ending in a
// newline.
func CompressLine(line []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(line); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	out, err := json.Marshal(compressedLine{Z: buf.Bytes()})
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// IsCompressedLine says whether line is a {"z":...} line.
func IsCompressedLine(line []byte) bool { return bytes.HasPrefix(line, zPrefix) }

// ExpandLine returns the update line a {"z":...} line carries, and any
// other line as it is.
func ExpandLine(line []byte) ([]byte, error) { return expandLine(line, MaxUpdateBytes) }

func expandLine(line []byte, limit int) ([]byte, error) {
	if !IsCompressedLine(line) {
		return line, nil
	}
	var c compressedLine
	if err := json.Unmarshal(line, &c); err != nil {
		return nil, fmt.Errorf("compressed update: %w", err)
	}
	r := flate.NewReader(bytes.NewReader(c.Z))
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("compressed update: %w", err)
	}
	if len(out) > limit {
		return nil, errors.New("compressed update inflates past the size limit")
	}
	return out, nil
}

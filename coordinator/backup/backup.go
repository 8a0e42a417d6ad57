// Package backup is the file format of `meshd cluster snapshot save`: a copy
// of the coordinators' replicated state that `meshd coordinator restore`
// seeds a new cluster from.
//
// A file is three parts:
//
//	meshd-snapshot 1\n            magic and format version
//	{"format":1,"index":...}\n    the header, one line of JSON
//	body                          the state, exactly header.size bytes
//
// The header carries the SHA-256 of the body, so a truncated, padded or
// altered file is refused before anything is restored from it; fields of
// the header a reader does not know are ignored.
package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Format is the version of the file format this package writes; Read
// refuses newer ones.
const Format = 1

// magic starts every file, followed by a space and the format version.
const magic = "meshd-snapshot"

// MaxHeaderBytes bounds the header line.
const MaxHeaderBytes = 1 << 20

// MaxBodyBytes bounds the body a reader accepts (the whole state is held in
// memory by the coordinators too).
const MaxBodyBytes = 1 << 30

// ErrCorrupt is wrapped by every error about a file that is not a whole,
// unaltered snapshot.
var ErrCorrupt = errors.New("snapshot file refused")

// Header describes a snapshot.
type Header struct {
	Format int `json:"format"`
	// Index is the Raft index of the last command the state reflects;
	// Term the Raft term the serving coordinator was in.
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// TakenAt is when it was taken, TakenBy the coordinator that served
	// it, Leader the leader at the time.
	TakenAt time.Time `json:"taken_at"`
	TakenBy string    `json:"taken_by"`
	Leader  string    `json:"leader"`
	// Pin is the hex SHA-256 of the cluster's API CA key (the pin in every
	// token): a restored cluster must run with the same cluster key for
	// peers and credentials to keep working.
	Pin string `json:"pin"`
	// Members is the coordinator cluster when the snapshot was taken.
	Members []Member `json:"members"`
	// Tables counts the rows of each table in the body.
	Tables map[string]int `json:"tables,omitempty"`
	// Size is the body's length in bytes and SHA256 its hex digest.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Member is one coordinator of the cluster a snapshot was taken from.
type Member struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIURL   string `json:"api_url,omitempty"`
	Role     string `json:"role"`
}

// Prefix completes h for body (format, size, digest) and returns the bytes
// that precede the body in the file: the magic line and the header line.
func Prefix(h *Header, body []byte) ([]byte, error) {
	sum := sha256.Sum256(body)
	h.Format = Format
	h.Size = int64(len(body))
	h.SHA256 = hex.EncodeToString(sum[:])
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot header: %w", err)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%s %d\n", magic, Format)
	buf.Write(hb)
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// Write writes a whole file: Prefix, then body.
func Write(w io.Writer, h *Header, body []byte) error {
	p, err := Prefix(h, body)
	if err != nil {
		return err
	}
	if _, err := w.Write(p); err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

// Read reads and verifies a whole file and returns its header and body.
func Read(r io.Reader) (*Header, []byte, error) {
	var body bytes.Buffer
	h, err := copyFile(nil, &body, r)
	if err != nil {
		return nil, nil, err
	}
	return h, body.Bytes(), nil
}

// Copy copies a file from src to dst as it reads it, verifying it on the
// way; dst has received the whole file only when Copy returns no error (a
// caller writes to a temporary file and renames it then).
func Copy(dst io.Writer, src io.Reader) (*Header, error) {
	return copyFile(dst, dst, src)
}

// Verify reads a whole file and checks it.
func Verify(r io.Reader) (*Header, error) { return copyFile(nil, io.Discard, r) }

// copyFile reads a file from src; the magic and header lines go to head
// (when not nil) and the body to body.
func copyFile(head, body io.Writer, src io.Reader) (*Header, error) {
	br := bufio.NewReaderSize(src, 64<<10)
	first, err := readLine(br, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: not a meshd snapshot (%v)", ErrCorrupt, err)
	}
	name, ver, ok := strings.Cut(first, " ")
	if !ok || name != magic {
		return nil, fmt.Errorf("%w: not a meshd snapshot (it does not start with %q)", ErrCorrupt, magic)
	}
	v, err := strconv.Atoi(ver)
	if err != nil || v < 1 {
		return nil, fmt.Errorf("%w: format version %q is not a number", ErrCorrupt, ver)
	}
	if v > Format {
		return nil, fmt.Errorf("%w: format version %d is newer than this meshd reads (%d); use a newer meshd", ErrCorrupt, v, Format)
	}
	line, err := readLine(br, MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	var h Header
	if err := json.Unmarshal([]byte(line), &h); err != nil {
		return nil, fmt.Errorf("%w: header is not valid JSON: %v", ErrCorrupt, err)
	}
	if h.Format != v {
		return nil, fmt.Errorf("%w: header says format %d, the first line %d", ErrCorrupt, h.Format, v)
	}
	want, err := hex.DecodeString(h.SHA256)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("%w: header has no valid sha256", ErrCorrupt)
	}
	if h.Size < 0 || h.Size > MaxBodyBytes {
		return nil, fmt.Errorf("%w: header gives a body of %d bytes", ErrCorrupt, h.Size)
	}
	if head != nil {
		if _, err := fmt.Fprintf(head, "%s\n%s\n", first, line); err != nil {
			return nil, err
		}
	}
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(body, hash), io.LimitReader(br, h.Size))
	if err != nil {
		return nil, fmt.Errorf("read snapshot body: %w", err)
	}
	if n < h.Size {
		return nil, fmt.Errorf("%w: truncated: the body has %d of its %d bytes", ErrCorrupt, n, h.Size)
	}
	if extra, _ := br.Read(make([]byte, 1)); extra > 0 {
		return nil, fmt.Errorf("%w: data after the %d-byte body", ErrCorrupt, h.Size)
	}
	if got := hash.Sum(nil); !bytes.Equal(got, want) {
		return nil, fmt.Errorf("%w: checksum mismatch: the body's sha256 is %x, the header says %s; the file was altered or damaged", ErrCorrupt, got, h.SHA256)
	}
	return &h, nil
}

// readLine reads one line of at most max bytes (without its newline).
func readLine(br *bufio.Reader, max int) (string, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > max+1 {
			return "", fmt.Errorf("line longer than %d bytes", max)
		}
		switch {
		case err == nil:
			return string(b[:len(b)-1]), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return "", errors.New("the file ends early")
		default:
			return "", err
		}
	}
}

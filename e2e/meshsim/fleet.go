package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The N simulated peers' watches run in a child process at the lowest CPU
// priority (nice 19). They stand in for N machines of their own: reading
// and decrypting N TLS streams on this 2-core host would otherwise take the
// CPU the coordinators' write path needs, and the join throughput measured
// with every watch open would be the simulator's, not the coordinators'.
// When the host is otherwise idle (the single changes below) niceness
// changes nothing; during a burst of joins the watchers catch up after it.
//
// The parent speaks to the child over its stdin and stdout, one line per
// command and per answer:
//
//	mark BASE64   reset every watcher's hit time, look for this marker → ok
//	count         how many watchers have seen the marker → N
//	hits          unix nanoseconds of each watcher's first hit (0: none) → JSON array
//	bytes         bytes received by all watchers so far → N
//
// Before the commands the child reads its config (one JSON line) and
// reports "open K" as watches open, then "ready". It exits when its stdin
// closes.

const childEnv = "MESHSIM_WATCH_CHILD"

type fleetConfig struct {
	URLs  []string `json:"urls"`
	Pin   []byte   `json:"pin"`
	Creds []string `json:"creds"`
	Since uint64   `json:"since"`
}

// fleet is the parent's handle on the watcher child.
type fleet struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

// startFleet starts the child and waits until every watch is open.
func startFleet(cfg fleetConfig) (*fleet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nice", "-n", "19", exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	f := &fleet{cmd: cmd, in: in, out: bufio.NewReaderSize(outp, 1<<20)}
	b, _ := json.Marshal(cfg)
	if _, err := in.Write(append(b, '\n')); err != nil {
		f.close()
		return nil, err
	}
	for {
		line, err := f.out.ReadString('\n')
		if err != nil {
			f.close()
			return nil, fmt.Errorf("watcher process: %w", err)
		}
		line = strings.TrimSpace(line)
		if line == "ready" {
			fmt.Fprintf(os.Stderr, "\rwatches open %d/%d\n", len(cfg.Creds), len(cfg.Creds))
			return f, nil
		}
		if k, ok := strings.CutPrefix(line, "open "); ok {
			fmt.Fprintf(os.Stderr, "\rwatches open %s/%d", k, len(cfg.Creds))
		}
	}
}

func (f *fleet) call(cmd string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := io.WriteString(f.in, cmd+"\n"); err != nil {
		return "", err
	}
	line, err := f.out.ReadString('\n')
	return strings.TrimSpace(line), err
}

func (f *fleet) mark(m string) error {
	_, err := f.call("mark " + base64.StdEncoding.EncodeToString([]byte(m)))
	return err
}

func (f *fleet) number(cmd string) (int64, error) {
	s, err := f.call(cmd)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(s, 10, 64)
}

func (f *fleet) count() (int64, error) { return f.number("count") }
func (f *fleet) bytes() (int64, error) { return f.number("bytes") }

func (f *fleet) hits() ([]int64, error) {
	s, err := f.call("hits")
	if err != nil {
		return nil, err
	}
	var h []int64
	return h, json.Unmarshal([]byte(s), &h)
}

func (f *fleet) pid() int { return f.cmd.Process.Pid }

// kill ends the child at once (SIGKILL), dropping every watch together.
func (f *fleet) kill() {
	f.cmd.Process.Kill()
	f.cmd.Wait()
}

// close ends the child: its stdin closes, then it is killed by PID if it
// has not exited within 5 s.
func (f *fleet) close() {
	f.in.Close()
	done := make(chan struct{})
	go func() { f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		f.cmd.Process.Kill()
		<-done
	}
}

// watchChild is the child's main: it holds the watches and answers the
// parent's commands until its stdin closes.
func watchChild() int {
	in := bufio.NewReaderSize(os.Stdin, 1<<16)
	out := bufio.NewWriter(os.Stdout)
	line, err := in.ReadBytes('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshsim watchers: no config:", err)
		return 1
	}
	var cfg fleetConfig
	if err := json.Unmarshal(line, &cfg); err != nil || len(cfg.Pin) != 32 {
		fmt.Fprintln(os.Stderr, "meshsim watchers: bad config:", err)
		return 1
	}
	pin := [32]byte(cfg.Pin)
	n := len(cfg.Creds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchers := make([]*watcher, n)
	var open atomic.Int64
	for i := range n {
		watchers[i] = &watcher{}
		go watch(ctx, rotateURLs(cfg.URLs, i), pin, cfg.Creds[i], cfg.Since, watchers[i], &open)
		if i%500 == 499 {
			time.Sleep(20 * time.Millisecond) // pace the TLS handshakes; not a wait for a condition
		}
	}
	deadline := time.Now().Add(5 * time.Minute)
	for last := int64(-1); open.Load() < int64(n); {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "meshsim watchers: only %d of %d watches opened\n", open.Load(), n)
			return 1
		}
		if k := open.Load(); k != last {
			fmt.Fprintf(out, "open %d\n", k)
			out.Flush()
			last = k
		}
		time.Sleep(100 * time.Millisecond) // progress polling, bounded by the deadline
	}
	fmt.Fprintln(out, "ready")
	out.Flush()
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintln(os.Stderr, "meshsim watchers:", err)
			return 1
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "mark":
			m, err := base64.StdEncoding.DecodeString(arg)
			if err != nil {
				fmt.Fprintln(os.Stderr, "meshsim watchers: bad marker:", err)
				return 1
			}
			marker.Store(nil)
			for _, w := range watchers {
				w.hit.Store(0)
			}
			marker.Store(&m)
			fmt.Fprintln(out, "ok")
		case "count":
			k := 0
			for _, w := range watchers {
				if w.hit.Load() != 0 {
					k++
				}
			}
			fmt.Fprintln(out, k)
		case "hits":
			h := make([]int64, n)
			for i, w := range watchers {
				h[i] = w.hit.Load()
			}
			b, _ := json.Marshal(h)
			out.Write(append(b, '\n'))
		case "bytes":
			var b int64
			for _, w := range watchers {
				b += w.bytes.Load()
			}
			fmt.Fprintln(out, b)
		default:
			fmt.Fprintf(os.Stderr, "meshsim watchers: unknown command %q\n", cmd)
			return 1
		}
		out.Flush()
	}
}

package meshlab

import (
	"bufio"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// PingStream is a running `ping -i 0.01` from a namespace, recording the
// time of every reply.
type PingStream struct {
	start   time.Time
	cmd     *exec.Cmd
	replies []time.Time
	sent    int
	done    chan struct{}
}

// StartPing pings dst from namespace ns every 10 ms for d.
func (l *Lab) StartPing(ns, dst string, d time.Duration) (*PingStream, error) {
	// A count, not a deadline (-w): ping gives up early on ICMP errors
	// when it has a deadline, and errors are expected during a failover.
	cmd := exec.Command("ip", "netns", "exec", l.Net.NS(ns), "ping", "-n", "-D", "-i", "0.01", "-W", "1",
		"-c", strconv.Itoa(int(d/(10*time.Millisecond))), dst)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &PingStream{start: time.Now(), cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			// [1700000000.123456] 64 bytes from ...: icmp_seq=1 ttl=62 time=0.5 ms
			if strings.HasPrefix(line, "[") && strings.Contains(line, "bytes from") {
				ts, err := strconv.ParseFloat(strings.Trim(strings.Fields(line)[0], "[]"), 64)
				if err == nil {
					p.replies = append(p.replies, time.Unix(0, int64(ts*1e9)))
				}
			}
			if strings.Contains(line, "packets transmitted") {
				fmt.Sscanf(line, "%d", &p.sent)
			}
		}
		cmd.Wait()
	}()
	return p, nil
}

// Wait waits for the stream to end and returns the longest interval
// without a reply (counting from the start and up to the end of the
// stream), and how many were sent and answered.
func (p *PingStream) Wait() (gap time.Duration, sent, received int) {
	<-p.done
	end := time.Now().Add(-time.Second) // ping waits -W 1 for the last reply
	times := append([]time.Time{p.start}, p.replies...)
	times = append(times, end)
	for i := 1; i < len(times); i++ {
		if g := times[i].Sub(times[i-1]); g > gap {
			gap = g
		}
	}
	return gap, p.sent, len(p.replies)
}

// ActiveGateway is the gateway peer ns sends prefix to now.
func (l *Lab) ActiveGateway(ns, prefix string) (string, error) {
	out, err := l.Net.Exec(ns, l.Opts.Bin, "status", "--json", "--state-dir", l.StateDir(ns))
	if err != nil {
		return "", err
	}
	const key = `"prefix": "`
	s := string(out)
	i := strings.Index(s, key+prefix+`"`)
	if i < 0 {
		return "", fmt.Errorf("%s has no route %s", ns, prefix)
	}
	rest := s[i:]
	j := strings.Index(rest, `"active_gateway": "`)
	if j < 0 {
		return "", fmt.Errorf("%s: no active gateway for %s", ns, prefix)
	}
	rest = rest[j+len(`"active_gateway": "`):]
	return rest[:strings.Index(rest, `"`)], nil
}

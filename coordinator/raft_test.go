package coordinator

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/logging"
)

// TestRaftPortIdleConnections is the attack of many TCP connections to the
// Raft port that never send a TLS hello: those past the per-source cap are
// closed at once, the rest when the handshake deadline passes, and another
// coordinator's connection gets through meanwhile. Before the limits all
// 2,000 of them were still open 33 s later.
func TestRaftPortIdleConnections(t *testing.T) {
	saved := raftLimits
	raftLimits.Timeout = 500 * time.Millisecond
	t.Cleanup(func() { raftLimits = saved })
	key, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, cliTLS, err := key.RaftTLS("c1")
	if err != nil {
		t.Fatal(err)
	}
	trans, err := newTLSTransport("127.0.0.1:0", "", srvTLS, cliTLS, logging.New(testWriter{t}, testLogLevel(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer trans.Close()
	addr := string(trans.LocalAddr())

	const n = 300
	start := time.Now()
	var closed atomic.Int64
	var wg sync.WaitGroup
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() { // an idle client: it only notices when it is closed
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1) // EOF or reset: the server closed it
			}
		}()
	}
	waitFor(t, 2*time.Second, "the connections past the per-source cap to be closed", func() bool {
		return closed.Load() >= int64(n-raftLimits.PerSourceWaiting)
	})

	// Another coordinator's handshake goes through meanwhile.
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	hs := time.Now()
	c, err := tls.DialWithDialer(d, "tcp", addr, cliTLS)
	if err != nil {
		t.Fatalf("another coordinator's connection during the flood: %v", err)
	}
	if took := time.Since(hs); took > 500*time.Millisecond {
		t.Fatalf("another coordinator's handshake took %s; want under 0.5 s", took.Round(time.Millisecond))
	}
	c.Close()

	waitFor(t, 3*time.Second, "every idle connection to be closed", func() bool { return closed.Load() == n })
	t.Logf("%d idle connections all closed after %s (handshake deadline %s)", n, time.Since(start).Round(time.Millisecond), raftLimits.Timeout)
	wg.Wait()
}

package vip

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// fakeFamily is a family whose responder socket is one end of a socket
// pair (the test holds the other, as the LAN) and which records its
// announcements.
type fakeFamily struct {
	answered bool  // what probe reports
	probeErr error // what probe fails with
	lan      int   // the test's end of the responder's socket pair

	probes    chan struct{}
	hold      chan struct{} // when set, probe waits for it to close
	announced chan time.Time
}

func newFakeFamily() *fakeFamily {
	return &fakeFamily{lan: -1, probes: make(chan struct{}, 16), announced: make(chan time.Time, 64)}
}

func (f *fakeFamily) names() (proto, announcement string) { return "fake", "fake announcement" }

func (f *fakeFamily) probe(*net.Interface, time.Duration) (bool, error) {
	f.probes <- struct{}{}
	if f.hold != nil {
		<-f.hold
	}
	return f.answered, f.probeErr
}

func (f *fakeFamily) listen(*net.Interface) (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	f.lan = fds[1]
	return fds[0], nil
}

// answer replies "is-at" to "who-has".
func (f *fakeFamily) answer(fd int, _ *net.Interface, frame []byte) {
	if string(frame) == "who-has" {
		unix.Write(fd, []byte("is-at"))
	}
}

func (f *fakeFamily) announce(*net.Interface) error {
	f.announced <- time.Now()
	return nil
}

func testVIP(fam family) *linuxVIP {
	return &linuxVIP{cfg: Config{Dev: "lo"}, fam: fam, log: slog.New(slog.DiscardHandler)}
}

// TestClaimProbeFirst: a VIP another host answers for is not taken, and a
// probe that fails says which protocol failed; neither opens a responder.
func TestClaimProbeFirst(t *testing.T) {
	defer goleak.VerifyNone(t)
	fam := newFakeFamily()
	fam.answered = true
	v := testVIP(fam)
	if err := v.Claim(); !errors.Is(err, ErrInUse) {
		t.Fatalf("claim of an answered address: %v; want ErrInUse", err)
	}
	fam.answered, fam.probeErr = false, errors.New("no socket")
	if err := v.Claim(); err == nil || !strings.HasPrefix(err.Error(), "fake probe: ") || !errors.Is(err, fam.probeErr) {
		t.Fatalf("claim with a failing probe: %v; want fake probe: %v", err, fam.probeErr)
	}
	if v.Owned() || fam.lan != -1 || len(fam.announced) != 0 {
		t.Fatalf("owned %v, responder %d, %d announcements after failed claims; want none", v.Owned(), fam.lan, len(fam.announced))
	}
}

// TestClaimLifecycle: a claimed VIP answers requests and announces itself
// on the takeover schedule, then every second; a second claim does not
// probe again; Release closes the responder's socket and stops both
// goroutines.
func TestClaimLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t)
	fam := newFakeFamily()
	v := testVIP(fam)
	if err := v.Claim(); err != nil {
		t.Fatalf("claim: %v", err)
	}
	defer v.Release()
	defer unix.Close(fam.lan)
	if !v.Owned() {
		t.Fatal("not owned after claim")
	}
	if err := v.Claim(); err != nil || len(fam.probes) != 1 {
		t.Fatalf("second claim: %v after %d probes; want nil after 1", err, len(fam.probes))
	}

	// The responder answers a request and ignores anything else.
	if _, err := unix.Write(fam.lan, []byte("noise")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fam.lan, []byte("who-has")); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(fam.lan, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 16)
	n, err := unix.Read(fam.lan, buf)
	if err != nil || string(buf[:n]) != "is-at" {
		t.Fatalf("reply %q, %v; want is-at", buf[:max(n, 0)], err)
	}

	// Six announcements at 0, 50, 150, 300, 500 and 750 ms, then one a
	// second later.
	wantGaps := []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond}
	var times []time.Time
	for len(times) < len(wantGaps)+1 {
		select {
		case at := <-fam.announced:
			times = append(times, at)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d announcements; want %d", len(times), len(wantGaps)+1)
		}
	}
	for i := 1; i < len(times); i++ {
		want := time.Second
		if i < len(wantGaps) {
			want = wantGaps[i]
		}
		if gap := times[i].Sub(times[i-1]); gap < want {
			t.Errorf("announcement %d came %v after the one before; want at least %v", i, gap, want)
		}
	}

	if err := v.Release(); err != nil || v.Owned() {
		t.Fatalf("release: %v, owned %v; want nil, false", err, v.Owned())
	}
	// The responder closes its end: sending to it is then refused.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := unix.Send(fam.lan, []byte("who-has"), unix.MSG_DONTWAIT); errors.Is(err, unix.ECONNREFUSED) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("responder socket still open after release")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReleaseDuringProbe: the probe runs without the lock, so Owned and
// Release answer while it waits on the wire, and a Release in that time
// cancels the claim: no responder is left running.
func TestReleaseDuringProbe(t *testing.T) {
	defer goleak.VerifyNone(t)
	fam := newFakeFamily()
	fam.hold = make(chan struct{})
	v := testVIP(fam)
	done := make(chan error, 1)
	go func() { done <- v.Claim() }()
	<-fam.probes // the claim is probing
	answered := make(chan bool, 1)
	go func() { owned := v.Owned(); v.Release(); answered <- owned }()
	select {
	case owned := <-answered:
		if owned {
			t.Fatal("owned while the claim is still probing")
		}
	case <-time.After(2 * time.Second):
		close(fam.hold)
		t.Fatal("Owned waited for the probe")
	}
	close(fam.hold)
	if err := <-done; !errors.Is(err, errReleased) {
		t.Fatalf("claim released while probing: %v; want errReleased", err)
	}
	if v.Owned() {
		t.Fatal("owned after a claim cancelled by Release")
	}
	if fam.lan != -1 {
		unix.Close(fam.lan)
	}
}

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a tiny server and client that runs inside the
// lab's namespaces (ip netns exec TESTBINARY): the server answers every TCP
// connection and UDP datagram with the source address it saw, which is how
// the tests check true source IPs.
const helperEnv = "MESHD_E2E_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "serve":
		os.Exit(serve(os.Getenv("MESHD_E2E_ADDR")))
	case "probe":
		os.Exit(probe(os.Getenv("MESHD_E2E_PROTO"), os.Getenv("MESHD_E2E_ADDR")))
	}
	os.Exit(m.Run())
}

func serve(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.(*net.UDPAddr).IP.String()+"\n"), from)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
		c.Close()
	}
}

func probe(proto, addr string) int {
	timeout := 2 * time.Second
	if d, err := time.ParseDuration(os.Getenv("MESHD_E2E_TIMEOUT")); err == nil {
		timeout = d
	}
	c, err := net.DialTimeout(proto, addr, timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		c.Write([]byte("hello"))
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(strings.TrimSpace(line))
	return 0
}

package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EtcNetns is where `ip netns exec NS` looks for files it bind-mounts over
// /etc for a command run in NS: /etc/netns/NS/resolv.conf becomes that
// command's /etc/resolv.conf.
var EtcNetns = "/etc/netns"

// resolvMarker starts every resolv.conf the lab writes; only files that
// carry it are removed.
const resolvMarker = "# written by the meshd lab; removed with its namespaces\n"

// SetResolver makes commands run in namespace name (through Exec, Wrap or
// `ip netns exec`) resolve names with the DNS server at nameserver,
// searching the domains in search. Close removes it.
func (l *Lab) SetResolver(name, nameserver string, search ...string) error {
	dir := filepath.Join(EtcNetns, l.NS(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "resolv.conf")
	if b, err := os.ReadFile(path); err == nil && !bytes.HasPrefix(b, []byte(resolvMarker)) {
		return fmt.Errorf("%s exists and was not written by the lab: leaving it alone", path)
	}
	var b strings.Builder
	b.WriteString(resolvMarker)
	fmt.Fprintf(&b, "nameserver %s\n", nameserver)
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	b.WriteString("options timeout:1 attempts:2\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// removeResolvers removes the resolv.conf files the lab wrote for
// namespaces with its prefix (this run's or a crashed one's), and their
// directories when nothing else is left in them. /etc/netns itself stays:
// other labs may be writing there.
func (l *Lab) removeResolvers() error {
	dirs, err := filepath.Glob(filepath.Join(EtcNetns, l.Prefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		path := filepath.Join(dir, "resolv.conf")
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasPrefix(b, []byte(resolvMarker)) {
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
			continue
		}
		os.Remove(dir) // only when empty
	}
	return errors.Join(errs...)
}

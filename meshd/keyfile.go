package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// keyFileMode is the mode of every file meshd writes a secret to.
const keyFileMode = 0o600

// writeKeyFile creates path with mode 0600 and writes data to it. It
// never replaces a file that exists: a cluster key overwritten by mistake
// cannot be recovered.
func writeKeyFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, keyFileMode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists already; it is not overwritten (remove it first if it should go)", path)
	}
	if err != nil {
		return err
	}
	// The umask cannot widen 0600, but a narrower one would leave the
	// owner unable to read it back.
	if err := f.Chmod(keyFileMode); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// looseKeyFile says why a secret file's mode is too open ("" when it is
// not): readable or writable by its group or by others.
func looseKeyFile(mode fs.FileMode) string {
	switch p := mode.Perm(); {
	case p&0o007 != 0:
		return fmt.Sprintf("others may access it (mode %04o)", p)
	case p&0o070 != 0:
		return fmt.Sprintf("its group may access it (mode %04o)", p)
	}
	return ""
}

// secretFile is a file that holds a secret, and what it is for people.
type secretFile struct{ what, path string }

// warnLooseKeyFiles prints a warning to w for each of the secret files
// that exists and that its group or others may read or write. A file that
// is absent is not its concern.
func warnLooseKeyFiles(w io.Writer, files ...secretFile) {
	for _, f := range files {
		if f.path == "" {
			continue
		}
		fi, err := os.Stat(f.path)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if why := looseKeyFile(fi.Mode()); why != "" {
			fmt.Fprintf(w, "meshd: warning: %s %s holds a secret and %s: chmod 600 %s\n", f.what, f.path, why, f.path)
		}
	}
}

// Package logging adapts the loggers of meshd's libraries (hashicorp/raft's
// hclog, memberlist's standard logger, pion's leveled loggers) to an
// injected *slog.Logger.
package logging

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// New returns a text logger to w at level.
func New(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// Discard is a logger that drops everything.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ParseLevel reads debug, info, warn or error.
func ParseLevel(s string) (slog.Level, bool) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err == nil
}

// FromEnv builds the default logger: stderr, level from MESHD_LOG_LEVEL.
func FromEnv() *slog.Logger {
	lvl := slog.LevelInfo
	if l, ok := ParseLevel(os.Getenv("MESHD_LOG_LEVEL")); ok {
		lvl = l
	}
	return New(os.Stderr, lvl)
}

// lineWriter turns "[LEVEL] text" lines into slog records.
type lineWriter struct{ l *slog.Logger }

func (w lineWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := strings.TrimSpace(string(line))
		lvl := slog.LevelInfo
		for tag, l := range map[string]slog.Level{"[TRACE]": slog.LevelDebug - 4, "[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[ERROR]": slog.LevelError} {
			if i := strings.Index(s, tag); i >= 0 {
				lvl = l
				s = strings.TrimSpace(s[i+len(tag):])
				break
			}
		}
		if s != "" && w.l.Enabled(context.Background(), lvl) {
			w.l.Log(context.Background(), lvl, s)
		}
	}
	return len(p), nil
}

func hclogLevel(l *slog.Logger) hclog.Level {
	switch {
	case l.Enabled(context.Background(), slog.LevelDebug):
		return hclog.Debug
	case l.Enabled(context.Background(), slog.LevelInfo):
		return hclog.Info
	case l.Enabled(context.Background(), slog.LevelWarn):
		return hclog.Warn
	}
	return hclog.Error
}

// HCLog adapts l for hashicorp libraries.
func HCLog(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Output:      lineWriter{l},
		Level:       hclogLevel(l),
		DisableTime: true,
	})
}

// StdLog adapts l for libraries that take a *log.Logger (memberlist), whose
// lines carry "[LEVEL]" tags.
func StdLog(l *slog.Logger) *log.Logger {
	return log.New(lineWriter{l}, "", 0)
}

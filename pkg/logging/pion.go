package logging

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// Pion adapts l for pion's libraries (TURN, STUN). Their Info messages are
// per-packet chatter that a remote party can provoke at will ("no
// permission for ..."), so they are logged at debug level; their Debug
// messages describe every packet and go below debug (PionPacketLevel),
// where --log-level debug does not show them; warnings and errors keep
// theirs.
func Pion(l *slog.Logger) logging.LoggerFactory { return pionFactory{l} }

// PionPacketLevel is the level of pion's per-packet Debug messages.
const PionPacketLevel = slog.LevelDebug - 2

type pionFactory struct{ l *slog.Logger }

func (f pionFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.l.With("scope", scope)}
}

type pionLogger struct{ l *slog.Logger }

var _ logging.LeveledLogger = pionLogger{}

func (p pionLogger) log(lvl slog.Level, msg string) {
	p.l.Log(context.Background(), lvl, msg)
}

func (p pionLogger) logf(lvl slog.Level, format string, args ...any) {
	if p.l.Enabled(context.Background(), lvl) {
		p.l.Log(context.Background(), lvl, fmt.Sprintf(format, args...))
	}
}

func (p pionLogger) Trace(msg string)                  { p.log(PionPacketLevel-4, msg) }
func (p pionLogger) Tracef(format string, args ...any) { p.logf(PionPacketLevel-4, format, args...) }
func (p pionLogger) Debug(msg string)                  { p.log(PionPacketLevel, msg) }
func (p pionLogger) Debugf(format string, args ...any) { p.logf(PionPacketLevel, format, args...) }
func (p pionLogger) Info(msg string)                   { p.log(slog.LevelDebug, msg) }
func (p pionLogger) Infof(format string, args ...any)  { p.logf(slog.LevelDebug, format, args...) }
func (p pionLogger) Warn(msg string)                   { p.log(slog.LevelWarn, msg) }
func (p pionLogger) Warnf(format string, args ...any)  { p.logf(slog.LevelWarn, format, args...) }
func (p pionLogger) Error(msg string)                  { p.log(slog.LevelError, msg) }
func (p pionLogger) Errorf(format string, args ...any) { p.logf(slog.LevelError, format, args...) }

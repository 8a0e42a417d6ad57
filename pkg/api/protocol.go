package api

import (
	"fmt"
	"strconv"
)

// CheckProtocol decides whether a coordinator of this version serves an
// agent that speaks protocol v: it does from MinProtocolVersion to
// ProtocolVersion. A newer agent gets CodeProtocolTooNew, an older one
// CodeVersion.
func CheckProtocol(v int) *Error { return checkProtocol(v, MinProtocolVersion, ProtocolVersion) }

func checkProtocol(v, oldest, newest int) *Error {
	switch {
	case v > newest:
		return Errorf(CodeProtocolTooNew, "this coordinator speaks protocol %d, the agent %d: upgrade the coordinators first", newest, v)
	case v < oldest:
		return Errorf(CodeVersion, "this coordinator serves agents of protocol %s, the agent speaks %d: upgrade the agent", protocolRange(oldest, newest), v)
	}
	return nil
}

// CheckProtocolHeader checks the HeaderProtocol value h of an agent's
// request with CheckProtocol; a request without one is not checked.
func CheckProtocolHeader(h string) *Error {
	if h == "" {
		return nil
	}
	v, err := strconv.Atoi(h)
	if err != nil {
		return Errorf(CodeBadRequest, "%s header %q is not a protocol version", HeaderProtocol, h)
	}
	return CheckProtocol(v)
}

// IsProtocol reports whether err is a coordinator's refusal of the
// agent's protocol version, in either direction.
func IsProtocol(err error) bool {
	return IsCode(err, CodeVersion) || IsCode(err, CodeProtocolTooNew)
}

// protocolRange is how a coordinator describes the protocols it serves.
func protocolRange(oldest, newest int) string {
	if oldest == newest {
		return fmt.Sprint(newest)
	}
	return fmt.Sprintf("%d to %d", oldest, newest)
}

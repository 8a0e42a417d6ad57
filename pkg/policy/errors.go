package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels that an *Error wraps: errors.Is(err, ErrBadPorts) tells what
// kind of problem a policy has without reading the message.
var (
	ErrSyntax        = errors.New("not a policy")                       // not JSON, or JSON of the wrong shape
	ErrUnknownField  = errors.New("unknown field")                      // a field this version does not know (Parse only)
	ErrTooLarge      = errors.New("too large")                          // over one of the Max limits
	ErrAction        = errors.New("unsupported action")                 // an action other than "accept"
	ErrEmpty         = errors.New("empty")                              // a required list or value is missing
	ErrSelectorKind  = errors.New("unknown selector kind")              // "group:x", "db", ...
	ErrBadName       = errors.New("invalid tag or peer name")           // "tag:DB", "peer:-x"
	ErrBadCIDR       = errors.New("invalid address or CIDR")            // "10.0.0.0/33", host bits set
	ErrBadPorts      = errors.New("invalid ports")                      // "70000", "9-1", missing :PORTS
	ErrBadProto      = errors.New("unsupported protocol")               // "sctp"
	ErrUnknownTag    = errors.New("no such tag in the vnet")            // Check
	ErrUnknownPeer   = errors.New("no such peer in the vnet")           // Check
	ErrTestFailed    = errors.New("policy test failed")                 // Check: a test's expectation does not hold
	ErrBadTestTarget = errors.New("a test names one host, not a range") // "*" or a CIDR in a test
)

// Error is one problem in a policy, located by section, index and field.
type Error struct {
	// Section is "acls" or "tests", or "" for the policy as a whole.
	Section string
	// Index is the rule's or test's position in Section, from 0; -1 when
	// Section is "".
	Index int
	// Name is the rule's or test's name, if it has one.
	Name string
	// Field is the JSON field at fault: "src", "dst", "proto", "action",
	// "accept", "deny", or the unknown field's name.
	Field string
	// Value is the offending entry as written, if there is one.
	Value string
	// Err is one of the sentinels above.
	Err error
	// Detail says what is wrong and, where it can, what to write instead.
	Detail string
}

// Where is the location of the problem: `acls[2] ("db access") dst`.
func (e *Error) Where() string {
	var b strings.Builder
	if e.Section != "" {
		fmt.Fprintf(&b, "%s[%d]", e.Section, e.Index)
		if e.Name != "" {
			fmt.Fprintf(&b, " (%q)", e.Name)
		}
	}
	if e.Field != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Field)
	}
	return b.String()
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Where())
	if e.Value != "" {
		fmt.Fprintf(&b, " %q", e.Value)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found in a policy, in the order of the document.
// errors.As(err, &e) with e an *Error finds the first.
type Errors []*Error

// maxErrors caps how many problems one validation reports.
const maxErrors = 20

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// errs collects problems; err returns nil when there are none.
type errs struct{ list Errors }

func (c *errs) add(e *Error) {
	if len(c.list) < maxErrors {
		c.list = append(c.list, e)
	}
}

func (c *errs) full() bool { return len(c.list) >= maxErrors }

func (c *errs) err() error {
	if len(c.list) == 0 {
		return nil
	}
	return c.list
}

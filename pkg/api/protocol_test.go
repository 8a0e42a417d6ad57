package api

import (
	"strconv"
	"testing"
)

func TestCheckProtocol(t *testing.T) {
	for _, tt := range []struct {
		name                  string
		agent, oldest, newest int
		code                  string // "" accepted
	}{
		{name: "same version", agent: 2, oldest: 1, newest: 2},
		{name: "agent one behind", agent: 1, oldest: 1, newest: 2},
		{name: "agent newer", agent: 3, oldest: 1, newest: 2, code: CodeProtocolTooNew},
		{name: "agent too old", agent: 1, oldest: 2, newest: 3, code: CodeVersion},
		{name: "no version", agent: 0, oldest: 1, newest: 1, code: CodeVersion},
		{name: "single version", agent: 1, oldest: 1, newest: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := checkProtocol(tt.agent, tt.oldest, tt.newest)
			got := ""
			if e != nil {
				got = e.Code
				if e.Message == "" {
					t.Error("refusal without a message")
				}
			}
			if got != tt.code {
				t.Fatalf("agent %d against %d..%d: got %q; want %q", tt.agent, tt.oldest, tt.newest, got, tt.code)
			}
		})
	}
}

func TestCheckProtocolHeader(t *testing.T) {
	for _, tt := range []struct {
		header, code string
	}{
		{"", ""}, // not sent: not checked
		{strconv.Itoa(ProtocolVersion), ""},
		{strconv.Itoa(MinProtocolVersion), ""},
		{strconv.Itoa(ProtocolVersion + 1), CodeProtocolTooNew},
		{strconv.Itoa(MinProtocolVersion - 1), CodeVersion},
		{"one", CodeBadRequest},
	} {
		got := ""
		if e := CheckProtocolHeader(tt.header); e != nil {
			got = e.Code
		}
		if got != tt.code {
			t.Errorf("header %q: got %q; want %q", tt.header, got, tt.code)
		}
	}
}

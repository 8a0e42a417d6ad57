package token

import (
	"errors"
	"strings"
	"testing"
)

func mustNew(t testing.TB, kind Kind, urls ...string) *Token {
	t.Helper()
	var pin [32]byte
	pin[0], pin[31] = 1, 2
	tok, err := New(kind, NewID(), pin, urls)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		kind Kind
		urls []string
	}{
		{"join one url", KindJoin, []string{"https://127.0.0.1:8443"}},
		{"admin three urls", KindAdmin, []string{"https://a:1", "https://b:2", "https://[::1]:3"}},
		{"peer no urls", KindPeer, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := mustNew(t, tt.kind, tt.urls...)
			got, err := ParseKind(" "+tok.String()+"\n", tt.kind)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got.String() != tok.String() {
				t.Fatalf("got %q; want %q", got.String(), tok.String())
			}
			if !got.MatchesHash(tok.SecretHash()) {
				t.Fatalf("secret hash does not match")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	good := mustNew(t, KindJoin, "https://127.0.0.1:1").String()
	for _, tt := range []struct {
		name, in string
		want     error
	}{
		{"empty", "", ErrMalformed},
		{"no prefix", "hello", ErrMalformed},
		{"bad base64", "meshdj_!!!", ErrMalformed},
		{"truncated", good[:len(good)-5], ErrMalformed},
		{"trailing", good + "AAAA", ErrMalformed},
		{"kind mismatch", "meshda_" + good[len("meshdj_"):], ErrMalformed},
		{"too long", "meshdj_" + strings.Repeat("A", MaxEncoded), ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v; want %v", err, tt.want)
			}
		})
	}
	if _, err := ParseKind(good, KindAdmin); !errors.Is(err, ErrKind) {
		t.Fatalf("got %v; want %v", err, ErrKind)
	}
	var pin [32]byte
	if _, err := New(KindJoin, "id", pin, []string{"http://plain:80"}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("http url accepted: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(mustNew(f, KindJoin, "https://127.0.0.1:8443").String())
	f.Add(mustNew(f, KindAdmin, "https://a:1", "https://b:2").String())
	f.Add(mustNew(f, KindPeer).String())
	f.Add("meshdj_")
	f.Add("meshdx_AQ")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(tok.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", tok.String(), err)
		}
		if again.String() != tok.String() {
			t.Fatalf("round trip changed the token")
		}
	})
}

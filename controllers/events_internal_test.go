package controllers

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEventMessageFitsTheAPIServer(t *testing.T) {
	cases := []struct {
		name, arg string
		cut       bool
	}{
		{"short", "cell-0 (refused)", false},
		{"exactly the limit", strings.Repeat("a", maxEventMessage-len("could not announce routing epoch 7 to cells: ")), false},
		{"one over", strings.Repeat("a", maxEventMessage-len("could not announce routing epoch 7 to cells: ")+1), true},
		{"many cells", strings.Repeat("history-cell-7 (dial tcp: lookup history-cell-7-mysql-0: no such host), ", 40), true},
		// A cut must not split a multi-byte rune: the apiserver refuses invalid UTF-8 too.
		{"multibyte at the cut", strings.Repeat("é", maxEventMessage), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := EventAnnounceFailed.format(int64(7), c.arg)
			if len(got) > maxEventMessage {
				t.Fatalf("%d bytes, the apiserver stores at most %d", len(got), maxEventMessage)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("not valid UTF-8 after the cut: %q", got[len(got)-20:])
			}
			if cut := strings.HasSuffix(got, "(truncated)"); cut != c.cut {
				t.Fatalf("truncated=%v, want %v: %q", cut, c.cut, got)
			}
			if !strings.HasPrefix(got, "could not announce routing epoch 7 to cells: ") {
				t.Fatalf("the message's start is lost: %q", got)
			}
		})
	}
}

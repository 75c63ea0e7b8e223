package packet

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateWrap(t *testing.T) {
	good := WrapRequest{Sender: "alice", RequestID: "req-1", TotalCents: 10000, Count: 10, Kind: KindRandom, Group: "g1", Greeting: "恭喜发财"}
	cases := []struct {
		name   string
		mutate func(*WrapRequest)
		field  string // "" = valid
	}{
		{"valid", func(*WrapRequest) {}, ""},
		{"valid fixed", func(r *WrapRequest) { r.Kind = KindFixed }, ""},
		{"one cent per share", func(r *WrapRequest) { r.TotalCents = 10 }, ""},
		{"no sender", func(r *WrapRequest) { r.Sender = "" }, "sender"},
		{"sender with slash", func(r *WrapRequest) { r.Sender = "a/b" }, "sender"},
		{"sender too long", func(r *WrapRequest) { r.Sender = strings.Repeat("a", 65) }, "sender"},
		{"no request id", func(r *WrapRequest) { r.RequestID = "" }, "requestId"},
		{"request id with space", func(r *WrapRequest) { r.RequestID = "a b" }, "requestId"},
		{"bad kind", func(r *WrapRequest) { r.Kind = "lucky" }, "kind"},
		{"zero count", func(r *WrapRequest) { r.Count = 0 }, "count"},
		{"negative count", func(r *WrapRequest) { r.Count = -1 }, "count"},
		{"count above limit", func(r *WrapRequest) { r.Count = 1001 }, "count"},
		{"zero total", func(r *WrapRequest) { r.TotalCents = 0 }, "totalCents"},
		{"negative total", func(r *WrapRequest) { r.TotalCents = -5 }, "totalCents"},
		{"total above limit", func(r *WrapRequest) { r.TotalCents = 2_000_001 }, "totalCents"},
		{"overflowing total", func(r *WrapRequest) { r.TotalCents = 1<<63 - 1 }, "totalCents"},
		{"less than a cent per share", func(r *WrapRequest) { r.TotalCents = 9 }, "totalCents"},
		{"fixed uneven", func(r *WrapRequest) { r.Kind = KindFixed; r.TotalCents = 10001 }, "totalCents"},
		{"group with space", func(r *WrapRequest) { r.Group = "a b" }, "group"},
		{"greeting too long", func(r *WrapRequest) { r.Greeting = strings.Repeat("好", 129) }, "greeting"},
		{"greeting control char", func(r *WrapRequest) { r.Greeting = "hi\x00" }, "greeting"},
		{"greeting bad utf8", func(r *WrapRequest) { r.Greeting = "\xff" }, "greeting"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := good
			c.mutate(&r)
			err := ValidateWrap(r, DefaultLimits)
			if c.field == "" {
				if err != nil {
					t.Fatalf("ValidateWrap(%+v) = %v, want nil", r, err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateWrap(%+v) = %v, want a FieldError", r, err)
			}
			if fe.Field != c.field {
				t.Fatalf("field = %q, want %q (%v)", fe.Field, c.field, err)
			}
		})
	}
}

func TestValidatePay(t *testing.T) {
	cases := []struct {
		r     PayRequest
		field string
	}{
		{PayRequest{PaymentTxnID: "txn-1", AmountCents: 100}, ""},
		{PayRequest{PaymentTxnID: "", AmountCents: 100}, "paymentTxnId"},
		{PayRequest{PaymentTxnID: "txn-1", AmountCents: 0}, "amountCents"},
		{PayRequest{PaymentTxnID: "txn-1", AmountCents: -1}, "amountCents"},
		{PayRequest{PaymentTxnID: "txn-1", AmountCents: 1 << 62}, "amountCents"},
	}
	for _, c := range cases {
		err := ValidatePay(c.r, DefaultLimits)
		var fe *FieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("ValidatePay(%+v) = %v", c.r, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field):
			t.Errorf("ValidatePay(%+v) = %v, want field %s", c.r, err, c.field)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	for _, in := range []string{"", "1764095004000:384050653036545042", "0:0"} {
		c, err := ParseCursor("before", in)
		if err != nil {
			t.Fatalf("ParseCursor(%q): %v", in, err)
		}
		if got := c.String(); got != in {
			t.Errorf("ParseCursor(%q).String() = %q", in, got)
		}
	}
	for _, bad := range []string{"x", "1:", ":1", "-1:5", "5:-1", "1.5:2", "1:2:3"} {
		if _, err := ParseCursor("before", bad); err == nil {
			t.Errorf("ParseCursor(%q) accepted", bad)
		}
	}
}

package routing

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParsePacketID(t *testing.T) {
	cases := []struct {
		in   string
		want int64 // 0: refused
	}{
		{"5", 5},
		{"1764095004000384", 1764095004000384},
		{"9223372036854775807", 9223372036854775807},
		{"", 0},
		{"0", 0},
		{"+5", 0},
		{"-5", 0},
		{"05", 0},
		{"00", 0},
		{" 5", 0},
		{"5 ", 0},
		{"5\n", 0},
		{"0x5", 0},
		{"5e3", 0},
		{"1_000", 0},
		{"5.0", 0},
		{"abc", 0},
		{"٥", 0},                    // a non-ASCII digit
		{"9223372036854775808", 0},  // one above int64
		{"12345678901234567890", 0}, // 20 digits
		{"99999999999999999999", 0}, // far above
	}
	for _, c := range cases {
		got, err := ParsePacketID(c.in)
		switch {
		case c.want == 0 && err == nil:
			t.Errorf("ParsePacketID(%q) = %d, want refused", c.in, got)
		case c.want != 0 && (err != nil || got != c.want):
			t.Errorf("ParsePacketID(%q) = %d, %v; want %d", c.in, got, err, c.want)
		case err != nil && !strings.Contains(err.Error(), "packet id"):
			t.Errorf("ParsePacketID(%q) error %q does not say what it read", c.in, err)
		}
	}
}

func TestHistoryCursor(t *testing.T) {
	for _, in := range []string{"0:0", "1764095004000:384050653036545042", "1:9223372036854775807"} {
		c, err := ParseHistoryCursor(in)
		if err != nil {
			t.Fatalf("ParseHistoryCursor(%q): %v", in, err)
		}
		if got := c.String(); got != in {
			t.Errorf("ParseHistoryCursor(%q).String() = %q", in, got)
		}
	}
	for _, bad := range []string{"", "x", "1:", ":1", "-1:5", "5:-1", "+1:5", "1:+5", "01:5", "1:05",
		"1.5:2", "1:2:3", " 1:2", "1:2 ", "9223372036854775808:1"} {
		if c, err := ParseHistoryCursor(bad); err == nil {
			t.Errorf("ParseHistoryCursor(%q) = %+v, want refused", bad, c)
		}
	}
	order := []HistoryCursor{{AtMillis: 9, PacketID: 1}, {AtMillis: 5, PacketID: 7}, {AtMillis: 5, PacketID: 3}, {AtMillis: 0, PacketID: 99}}
	for i := range order {
		for j := range order {
			if got, want := order[i].NewerThan(order[j]), i < j; got != want {
				t.Errorf("%v.NewerThan(%v) = %v, want %v", order[i], order[j], got, want)
			}
		}
	}
}

func TestWriteErrorAndErrorCode(t *testing.T) {
	cases := []struct {
		name, code, field, want string
	}{
		{"with field", CodeInvalidInput, "limit", `{"code":"invalid_input","message":"m","field":"limit"}` + "\n"},
		{"no field omits it", CodeSlotUnavailable, "", `{"code":"slot_unavailable","message":"m"}` + "\n"},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		WriteError(rec, 409, c.code, c.field, "m")
		if rec.Code != 409 || rec.Header().Get("Content-Type") != "application/json" || rec.Body.String() != c.want {
			t.Errorf("%s: %d %q %q, want 409 application/json %q", c.name, rec.Code, rec.Header().Get("Content-Type"), rec.Body.String(), c.want)
		}
		if got := ErrorCode(rec.Body.Bytes()); got != c.code {
			t.Errorf("%s: ErrorCode = %q, want %q", c.name, got, c.code)
		}
	}
	for _, body := range []string{"", "not json", "[1]", `{"message":"no code"}`} {
		if got := ErrorCode([]byte(body)); got != "" {
			t.Errorf("ErrorCode(%q) = %q, want \"\"", body, got)
		}
	}
}

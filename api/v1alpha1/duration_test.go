package v1alpha1

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The CRD's pattern and the decoder must agree: what the API server admits decodes as a
// duration, and what it refuses is what time.ParseDuration refuses.
func TestDurationPatternMatchesParseDuration(t *testing.T) {
	re := regexp.MustCompile(DurationPattern)
	for _, s := range []string{"0", "-0", "+0", "1m", "90s", "1h30m", "2m0.5s", "1.5h", ".5s", "1.s", "-1m", "+2h", "1us", "1µs", "1μs", "300ms", "5ns",
		"abc", "", "1", "24", "1d", "5 minutes", " 1m", "1m ", "m", "1mm", "--1m", "1e3s", "1h-2m", "0x10s"} {
		_, err := time.ParseDuration(s)
		if got, want := re.MatchString(s), err == nil; got != want {
			t.Errorf("%q: pattern matches %v, time.ParseDuration accepts %v", s, got, want)
		}
	}
}

func TestDurationDecodesAnyStoredValue(t *testing.T) {
	for _, tc := range []struct {
		json    string
		want    time.Duration
		invalid string
	}{
		{`"2m"`, 2 * time.Minute, ""},
		{`"abc"`, 0, `"abc"`},
		{`""`, 0, `""`},
		{`90`, 0, `90`},
		{`{"x":1}`, 0, `{"x":1}`},
	} {
		var spec RedPacketSetSpec
		if err := json.Unmarshal([]byte(`{"rebalanceDelay":`+tc.json+`}`), &spec); err != nil {
			t.Fatalf("%s: decoding failed: %v", tc.json, err)
		}
		d := spec.RebalanceDelay
		if d.Duration != tc.want || d.Invalid != tc.invalid {
			t.Errorf("%s: decoded %v / %q, want %v / %q", tc.json, d.Duration, d.Invalid, tc.want, tc.invalid)
		}
		errs := spec.StoredValueErrors()
		if (len(errs) > 0) != (tc.invalid != "") {
			t.Errorf("%s: stored value errors %v", tc.json, errs)
		}
		if len(errs) > 0 && !strings.HasPrefix(errs[0].Error(), "spec.rebalanceDelay: ") {
			t.Errorf("%s: error does not name the field: %v", tc.json, errs[0])
		}
		// Written back as it was stored: an update never rewrites what the user wrote.
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if tc.invalid != "" && string(out) != tc.json {
			t.Errorf("%s re-encoded as %s", tc.json, out)
		}
	}
	if out, _ := json.Marshal(Duration{Duration: 90 * time.Second}); string(out) != `"1m30s"` {
		t.Errorf("90s encoded as %s", out)
	}
}

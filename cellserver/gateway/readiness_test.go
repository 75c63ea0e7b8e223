package gateway

import (
	"slices"
	"testing"
)

// TestJudgeToleratesSlowProbes: a ready server survives fewer than softFailures unanswered
// probes in a row (a busy server answers late), leaves on the threshold or at once when it
// answers "not ready", and a server never ready is not let in by a timeout.
func TestJudgeToleratesSlowProbes(t *testing.T) {
	r := &readiness{softFailures: 3, ready: map[string][]string{}}
	servers := []string{"a", "b"}
	round := func(a, b probeOutcome) []string {
		got := r.judge("c", servers, []probeOutcome{a, b})
		r.ready["c"] = got
		return got
	}
	steps := []struct {
		a, b probeOutcome
		want []string
	}{
		{probeNoAnswer, probeReady, []string{"b"}},      // a was never ready: a timeout does not let it in
		{probeReady, probeReady, []string{"a", "b"}},    //
		{probeNoAnswer, probeReady, []string{"a", "b"}}, // 1 miss: a stays
		{probeNoAnswer, probeReady, []string{"a", "b"}}, // 2 misses: a stays
		{probeNoAnswer, probeReady, []string{"b"}},      // 3 misses: a leaves
		{probeNoAnswer, probeReady, []string{"b"}},      // and stays out until it answers
		{probeReady, probeNotReady, []string{"a"}},      // b says not ready: out at once
		{probeReady, probeNoAnswer, []string{"a"}},      // b was out: a timeout keeps it out
		{probeReady, probeReady, []string{"a", "b"}},
	}
	for i, st := range steps {
		if got := round(st.a, st.b); !slices.Equal(got, st.want) {
			t.Fatalf("round %d: ready %v, want %v", i, got, st.want)
		}
	}
}

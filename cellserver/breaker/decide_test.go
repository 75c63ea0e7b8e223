package breaker

import (
	"testing"
	"time"
)

// step is one event in a table's life: an observed call or a Tripped question, at an offset
// from the start, with what the breaker must answer or become.
type step struct {
	at      time.Duration
	op      string // "ok", "fail", "tripped?"
	want    bool   // for "tripped?"
	wantSt  State
	checkSt bool
}

func ok(at time.Duration) step   { return step{at: at, op: "ok"} }
func fail(at time.Duration) step { return step{at: at, op: "fail"} }
func ask(at time.Duration, want bool) step {
	return step{at: at, op: "tripped?", want: want}
}
func state(at time.Duration, s State) step {
	return step{at: at, op: "state", wantSt: s, checkSt: true}
}

func repeat(n int, f func(time.Duration) step, at time.Duration) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = f(at)
	}
	return out
}

func seq(parts ...any) []step {
	var out []step
	for _, p := range parts {
		switch v := p.(type) {
		case step:
			out = append(out, v)
		case []step:
			out = append(out, v...)
		}
	}
	return out
}

func TestDecisions(t *testing.T) {
	policy := Policy{ConsecutiveFailures: 5, ErrorRatio: 0.5, MinCalls: 20, Window: 10 * time.Second, CoolDown: 5 * time.Second}
	s := time.Second
	alternating := func(n int, at time.Duration) []step {
		var out []step
		for i := 0; i < n; i++ {
			if i%2 == 0 {
				out = append(out, fail(at))
			} else {
				out = append(out, ok(at))
			}
		}
		return out
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"closed answers not tripped", seq(ok(0), ask(0, false), state(0, Closed))},
		{"five failures in a row trip at once", seq(repeat(4, fail, 0), ask(0, false), fail(0), ask(0, true), state(0, Open))},
		{"a success resets the run", seq(repeat(4, fail, 0), ok(0), repeat(4, fail, 0), ask(0, false))},
		{"error ratio trips once min calls reached", seq(alternating(19, 0), ask(0, false), state(0, Closed),
			ok(0), state(0, Open), ask(0, true))},
		{"ratio below threshold never trips", seq(alternating(9, 0), repeat(30, ok, 0), ask(0, false))},
		{"a new window forgets old calls", seq(alternating(18, 0), alternating(3, 10*s), state(10*s, Closed))},
		{"stays tripped through the cool-down despite successes", seq(repeat(5, fail, 0), ok(1*s), ok(4*s),
			ask(4*s, true), state(4*s, Open))},
		{"after the cool-down one probe is granted", seq(repeat(5, fail, 0), ask(5*s, false), state(5*s, HalfOpen),
			ask(5*s, true), ask(9*s, true))},
		{"a successful probe closes", seq(repeat(5, fail, 0), ask(5*s, false), ok(6*s), state(6*s, Closed),
			ask(6*s, false), ask(6*s, false))},
		{"a failed probe re-opens for another cool-down", seq(repeat(5, fail, 0), ask(5*s, false), fail(6*s),
			state(6*s, Open), ask(10*s, true), ask(11*s, false))},
		{"an unanswered probe is granted again after a cool-down", seq(repeat(5, fail, 0), ask(5*s, false),
			ask(9*s, true), ask(10*s, false), ask(10*s, true))},
		{"a call after the cool-down decides without an explicit probe", seq(repeat(5, fail, 0), ok(5*s),
			state(5*s, Closed), ask(5*s, false))},
		{"closing starts a clean window", seq(alternating(20, 0), state(0, Open), ask(5*s, false), ok(5*s),
			fail(5*s), ask(5*s, false), state(5*s, Closed))},
	}
	start := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var st tableState
			for i, sp := range c.steps {
				now := start.Add(sp.at)
				switch sp.op {
				case "ok":
					st.observe(now, false, policy)
				case "fail":
					st.observe(now, true, policy)
				case "tripped?":
					if got, _, _ := st.tripped(now, policy); got != sp.want {
						t.Fatalf("step %d at %v: tripped = %v, want %v (state %v)", i, sp.at, got, sp.want, st.state)
					}
				case "state":
					if st.state != sp.wantSt {
						t.Fatalf("step %d at %v: state %v, want %v", i, sp.at, st.state, sp.wantSt)
					}
				}
			}
		})
	}
}

func TestPolicyDefaults(t *testing.T) {
	p := Policy{}.withDefaults()
	if p.ConsecutiveFailures != 5 || p.ErrorRatio != 0.5 || p.MinCalls != 20 || p.Window != 10*time.Second || p.CoolDown != 5*time.Second {
		t.Fatalf("defaults %+v", p)
	}
}

func TestPendingWindowsStayOrderedAndBounded(t *testing.T) {
	var e entry
	w := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	for i := 0; i < 5; i++ {
		e.addLocked(w.Add(time.Duration(i)*10*time.Second), 1, 2, 3)
	}
	if len(e.pending) != 3 || !e.pending[0].window.Equal(w.Add(20*time.Second)) {
		t.Fatalf("pending %+v", e.pending)
	}
	e.addLocked(w.Add(30*time.Second), 1, 1, 3) // merge into an existing window
	e.addLocked(w.Add(25*time.Second), 1, 1, 3) // put back an older one in order
	if len(e.pending) != 3 || !e.pending[0].window.Equal(w.Add(25*time.Second)) || e.pending[1].calls != 3 {
		t.Fatalf("pending %+v", e.pending)
	}
}

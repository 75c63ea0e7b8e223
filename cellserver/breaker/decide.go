package breaker

import "time"

// State is a logical table's breaker state.
type State int

// The classic three states. Closed lets IDs be issued; Open stops issuing; HalfOpen lets one
// probe through after the cool-down and decides on its outcome.
const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Policy is when a table trips and how it recovers.
type Policy struct {
	// ConsecutiveFailures trips the table after this many failures in a row (default 5).
	ConsecutiveFailures int
	// ErrorRatio trips the table when errors/calls in the current window reach it (default
	// 0.5), once the window has at least MinCalls calls (default 20).
	ErrorRatio float64
	MinCalls   int
	// Window is the counting window, both for the ratio and for what is published to the
	// control schema (default 10s). Windows are aligned to multiples of Window.
	Window time.Duration
	// CoolDown is how long a tripped table stays open before a probe is let through, and
	// how long a granted probe may go unanswered before another is granted (default 5s).
	CoolDown time.Duration
}

func (p Policy) withDefaults() Policy {
	if p.ConsecutiveFailures <= 0 {
		p.ConsecutiveFailures = 5
	}
	if p.ErrorRatio <= 0 || p.ErrorRatio > 1 {
		p.ErrorRatio = 0.5
	}
	if p.MinCalls <= 0 {
		p.MinCalls = 20
	}
	if p.Window <= 0 {
		p.Window = 10 * time.Second
	}
	if p.CoolDown <= 0 {
		p.CoolDown = 5 * time.Second
	}
	return p
}

// tableState is the pure decision state of one logical table. It does no I/O and reads no
// clock: every method is given now, so the decisions are table-tested with a fake clock.
type tableState struct {
	state       State
	consecutive int       // failures in a row (closed)
	window      time.Time // start of the current window
	calls       int64     // in the current window
	errors      int64     // in the current window
	openedAt    time.Time // when the table tripped (open)
	probeAt     time.Time // when a probe was granted (half-open); zero if none
}

// transition reports a state change caused by a call, for logs and metrics.
type transition struct {
	from, to State
}

func (s *tableState) roll(now time.Time, p Policy) {
	w := now.Truncate(p.Window)
	if w.After(s.window) {
		s.window, s.calls, s.errors = w, 0, 0
	}
}

// observe records one call's outcome and applies the policy.
func (s *tableState) observe(now time.Time, failed bool, p Policy) (transition, bool) {
	s.roll(now, p)
	s.calls++
	if failed {
		s.errors++
	}
	from := s.state
	switch s.state {
	case Closed:
		if failed {
			s.consecutive++
		} else {
			s.consecutive = 0
		}
		if s.consecutive >= p.ConsecutiveFailures ||
			(s.calls >= int64(p.MinCalls) && float64(s.errors) >= p.ErrorRatio*float64(s.calls)) {
			s.trip(now)
		}
	case Open:
		// Outcomes while open are counted but do not close the table before the cool-down:
		// calls to existing packets can succeed while the failing operation (often the
		// inserts of new packets) still fails.
		if s.coolDownOver(now, p) {
			s.state = HalfOpen
			s.decideProbe(now, failed)
		}
	case HalfOpen:
		s.decideProbe(now, failed)
	}
	return transition{from, s.state}, from != s.state
}

// decideProbe closes the table on a success and re-opens it on a failure. Any call counts as
// the probe, not only the granted one: it is equally good evidence.
func (s *tableState) decideProbe(now time.Time, failed bool) {
	if failed {
		s.trip(now)
		return
	}
	s.state, s.consecutive, s.probeAt = Closed, 0, time.Time{}
	// A fresh window, so the failures that tripped it do not trip it again at once.
	s.calls, s.errors = 0, 0
}

func (s *tableState) trip(now time.Time) {
	s.state, s.openedAt, s.probeAt, s.consecutive = Open, now, time.Time{}, 0
}

func (s *tableState) coolDownOver(now time.Time, p Policy) bool {
	return !now.Before(s.openedAt.Add(p.CoolDown))
}

// tripped answers whether new IDs must avoid the table. In half-open it grants one probe (a
// false answer) and then answers true until the probe's outcome arrives or the probe is
// overdue by a cool-down, when it grants another.
func (s *tableState) tripped(now time.Time, p Policy) (bool, transition, bool) {
	from := s.state
	switch s.state {
	case Closed:
		return false, transition{}, false
	case Open:
		if !s.coolDownOver(now, p) {
			return true, transition{}, false
		}
		s.state = HalfOpen
		s.probeAt = now
		return false, transition{from, HalfOpen}, true
	default: // HalfOpen
		if !s.probeAt.IsZero() && now.Before(s.probeAt.Add(p.CoolDown)) {
			return true, transition{}, false
		}
		s.probeAt = now
		return false, transition{}, false
	}
}

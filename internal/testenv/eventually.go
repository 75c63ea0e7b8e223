package testenv

import (
	"errors"
	"testing"
	"time"
)

// Eventually polls cond until it returns nil, failing tb with what and cond's last error once
// within has passed. It is the tests' one way to wait: no sleep stands in for
// synchronisation. The poll interval is within/300, from 5 ms to 100 ms: a short wait reacts
// quickly, and a long one (an operator's reconcile, often with a condition that touches an
// object to prompt it) polls no faster than every 100 ms, or its own writes would keep the
// reconciler's status updates conflicting.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() error) {
	tb.Helper()
	every := min(max(within/300, 5*time.Millisecond), 100*time.Millisecond)
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %v", within, what, err)
		}
		time.Sleep(every)
	}
}

var errNotYet = errors.New("condition not met yet")

// Holds adapts a yes/no condition to Eventually.
func Holds(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}
}

// Received adapts a channel to Eventually: the condition holds once a value arrives.
func Received[T any](ch <-chan T) func() error {
	return func() error {
		select {
		case <-ch:
			return nil
		default:
			return errNotYet
		}
	}
}

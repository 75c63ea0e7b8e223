package routing

import (
	"errors"
	"fmt"
	"time"
)

// HandoverMargin is how close to an epoch's effective time the operator may still change it
// (re-plan or push back), and so how early a server that lacks the newest announced epoch
// stops issuing IDs before any effective time the change may touch. The operator's planner
// uses the same value (controllers/plan).
const HandoverMargin = 30 * time.Second

// Announcement is the newest epoch the operator announced in a cell's control schema, written
// before the table holding it is published. Number 0: none announced.
type Announcement struct {
	Number        int64
	EffectiveTime time.Time
}

// ErrStale is wrapped by StaleFor's errors.
var ErrStale = errors.New("routing table may be stale")

// StaleFor says why a server holding t must not issue an ID created at sec while a is the
// newest announced epoch, or nil when it may. A server that holds the announced epoch (or a
// newer one) is current. One that does not may hold a plan the operator has since replaced or
// stacked on; every plan they share is the part in force long enough that it can no longer be
// changed. So the server stops HandoverMargin before the earliest effective time that may
// differ: the announced epoch's, or that of any epoch it holds that took effect less than
// HandoverMargin before sec or is still pending (the announcement may replace it).
func StaleFor(t *Table, a Announcement, sec time.Time) error {
	if t == nil || len(t.Epochs) == 0 {
		return fmt.Errorf("%w: no table loaded", ErrStale)
	}
	held := t.Latest()
	if a.Number <= held.Number {
		return nil
	}
	horizon := a.EffectiveTime
	for i := range t.Epochs {
		if e := t.Epochs[i].EffectiveTime; e.After(sec.Add(-HandoverMargin)) && e.Before(horizon) {
			horizon = e
		}
	}
	if sec.Before(horizon.Add(-HandoverMargin)) {
		return nil
	}
	return fmt.Errorf("%w: holds epoch %d, epoch %d is announced for %s and the plans may differ from %s on",
		ErrStale, held.Number, a.Number, a.EffectiveTime.UTC().Format(time.RFC3339), horizon.UTC().Format(time.RFC3339))
}

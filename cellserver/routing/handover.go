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

// MinEpochLead is the least time between the operator deciding an epoch and the epoch taking
// effect (the floor of spec.rebalanceDelay): a server that last knew it was current at T has
// missed nothing taking effect before T + MinEpochLead.
const MinEpochLead = 2 * HandoverMargin

// Announcement is the newest epoch the operator announced in a cell's control schema, written
// before the table holding it is published. Number 0: none announced.
type Announcement struct {
	Number        int64
	EffectiveTime time.Time
}

// ErrStale is wrapped by StaleFor's errors.
var ErrStale = errors.New("routing table may be stale")

// StaleFor says why a server holding t must not issue an ID created at sec while a is the
// newest announced epoch, or nil when it may. current is the last ID-clock time at which the
// server knew it held the announced epoch (zero: never).
//
// A server that holds the announced epoch (or a newer one) is current. One that does not may
// lack epochs decided since it was last current, which take effect MinEpochLead after that
// at the earliest, and may hold plans the operator has since replaced: any epoch of its table
// still pending when it was last current (the operator only changes an epoch more than
// HandoverMargin before it takes effect, and announces the change first). What it shares with
// the operator for sure is its table up to then. So it stops HandoverMargin before the
// earliest effective time that may differ: current + MinEpochLead, the announced epoch's, or
// that of any epoch it holds taking effect after current - HandoverMargin (the margins absorb
// clock skew between the server and the operator). A server never current stops at once.
func StaleFor(t *Table, a Announcement, current, sec time.Time) error {
	if t == nil || len(t.Epochs) == 0 {
		return fmt.Errorf("%w: no table loaded", ErrStale)
	}
	held := t.Latest()
	if a.Number <= held.Number {
		return nil
	}
	if current.IsZero() {
		return fmt.Errorf("%w: holds epoch %d, epoch %d is announced and this server never held the announced epoch", ErrStale, held.Number, a.Number)
	}
	horizon := a.EffectiveTime
	if missed := current.Add(MinEpochLead); missed.Before(horizon) {
		horizon = missed
	}
	for i := range t.Epochs {
		if e := t.Epochs[i].EffectiveTime; e.After(current.Add(-HandoverMargin)) && e.Before(horizon) {
			horizon = e
		}
	}
	if sec.Before(horizon.Add(-HandoverMargin)) {
		return nil
	}
	return fmt.Errorf("%w: holds epoch %d, epoch %d is announced for %s and the plans may differ from %s on",
		ErrStale, held.Number, a.Number, a.EffectiveTime.UTC().Format(time.RFC3339), horizon.UTC().Format(time.RFC3339))
}

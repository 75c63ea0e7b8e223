package plan

import (
	"fmt"
	"slices"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
)

// Hand-over timing (docs/designdoc/rebalancing.md, "Safe hand-over"). Every reader (server and
// gateway) must hold an epoch before it takes effect, because two readers holding different
// plans for the same second may both issue IDs in one slot.
const (
	// HandoverMargin is how close to its effective time a pending epoch may still be changed
	// (re-planned or pushed back). It covers a server reading the control schema's
	// announcement (every second, or stopping after its lease TTL of 10 s when it cannot) plus
	// clock skew between the operator and the servers. Closer than that, a change could reach
	// a server only after it acted on the old plan, so a new epoch is stacked instead.
	HandoverMargin = routing.HandoverMargin
	// MinRebalanceDelay is the floor of spec.rebalanceDelay: an epoch is first planned at
	// least two margins ahead, so there is a window in which it can still be pushed back when
	// readers are late.
	MinRebalanceDelay = routing.MinEpochLead
	// MaxHandoverWait bounds how long past its first planned effective time an epoch is
	// pushed back waiting for late readers. After that it takes effect as published and the
	// servers that still lack it refuse to issue IDs on their own (idalloc.Allocator).
	MaxHandoverWait = 15 * time.Minute
)

// ClampDelay raises a rebalance delay below MinRebalanceDelay (negative, zero or too short to
// hand over) to the floor; clamped says it did.
func ClampDelay(d time.Duration) (delay time.Duration, clamped bool) {
	if d < MinRebalanceDelay {
		return MinRebalanceDelay, true
	}
	return d, false
}

// ChangeKind says what NextTable did to the newest epoch.
type ChangeKind int

const (
	Unchanged ChangeKind = iota
	// First: a new set's epoch 1, reaching back to the ID clock's zero.
	First
	// Stacked: a new epoch after the newest one (which stays as published).
	Stacked
	// Replanned: the pending newest epoch was replaced by one with a new number, planned from
	// its predecessor. Nothing was created under it and no reader can have acted on it yet.
	Replanned
)

func (k ChangeKind) String() string {
	return [...]string{"unchanged", "first", "stacked", "replanned"}[k]
}

// TableInput is what NextTable decides from, besides the table in force.
type TableInput struct {
	Set       string
	SlotCount int
	Cells     []string // the planned cells, in plan order
	Now       time.Time
	// Delay is spec.rebalanceDelay; NextTable clamps it (ClampDelay).
	Delay time.Duration
	// MinNumber is the highest epoch number known to have been issued anywhere (the set's
	// status, readers' reports); new epochs get a higher one, so a number is never reused
	// even when the table it was published in was lost.
	MinNumber int64
	// PushBack asks to move a pending newest epoch later (same cells, new number, effective
	// Now+Delay) because readers have not loaded it. Honoured only while the epoch can still
	// be re-planned.
	PushBack bool
}

// Change is what NextTable did.
type Change struct {
	Kind    ChangeKind
	Epoch   *routing.Epoch // the new newest epoch (nil when Unchanged)
	Dropped int64          // Replanned: the number of the epoch it replaced
	Moved   int            // slots the new epoch moves relative to the one before it
}

// CanReplan reports whether epoch e, pending at now, may still be replaced: it takes effect
// more than HandoverMargin from now.
func CanReplan(e *routing.Epoch, now time.Time) bool {
	return e.EffectiveTime.Sub(now) > HandoverMargin
}

// NextTable is the one routing rule the operator and the local SET share: from the table in
// force (nil for a new set) and the planned cells it returns the next table (without masks or
// endpoints, which the caller carries over) and what changed. It never prunes.
//
//   - A new set starts with epoch 1 from the ID clock's zero.
//   - When the cells differ from the newest epoch's, a new epoch takes effect Delay from now,
//     moving as few slots as it can. A newest epoch that is still pending and more than
//     HandoverMargin from its effective time is re-planned from its predecessor under a new
//     number; closer than that it is kept and the new epoch is stacked after it.
//   - Epoch numbers only grow: a re-planned epoch's number is never given out again.
//   - The slot count is immutable.
func NextTable(prev *routing.Table, in TableInput) (*routing.Table, Change, error) {
	t := &routing.Table{Set: in.Set, SlotCount: in.SlotCount}
	if prev == nil || len(prev.Epochs) == 0 {
		number := max(in.MinNumber, 0) + 1
		e := NextEpoch(nil, in.Cells, in.SlotCount, number, ids.Epoch)
		t.Epochs = []routing.Epoch{e}
		return t, Change{Kind: First, Epoch: &t.Epochs[0]}, nil
	}
	if prev.SlotCount != in.SlotCount {
		return nil, Change{}, fmt.Errorf("slotCount: the routing table has %d slots, the set %d; the slot count is immutable", prev.SlotCount, in.SlotCount)
	}
	t.Epochs = slices.Clone(prev.Epochs)
	latest := t.Epochs[len(t.Epochs)-1]
	number := max(latest.Number, in.MinNumber) + 1
	changed := !SameCells(latest.Cells(), in.Cells)
	pending := latest.EffectiveTime.After(in.Now)
	replannable := pending && len(t.Epochs) > 1 && CanReplan(&latest, in.Now)
	if !changed && !(in.PushBack && replannable) {
		return t, Change{Kind: Unchanged}, nil
	}
	delay, _ := ClampDelay(in.Delay)
	effective := in.Now.Add(delay).Truncate(time.Second).Add(time.Second)
	base, kind := &t.Epochs[len(t.Epochs)-1], Stacked
	var dropped int64
	var first time.Time
	if replannable {
		t.Epochs = t.Epochs[:len(t.Epochs)-1]
		base, kind, dropped = &t.Epochs[len(t.Epochs)-1], Replanned, latest.Number
		if in.PushBack && !changed {
			// Pushing back must not bring the epoch closer.
			effective = maxTime(effective, latest.EffectiveTime.Add(time.Second))
			first = latest.EffectiveTime
			if !latest.FirstEffectiveTime.IsZero() {
				first = latest.FirstEffectiveTime
			}
		}
	}
	// Effective times ascend strictly; a stacked epoch always follows the one it stacks on.
	effective = maxTime(effective, base.EffectiveTime.Add(time.Second))
	next := NextEpoch(base, in.Cells, in.SlotCount, number, effective)
	next.FirstEffectiveTime = first
	moved := Moved(base, &next, in.SlotCount)
	t.Epochs = append(t.Epochs, next)
	return t, Change{Kind: kind, Epoch: &t.Epochs[len(t.Epochs)-1], Dropped: dropped, Moved: moved}, nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

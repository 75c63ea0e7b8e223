package plan

import (
	"fmt"
	"slices"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// RoutingInput is what DecideRouting decides from.
type RoutingInput struct {
	Set       string
	SlotCount int
	// Published is the table in force (nil only for a new set).
	Published *routing.Table
	Cells     []string // the plan's cells, in plan order
	// Masked are the masks the decided table carries.
	Masked []routing.MaskedRange
	Now    time.Time
	// Delay is spec.rebalanceDelay; DecideRouting clamps it (ClampDelay) and says so.
	Delay time.Duration
	// Keep is how long an epoch stays after its successor took effect before it may be
	// pruned; zero or less never prunes (the local SET keeps every epoch for as long as its
	// data directory lives).
	Keep time.Duration
	// Settled(old, next) reports whether every packet created under old (before next took
	// effect) is settled in old's cells; nil counts as settled.
	Settled func(old, next *routing.Epoch) bool
	// Recheck is how soon an epoch kept because its cells still owe packets is looked at again.
	Recheck time.Duration
	// MinNumber is the highest epoch number issued as far as anyone reports (status, servers).
	MinNumber int64
	// Readers is what each cell's control schema says its servers hold (the hand-over gate).
	Readers []CellReaders
	// Budget says why a table may not be published ("" when it may); nil accepts any table.
	Budget func(*routing.Table) string
}

// RoutingDecision is what DecideRouting chose: the table to publish and what changed.
type RoutingDecision struct {
	Table     *routing.Table
	Change    Change
	Scheduled *routing.Epoch // a new newest epoch (stacked, re-planned or pushed back)
	Moved     int            // slots the new epoch moves
	Pruned    []int64        // epochs dropped because everything under them is settled
	Unsettled []int64        // epochs past the time rule kept because their cells still owe packets
	RequeueAt time.Time      // when the decision changes next without any event (zero: never)
	// Handover is the gate's view of the newest epoch if it is pending.
	Handover HandoverDecision
	// DelayClamped: the delay was below MinRebalanceDelay and the floor was used.
	DelayClamped bool
	// Refused says why a new epoch was not added ("" when none was refused).
	Refused string
	// Err is NextTable's refusal to continue the published table (a different slot count);
	// Table is then the published one.
	Err error
}

// DecideRouting is the routing decision of the operator and of the local SET. The epoch rules
// are NextTable's and the hand-over gate is DecideHandover's. On top of them:
//   - a new epoch is refused (and reported) when in.Budget refuses the table, so publishing
//     never starts failing;
//   - an epoch is pruned once its successor has been in force for in.Keep, and only when
//     in.Settled agrees, so a late payment or a stuck sweeper never loses its packets' routing.
func DecideRouting(in RoutingInput) RoutingDecision {
	var d RoutingDecision
	delay, clamped := ClampDelay(in.Delay)
	d.DelayClamped = clamped
	push := false
	if in.Published != nil {
		d.Handover = DecideHandover(HandoverInput{Latest: in.Published.Latest(), Now: in.Now, Delay: delay, Cells: in.Readers})
		push = d.Handover.PushBack
	}
	tin := TableInput{Set: in.Set, SlotCount: in.SlotCount, Cells: in.Cells, Now: in.Now, Delay: delay, MinNumber: in.MinNumber, PushBack: push}
	t, change, err := NextTable(in.Published, tin)
	if err != nil {
		// Only a slot count that differs from the published table's gets here; the operator
		// rebuilds such a table from status first, so keep what is published.
		t, change = in.Published, Change{}
		d.Refused, d.Err = err.Error(), err
	}
	t = &routing.Table{Set: t.Set, SlotCount: t.SlotCount, Epochs: t.Epochs, Masked: in.Masked}
	d.Table = t
	d.prune(in)
	if change.Kind != Unchanged && in.Budget != nil {
		if why := in.Budget(d.Table); why != "" && in.Published != nil {
			d.Refused = fmt.Sprintf("routing epoch %d refused: %s", change.Epoch.Number, why)
			d.Table = &routing.Table{Set: t.Set, SlotCount: t.SlotCount, Epochs: slices.Clone(in.Published.Epochs), Masked: in.Masked}
			d.Pruned, d.Unsettled, d.RequeueAt = nil, nil, time.Time{}
			d.prune(in)
			change = Change{}
		}
	}
	d.Change = change
	if change.Kind == Stacked || change.Kind == Replanned {
		d.Scheduled = d.Table.Latest()
		d.Moved = change.Moved
		d.Handover = DecideHandover(HandoverInput{Latest: d.Scheduled, Now: in.Now, Delay: delay, Cells: in.Readers})
	}
	if last := d.Table.Latest(); last.EffectiveTime.After(in.Now) {
		d.RequeueAt = earliest(d.RequeueAt, last.EffectiveTime)
		// Look again when the gate's window opens and before the epoch can no longer change.
		for _, at := range []time.Time{last.EffectiveTime.Add(-2 * HandoverMargin), last.EffectiveTime.Add(-HandoverMargin - 5*time.Second)} {
			if at.After(in.Now) {
				d.RequeueAt = earliest(d.RequeueAt, at)
			}
		}
		if d.Handover.Reason == HandoverWaiting || d.Handover.Reason == HandoverPushedBack {
			d.RequeueAt = earliest(d.RequeueAt, in.Now.Add(5*time.Second))
		}
	}
	return d
}

// prune drops the oldest epochs whose packets are all settled.
func (d *RoutingDecision) prune(in RoutingInput) {
	if in.Keep <= 0 {
		return
	}
	t := d.Table
	for len(t.Epochs) > 1 {
		succ := t.Epochs[1]
		if in.Now.Before(succ.EffectiveTime.Add(in.Keep)) {
			d.RequeueAt = earliest(d.RequeueAt, succ.EffectiveTime.Add(in.Keep))
			break
		}
		if in.Settled != nil && !in.Settled(&t.Epochs[0], &succ) {
			d.Unsettled = append(d.Unsettled, t.Epochs[0].Number)
			d.RequeueAt = earliest(d.RequeueAt, in.Now.Add(in.Recheck))
			break
		}
		d.Pruned = append(d.Pruned, t.Epochs[0].Number)
		t.Epochs = t.Epochs[1:]
	}
}

// SameCells reports whether a and b name the same cells, in any order.
func SameCells(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

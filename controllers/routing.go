package controllers

import (
	"fmt"
	"slices"
	"strings"
	"time"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// settleWindow is how long after an epoch's last packets expire its entries are kept, so
// refunds and the reconciliation job still find their cell.
const settleWindow = time.Hour

// heldRecheck is how often a cell held for unsettled packets is checked again.
const heldRecheck = 30 * time.Second

// routingDecision is what decideRouting chose: the table to publish and what changed.
type routingDecision struct {
	Table     *routing.Table
	Scheduled *routing.Epoch // a new epoch was added (or a pending one re-planned)
	Moved     int            // slots the new epoch moves
	Pruned    []int64        // epochs dropped because everything under them is settled
	Unsettled []int64        // epochs past the time rule kept because their cells still owe packets
	RequeueAt time.Time      // when the decision changes next without any event (zero: never)
}

// decideRouting computes the routing table from the one published (nil for a new set), the
// plan's cells and the masks in force. It is pure so its rules are table-tested:
//   - a new set starts with epoch 1, reaching back to the ID clock's zero;
//   - when the plan's cells differ from the newest epoch's, a new epoch takes effect
//     rebalanceDelay from now, moving as few slots as it can; a newest epoch that has not
//     taken effect yet is re-planned in place rather than stacked, since nothing was created
//     under it;
//   - an epoch is pruned once its successor has been in force for 2×expiry + settleWindow:
//     a packet created just before the switch may wait up to one expiry for payment and then
//     stay open one more, and the refund needs the settle window to be relayed. The cell's
//     own database still has the last word before a cell is deleted (cellHold).
//
// settled(old, next) reports whether every packet created under old (before next took effect)
// is settled in old's cells; an epoch is pruned only when the time rule and settled agree, so a
// late payment or a stuck sweeper never loses its packets' routing. nil counts as settled.
func decideRouting(set *rpv1.RedPacketSet, published *routing.Table, cells []string, masked []routing.MaskedRange, now time.Time, settled func(old, next *routing.Epoch) bool) routingDecision {
	slotCount := int(set.Spec.SlotCount)
	t := &routing.Table{Set: set.Name, SlotCount: slotCount, Masked: masked}
	var d routingDecision
	if published == nil || len(published.Epochs) == 0 || published.SlotCount != slotCount {
		e := plan.NextEpoch(nil, cells, slotCount, 1, ids.Epoch)
		t.Epochs = []routing.Epoch{e}
		d.Table = t
		return d
	}
	t.Epochs = slices.Clone(published.Epochs)

	latest := t.Epochs[len(t.Epochs)-1]
	if !sameCells(latest.Cells(), cells) {
		base, number := &latest, latest.Number+1
		if latest.EffectiveTime.After(now) && len(t.Epochs) > 1 {
			// Not in force yet: re-plan it from its predecessor.
			t.Epochs = t.Epochs[:len(t.Epochs)-1]
			base, number = &t.Epochs[len(t.Epochs)-1], latest.Number
		}
		effective := now.Add(set.RebalanceDelayOrDefault()).Truncate(time.Second).Add(time.Second)
		next := plan.NextEpoch(base, cells, slotCount, number, effective)
		d.Moved = plan.Moved(base, &next, slotCount)
		t.Epochs = append(t.Epochs, next)
		d.Scheduled = &t.Epochs[len(t.Epochs)-1]
	}

	keep := 2*set.Spec.Limits.ExpiryOrDefault() + settleWindow
	for len(t.Epochs) > 1 {
		succ := t.Epochs[1]
		if now.Before(succ.EffectiveTime.Add(keep)) {
			at := succ.EffectiveTime.Add(keep)
			d.RequeueAt = earliest(d.RequeueAt, at)
			break
		}
		if settled != nil && !settled(&t.Epochs[0], &succ) {
			d.Unsettled = append(d.Unsettled, t.Epochs[0].Number)
			d.RequeueAt = earliest(d.RequeueAt, now.Add(heldRecheck))
			break
		}
		d.Pruned = append(d.Pruned, t.Epochs[0].Number)
		t.Epochs = t.Epochs[1:]
	}
	if last := t.Epochs[len(t.Epochs)-1]; last.EffectiveTime.After(now) {
		d.RequeueAt = earliest(d.RequeueAt, last.EffectiveTime)
	}
	d.Table = t
	return d
}

func sameCells(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// cellSlots lists the ranges a cell owns in an epoch.
func cellSlots(e *routing.Epoch, cell string) []rpv1.SlotRange {
	var out []rpv1.SlotRange
	for _, r := range e.Ranges {
		if r.Cell == cell {
			out = append(out, rpv1.SlotRange{Start: int32(r.Start), End: int32(r.End)})
		}
	}
	return out
}

// formatSlots renders ranges as "0-249,500-599".
func formatSlots(rs []rpv1.SlotRange) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		if r.Start == r.End {
			parts = append(parts, fmt.Sprint(r.Start))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", r.Start, r.End))
		}
	}
	return strings.Join(parts, ",")
}

// epochsToStatus mirrors the table into the set's status.
func epochsToStatus(t *routing.Table) rpv1.RoutingStatus {
	out := rpv1.RoutingStatus{}
	for _, e := range t.Epochs {
		se := rpv1.RoutingEpoch{Number: e.Number, EffectiveTime: metaTime(e.EffectiveTime)}
		for _, r := range e.Ranges {
			se.Ranges = append(se.Ranges, rpv1.OwnedSlotRange{SlotRange: rpv1.SlotRange{Start: int32(r.Start), End: int32(r.End)}, Cell: r.Cell})
		}
		out.Epochs = append(out.Epochs, se)
		out.CurrentEpoch = e.Number
	}
	return out
}

// masksFromStatus turns the set's masked slots into the table's.
func masksFromStatus(ms []rpv1.MaskedSlotRange) []routing.MaskedRange {
	out := make([]routing.MaskedRange, 0, len(ms))
	for _, m := range ms {
		out = append(out, routing.MaskedRange{Start: int(m.Start), End: int(m.End), Reason: m.Reason, Since: m.Since.UTC().Truncate(time.Second)})
	}
	return out
}

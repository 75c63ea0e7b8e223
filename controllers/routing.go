package controllers

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// settleWindow is how long after an epoch's last packets expire its entries are kept, so
// refunds and the reconciliation job still find their cell.
const settleWindow = time.Hour

// heldRecheck is how often a cell held for unsettled packets is checked again.
const heldRecheck = 30 * time.Second

// routingInput is what decideRouting decides from.
type routingInput struct {
	// published is the table in force: the routing ConfigMap's, or rebuilt from the set's
	// status when the ConfigMap lost it; nil only for a new set.
	published *routing.Table
	cells     []string // the plan's cells
	masked    []routing.MaskedRange
	now       time.Time
	// settled(old, next) reports whether every packet created under old (before next took
	// effect) is settled in old's cells; nil counts as settled.
	settled func(old, next *routing.Epoch) bool
	// minNumber is the highest epoch number issued as far as anyone reports (status, servers).
	minNumber int64
	// readers is what each cell's control schema says its servers hold.
	readers []plan.CellReaders
}

// routingDecision is what decideRouting chose: the table to publish and what changed.
type routingDecision struct {
	Table     *routing.Table
	Change    plan.Change
	Scheduled *routing.Epoch // a new newest epoch (stacked, re-planned or pushed back)
	Moved     int            // slots the new epoch moves
	Pruned    []int64        // epochs dropped because everything under them is settled
	Unsettled []int64        // epochs past the time rule kept because their cells still owe packets
	RequeueAt time.Time      // when the decision changes next without any event (zero: never)
	// Handover is the gate's view of the newest epoch if it is pending.
	Handover plan.HandoverDecision
	// DelayClamped: spec.rebalanceDelay was below plan.MinRebalanceDelay and the floor was used.
	DelayClamped bool
	// Refused says why a new epoch was not added ("" when none was refused).
	Refused string
	// announceErrs lists the cells the new epoch could not be announced to, with why.
	announceErrs []string
}

// decideRouting computes the routing table. It is pure so its rules are table-tested; the
// epoch rules are plan.NextTable's (shared with the local SET) and the hand-over gate is
// plan.DecideHandover's. On top of them:
//   - a new epoch is refused (and reported) when the table or the status holding it would
//     outgrow routing.MaxTableBytes, so publishing never starts failing;
//   - an epoch is pruned once its successor has been in force for 2×expiry + settleWindow:
//     a packet created just before the switch may wait up to one expiry for payment and then
//     stay open one more, and the refund needs the settle window to be relayed. The cell's
//     own database still has the last word before a cell is deleted (cellHold). An epoch is
//     pruned only when the time rule and settled agree, so a late payment or a stuck sweeper
//     never loses its packets' routing.
func decideRouting(set *rpv1.RedPacketSet, in routingInput) routingDecision {
	var d routingDecision
	delay, clamped := plan.ClampDelay(set.RebalanceDelayOrDefault())
	d.DelayClamped = clamped
	push := false
	if in.published != nil {
		d.Handover = plan.DecideHandover(plan.HandoverInput{Latest: in.published.Latest(), Now: in.now, Delay: delay, Cells: in.readers})
		push = d.Handover.PushBack
	}
	tin := plan.TableInput{Set: set.Name, SlotCount: int(set.Spec.SlotCount), Cells: in.cells, Now: in.now, Delay: delay, MinNumber: in.minNumber, PushBack: push}
	t, change, err := plan.NextTable(in.published, tin)
	if err != nil {
		// Only a slot count that differs from the published table's gets here; the caller
		// rebuilds such a table from status first, so keep what is published.
		t, change = in.published, plan.Change{}
		d.Refused = err.Error()
	}
	t = &routing.Table{Set: t.Set, SlotCount: t.SlotCount, Epochs: t.Epochs, Masked: in.masked}
	d.Table = t
	d.prune(set, in)
	if change.Kind != plan.Unchanged {
		if why := overBudget(d.Table); why != "" && in.published != nil {
			d.Refused = fmt.Sprintf("routing epoch %d refused: %s", change.Epoch.Number, why)
			d.Table = &routing.Table{Set: t.Set, SlotCount: t.SlotCount, Epochs: slices.Clone(in.published.Epochs), Masked: in.masked}
			d.Pruned, d.Unsettled, d.RequeueAt = nil, nil, time.Time{}
			d.prune(set, in)
			change = plan.Change{}
		}
	}
	d.Change = change
	if change.Kind == plan.Stacked || change.Kind == plan.Replanned {
		d.Scheduled = d.Table.Latest()
		d.Moved = change.Moved
		d.Handover = plan.DecideHandover(plan.HandoverInput{Latest: d.Scheduled, Now: in.now, Delay: delay, Cells: in.readers})
	}
	if last := d.Table.Latest(); last.EffectiveTime.After(in.now) {
		d.RequeueAt = earliest(d.RequeueAt, last.EffectiveTime)
		// Look again when the gate's window opens and before the epoch can no longer change.
		for _, at := range []time.Time{last.EffectiveTime.Add(-2 * plan.HandoverMargin), last.EffectiveTime.Add(-plan.HandoverMargin - 5*time.Second)} {
			if at.After(in.now) {
				d.RequeueAt = earliest(d.RequeueAt, at)
			}
		}
		if d.Handover.Reason == plan.HandoverWaiting || d.Handover.Reason == plan.HandoverPushedBack {
			d.RequeueAt = earliest(d.RequeueAt, in.now.Add(5*time.Second))
		}
	}
	return d
}

// prune drops the oldest epochs whose packets are all settled.
func (d *routingDecision) prune(set *rpv1.RedPacketSet, in routingInput) {
	t := d.Table
	keep := 2*set.Spec.Limits.ExpiryOrDefault() + settleWindow
	for len(t.Epochs) > 1 {
		succ := t.Epochs[1]
		if in.now.Before(succ.EffectiveTime.Add(keep)) {
			d.RequeueAt = earliest(d.RequeueAt, succ.EffectiveTime.Add(keep))
			break
		}
		if in.settled != nil && !in.settled(&t.Epochs[0], &succ) {
			d.Unsettled = append(d.Unsettled, t.Epochs[0].Number)
			d.RequeueAt = earliest(d.RequeueAt, in.now.Add(heldRecheck))
			break
		}
		d.Pruned = append(d.Pruned, t.Epochs[0].Number)
		t.Epochs = t.Epochs[1:]
	}
}

// overBudget says why t may not be published: its encoding or the status mirroring it
// exceeds routing.MaxTableBytes. Checked before publishing, so the set refuses new epochs
// while the ConfigMap and the status can still be written.
func overBudget(t *routing.Table) string {
	if _, err := t.Marshal(); err != nil {
		return err.Error()
	}
	st, err := json.Marshal(epochsToStatus(t))
	if err != nil {
		return fmt.Sprintf("encode status routing: %v", err)
	}
	if len(st) > routing.MaxTableBytes {
		return fmt.Sprintf("status.routing would take %d bytes: %v (%d bytes)", len(st), routing.ErrTableTooLarge, routing.MaxTableBytes)
	}
	return ""
}

// tableFromStatus rebuilds the routing table from the set's status, which mirrors every
// epoch; nil when the status holds none.
func tableFromStatus(set *rpv1.RedPacketSet, masked []routing.MaskedRange) *routing.Table {
	if len(set.Status.Routing.Epochs) == 0 {
		return nil
	}
	t := &routing.Table{Set: set.Name, SlotCount: int(set.Spec.SlotCount), Masked: masked}
	for _, se := range set.Status.Routing.Epochs {
		e := routing.Epoch{Number: se.Number, EffectiveTime: se.EffectiveTime.UTC()}
		if se.FirstEffectiveTime != nil {
			e.FirstEffectiveTime = se.FirstEffectiveTime.UTC()
		}
		for _, r := range se.Ranges {
			e.Ranges = append(e.Ranges, routing.SlotRange{Start: int(r.Start), End: int(r.End), Cell: r.Cell})
		}
		t.Epochs = append(t.Epochs, e)
	}
	return t
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
		if !e.FirstEffectiveTime.IsZero() {
			ft := metaTime(e.FirstEffectiveTime)
			se.FirstEffectiveTime = &ft
		}
		for _, r := range routing.MergeRanges(e.Ranges) {
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

package controllers

import (
	"encoding/json"
	"fmt"
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

// routingDecision is plan.DecideRouting's decision, and what applying it found.
type routingDecision struct {
	plan.RoutingDecision
	// announceErrs lists the cells the new epoch could not be announced to, with why.
	announceErrs []string
}

// decideRouting is the set's routing decision: plan.DecideRouting (shared with the local SET)
// with the operator's rules for this set. An epoch is pruned once its successor has been in
// force for 2×expiry + settleWindow: a packet created just before the switch may wait up to
// one expiry for payment and then stay open one more, and the refund needs the settle window
// to be relayed. The cell's own database still has the last word before a cell is deleted
// (cellHold). A table over routing.MaxTableBytes is refused (overBudget).
func decideRouting(set *rpv1.RedPacketSet, in routingInput) routingDecision {
	return routingDecision{RoutingDecision: plan.DecideRouting(plan.RoutingInput{
		Set: set.Name, SlotCount: int(set.Spec.SlotCount),
		Published: in.published, Cells: in.cells, Masked: in.masked, Now: in.now,
		Delay:   set.RebalanceDelayOrDefault(),
		Keep:    2*set.Spec.Limits.ExpiryOrDefault() + settleWindow,
		Settled: in.settled, Recheck: heldRecheck,
		MinNumber: in.minNumber, Readers: in.readers,
		Budget: overBudget,
	})}
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

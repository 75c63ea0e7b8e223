package localset

import (
	"fmt"
	"slices"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// NextRouting decides the routing table of this run from the one the data directory holds
// (nil on the first run) with the operator's own decision, plan.DecideRouting: epoch 1 for a
// new set; a new epoch delay from now (clamped to plan.MinRebalanceDelay) when the manifest's
// cells differ from the newest epoch's; a pending epoch re-planned under a new number only
// while it is far enough from taking effect; an immutable slot count.
//
// Local epochs are never pruned (no Keep): packets of every epoch stay routable for as long as
// the data directory lives. It returns the table (without endpoints) and every cell any epoch
// names, which is the set of cells that must run: a cell that lost its slots still serves its
// old packets.
func NextRouting(prev *routing.Table, set string, slotCount int, cells []string, now time.Time, delay time.Duration) (*routing.Table, []string, error) {
	in := plan.RoutingInput{Set: set, SlotCount: slotCount, Published: prev, Cells: cells, Now: now, Delay: delay}
	if prev != nil {
		in.Masked = slices.Clone(prev.Masked)
	}
	d := plan.DecideRouting(in)
	if d.Err != nil {
		return nil, nil, fmt.Errorf("data directory's routing table: %w", d.Err)
	}
	t := d.Table
	var run []string
	for _, e := range t.Epochs {
		for _, c := range e.Cells() {
			if !slices.Contains(run, c) {
				run = append(run, c)
			}
		}
	}
	// The manifest's order first (cell-0, cell-1, …), then cells only old epochs name.
	slices.SortStableFunc(run, func(a, b string) int { return rank(cells, a) - rank(cells, b) })
	return t, run, nil
}

func rank(cells []string, c string) int {
	if i := slices.Index(cells, c); i >= 0 {
		return i
	}
	return len(cells)
}

package localset

import (
	"fmt"
	"slices"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// NextRouting decides the routing table of this run from the one the data directory holds
// (nil on the first run), the same way the operator does:
//   - a new set gets epoch 1 reaching back to the ID clock's zero;
//   - when the manifest's cells differ from the newest epoch's, a new epoch takes effect delay
//     from now, moving as few slots as it can (a newest epoch not yet in force is re-planned in
//     place);
//   - the slot count is immutable.
//
// Local epochs are never pruned: packets of every epoch stay routable for as long as the data
// directory lives. It returns the table (without endpoints) and every cell any epoch names,
// which is the set of cells that must run: a cell that lost its slots still serves its old
// packets.
func NextRouting(prev *routing.Table, set string, slotCount int, cells []string, now time.Time, delay time.Duration) (*routing.Table, []string, error) {
	t := &routing.Table{Set: set, SlotCount: slotCount}
	switch {
	case prev == nil || len(prev.Epochs) == 0:
		t.Epochs = []routing.Epoch{plan.NextEpoch(nil, cells, slotCount, 1, ids.Epoch)}
	case prev.SlotCount != slotCount:
		return nil, nil, fmt.Errorf("slotCount: the data directory's set has %d slots, the manifest %d; the slot count is immutable", prev.SlotCount, slotCount)
	default:
		t.Masked = slices.Clone(prev.Masked)
		t.Epochs = slices.Clone(prev.Epochs)
		latest := t.Epochs[len(t.Epochs)-1]
		if !sameCells(latest.Cells(), cells) {
			base, number := &latest, latest.Number+1
			if latest.EffectiveTime.After(now) && len(t.Epochs) > 1 {
				t.Epochs = t.Epochs[:len(t.Epochs)-1]
				base, number = &t.Epochs[len(t.Epochs)-1], latest.Number
			}
			effective := now.Add(delay).Truncate(time.Second).Add(time.Second)
			t.Epochs = append(t.Epochs, plan.NextEpoch(base, cells, slotCount, number, effective))
		}
	}
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

func sameCells(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

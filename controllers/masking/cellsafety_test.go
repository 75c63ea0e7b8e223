package masking

import (
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// TestDecideCountsAndSilence pins the budget and lift rules of issue 11 §7: the budget rounds so
// a small cell can mask, masks on slots the cell no longer owns neither count against it nor
// stay in force, and a table nobody reported on is unknown, not healthy.
func TestDecideCountsAndSilence(t *testing.T) {
	old := t0.Add(-time.Hour) // older than any cool-down
	cases := []struct {
		name       string
		in         Input
		wantAdded  []string
		wantLifted []string
		wantFreed  []string
		wantMasked []int // every slot masked afterwards, ascending
		wantBudget int
	}{
		{
			// 9 slots at 10% used to make a budget of 0: no table of the cell could ever mask.
			name: "nine owned slots at ten percent can mask one",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(70, 78),
				Errors: map[string]int64{"db_07.t_3": 80}},
			wantAdded: []string{"db_07.t_3"}, wantMasked: []int{73}, wantBudget: 1,
		},
		{
			name: "a budget of a fraction of a slot rounds up",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 14),
				Errors: map[string]int64{"db_00.t_3": 80, "db_00.t_4": 70}},
			// 10% of 15 is 1.5: two slots.
			wantAdded: []string{"db_00.t_3", "db_00.t_4"}, wantMasked: []int{3, 4}, wantBudget: 2,
		},
		{
			// Slots 0..9 moved to another cell; their old masks must not spend this cell's
			// budget (1 slot of 10 owned) nor keep closing slots another cell now serves.
			name: "stale masks on slots no longer owned neither count nor stay",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(10, 19),
				Recent: map[string]int64{"db_00.t_5": 3},
				Errors: map[string]int64{"db_01.t_2": 80},
				Active: []control.Mask{{Start: 5, End: 5, Source: control.SourceOperator, Since: t0.Add(-time.Minute), Reason: "old"}}},
			wantAdded: []string{"db_01.t_2"}, wantFreed: []string{"db_00.t_5"}, wantMasked: []int{12}, wantBudget: 1,
		},
		{
			name: "a mask partly on slots no longer owned keeps only the owned part",
			in: Input{Now: t0, Layout: small, SlotCount: 1000, Owned: ownedRange(0, 49),
				Recent: map[string]int64{"db_00.t_0": 2},
				Active: []control.Mask{
					{Start: 40, End: 40, Source: control.SourceOperator, Since: t0.Add(-time.Minute), Reason: "r"},
					{Start: 80, End: 80, Source: control.SourceOperator, Since: t0.Add(-time.Minute), Reason: "r"},
				}},
			wantMasked: []int{40}, wantBudget: 5,
		},
		{
			// No server reported the table at all: its state is unknown, the mask stays.
			name: "silence is not health: an unreported table keeps its mask",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249),
				Active: []control.Mask{{Start: 73, End: 73, Source: control.SourceOperator, Since: old, Reason: "r"}}},
			wantMasked: []int{73}, wantBudget: 25,
		},
		{
			name: "calls without errors over the quiet span lift the mask",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249),
				RecentCalls: map[string]int64{"db_07.t_3": 40},
				Active:      []control.Mask{{Start: 73, End: 73, Source: control.SourceOperator, Since: old, Reason: "r"}}},
			wantLifted: []string{"db_07.t_3"}, wantBudget: 25,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(policy, tc.in)
			if !equal(d.Added, tc.wantAdded) || !equal(d.Lifted, tc.wantLifted) || !equal(d.Released, tc.wantFreed) {
				t.Fatalf("added %v lifted %v released %v; want %v %v %v", d.Added, d.Lifted, d.Released, tc.wantAdded, tc.wantLifted, tc.wantFreed)
			}
			var masked []int
			for _, m := range d.Masks {
				for s := m.Start; s <= m.End; s++ {
					masked = append(masked, s)
				}
			}
			if len(masked) != len(tc.wantMasked) || d.MaskedSlots != len(tc.wantMasked) {
				t.Fatalf("masked %v (%d counted), want %v", masked, d.MaskedSlots, tc.wantMasked)
			}
			for i := range masked {
				if masked[i] != tc.wantMasked[i] {
					t.Fatalf("masked %v, want %v", masked, tc.wantMasked)
				}
			}
			if d.BudgetSlots != tc.wantBudget {
				t.Fatalf("budget %d slots, want %d", d.BudgetSlots, tc.wantBudget)
			}
		})
	}
}

func TestBudget(t *testing.T) {
	for _, tc := range []struct{ percent, owned, want int }{
		{10, 0, 0}, {0, 100, 0}, {10, 9, 1}, {10, 10, 1}, {10, 11, 2}, {10, 250, 25}, {1, 500, 5}, {100, 7, 7}, {1, 1, 1},
	} {
		if got := Budget(tc.percent, tc.owned); got != tc.want {
			t.Errorf("Budget(%d%%, %d) = %d, want %d", tc.percent, tc.owned, got, tc.want)
		}
	}
}

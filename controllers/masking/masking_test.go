package masking

import (
	"math/rand"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

var (
	t0     = time.Date(2026, 2, 17, 20, 0, 0, 0, time.UTC)
	policy = Policy{Threshold: 50, Window: time.Minute, CoolDown: 5 * time.Minute, MaxMaskedPercent: 10}
	small  = shard.Layout{Databases: 2, TablesPerDB: 2}
)

func ownedRange(a, b int) []int {
	var out []int
	for s := a; s <= b; s++ {
		out = append(out, s)
	}
	return out
}

func TestDecide(t *testing.T) {
	cases := []struct {
		name        string
		budget      int // percent; 0 uses the default policy's
		in          Input
		wantAdded   []string
		wantLifted  []string
		wantSlots   int
		wantBudget  bool
		wantDefered []string
	}{
		{
			name:      "below threshold masks nothing",
			in:        Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249), Errors: map[string]int64{"db_07.t_3": 49}},
			wantSlots: 0,
		},
		{
			name:      "a failing table masks the one slot it serves",
			in:        Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249), Errors: map[string]int64{"db_07.t_3": 50}},
			wantAdded: []string{"db_07.t_3"}, wantSlots: 1,
		},
		{
			name:      "a table of another cell's slots masks nothing here",
			in:        Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249), Errors: map[string]int64{"db_90.t_0": 500}},
			wantSlots: 0,
		},
		{
			name: "small layout masks only the owned slots of the table",
			// db_00.t_1 serves slots whose tens digit is even and unit digit odd: of 0..99, 25.
			budget:    50,
			in:        Input{Now: t0, Layout: small, SlotCount: 1000, Owned: ownedRange(0, 99), Errors: map[string]int64{"db_00.t_1": 60}},
			wantAdded: []string{"db_00.t_1"}, wantSlots: 25,
		},
		{
			name: "budget stops the worst-first masking",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 29), // budget 3 slots
				Errors: map[string]int64{"db_00.t_0": 90, "db_00.t_1": 80, "db_00.t_2": 70, "db_00.t_3": 60}},
			wantAdded: []string{"db_00.t_0", "db_00.t_1", "db_00.t_2"}, wantSlots: 3, wantBudget: true, wantDefered: []string{"db_00.t_3"},
		},
		{
			name: "a quiet mask lifts after the cool-down",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249), RecentCalls: map[string]int64{"db_07.t_3": 12},
				Active: []control.Mask{{Start: 73, End: 73, Source: control.SourceOperator, Since: t0.Add(-6 * time.Minute)}}},
			wantLifted: []string{"db_07.t_3"}, wantSlots: 0,
		},
		{
			name: "a mask younger than the cool-down stays",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249),
				Active: []control.Mask{{Start: 73, End: 73, Source: control.SourceOperator, Since: t0.Add(-time.Minute)}}},
			wantSlots: 1,
		},
		{
			name: "a mask whose table still fails stays past the cool-down",
			in: Input{Now: t0, Layout: shard.Default, SlotCount: 1000, Owned: ownedRange(0, 249), Recent: map[string]int64{"db_07.t_3": 1},
				Active: []control.Mask{{Start: 73, End: 73, Source: control.SourceOperator, Since: t0.Add(-time.Hour)}}},
			wantSlots: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := policy
			if tc.budget != 0 {
				p.MaxMaskedPercent = tc.budget
			}
			d := Decide(p, tc.in)
			if !equal(d.Added, tc.wantAdded) || !equal(d.Lifted, tc.wantLifted) || !equal(d.Deferred, tc.wantDefered) {
				t.Fatalf("added %v lifted %v deferred %v; want %v %v %v", d.Added, d.Lifted, d.Deferred, tc.wantAdded, tc.wantLifted, tc.wantDefered)
			}
			if d.MaskedSlots != tc.wantSlots || d.BudgetExhausted != tc.wantBudget {
				t.Fatalf("masked %d budget exhausted %v; want %d %v", d.MaskedSlots, d.BudgetExhausted, tc.wantSlots, tc.wantBudget)
			}
			n := 0
			for _, m := range d.Masks {
				n += m.End - m.Start + 1
				if m.Source != control.SourceOperator || m.Reason == "" && len(tc.in.Active) == 0 {
					t.Fatalf("mask %+v lacks source or reason", m)
				}
			}
			if n != d.MaskedSlots {
				t.Fatalf("masks cover %d slots, decision says %d", n, d.MaskedSlots)
			}
		})
	}
}

// TestDecideSimulation runs random sequences of failing and recovering tables through the
// policy, carrying its masks from step to step, and checks the invariants after every step:
// masks stay within the budget and the cell's owned slots, never overlap, a table over the
// threshold is masked unless the budget is spent, and a mask lifts only after a quiet cool-down.
func TestDecideSimulation(t *testing.T) {
	t.Log("seeds 1..30")
	for seed := int64(1); seed <= 30; seed++ {
		rng := rand.New(rand.NewSource(seed))
		layout := shard.Layout{Databases: 1 + rng.Intn(10), TablesPerDB: 1 + rng.Intn(10)}
		lo := rng.Intn(500)
		owned := ownedRange(lo, lo+100+rng.Intn(400))
		p := Policy{Threshold: 10, Window: time.Minute, CoolDown: 3 * time.Minute, MaxMaskedPercent: 5 + rng.Intn(40)}
		var active []control.Mask
		lastError := map[string]time.Time{}
		now := t0
		for step := 0; step < 40; step++ {
			now = now.Add(time.Minute)
			if step == 20 {
				// A rebalance moves part of the cell's slots away: masks there must go.
				owned = owned[len(owned)/3:]
			}
			errs, recent, calls := map[string]int64{}, map[string]int64{}, map[string]int64{}
			for _, tb := range layout.All() {
				name := layout.Name(tb)
				if rng.Intn(8) == 0 {
					errs[name] = int64(rng.Intn(30))
					if errs[name] > 0 {
						lastError[name] = now
					}
				}
				if !lastError[name].IsZero() && now.Sub(lastError[name]) < p.CoolDown {
					recent[name] = 1
				}
				if rng.Intn(3) != 0 { // some tables go unreported: unknown, never healthy
					calls[name] = 1 + recent[name]
				}
			}
			d := Decide(p, Input{Now: now, Layout: layout, SlotCount: 1000, Owned: owned, Errors: errs, Recent: recent, RecentCalls: calls, Active: active})
			ownedSet := map[int]bool{}
			for _, s := range owned {
				ownedSet[s] = true
			}
			seen := map[int]bool{}
			for _, m := range d.Masks {
				for s := m.Start; s <= m.End; s++ {
					if !ownedSet[s] || seen[s] {
						t.Fatalf("seed %d step %d: slot %d masked twice or not owned", seed, step, s)
					}
					seen[s] = true
				}
			}
			// A shrinking cell may hold more masks than its new budget (lifting a failing
			// table's mask would send packets into it); it may add none then.
			if len(seen) > d.BudgetSlots && len(d.Added) > 0 {
				t.Fatalf("seed %d step %d: %d slots masked over budget %d", seed, step, len(seen), d.BudgetSlots)
			}
			for name, n := range errs {
				if n < p.Threshold {
					continue
				}
				tb, _ := control.ParseTable(layout, name)
				masked := false
				for _, s := range layout.Slots(tb, 1000) {
					if seen[s] {
						masked = true
					}
				}
				hasOwned := false
				for _, s := range layout.Slots(tb, 1000) {
					hasOwned = hasOwned || ownedSet[s]
				}
				if hasOwned && !masked && !d.BudgetExhausted {
					t.Fatalf("seed %d step %d: %s over threshold left unmasked with budget left", seed, step, name)
				}
			}
			for _, name := range d.Lifted {
				if recent[name] != 0 || calls[name] == 0 {
					t.Fatalf("seed %d step %d: %s lifted while still failing or unreported", seed, step, name)
				}
			}
			active = d.Masks
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

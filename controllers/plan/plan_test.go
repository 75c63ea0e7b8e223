package plan

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

func ptr(f float64) *float64 { return &f }

func TestComputeTable(t *testing.T) {
	cases := []struct {
		name          string
		in            Input
		wantPerZone   int
		wantTolerant  bool
		wantReason    string
		wantHeadroom  float64
		wantFirstEnds [2]int // Start, End of cell 0
	}{
		{
			name:        "one zone is never tolerant",
			in:          Input{Set: "rp", Zones: []string{"a"}, Cells: 4, SlotCount: 1000, PeakOpensPerSecond: 40000, PerServerOpensPerSecond: 2500},
			wantPerZone: 4, wantTolerant: false, wantReason: ReasonSingleZone, wantHeadroom: 0, wantFirstEnds: [2]int{0, 249},
		},
		{
			name: "two zones default headroom: each zone carries the whole peak",
			in:   Input{Set: "rp", Zones: []string{"a", "b"}, Cells: 4, SlotCount: 1000, PeakOpensPerSecond: 40000, PerServerOpensPerSecond: 2500},
			// P = 10000, T = 20000, 10000 per zone -> 4 servers; losing one zone leaves 10000.
			wantPerZone: 4, wantTolerant: true, wantReason: ReasonHeadroomCoversOneZone, wantHeadroom: 0.5, wantFirstEnds: [2]int{0, 249},
		},
		{
			name: "three zones default headroom: one third extra each",
			in:   Input{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 4, SlotCount: 1000, PeakOpensPerSecond: 40000, PerServerOpensPerSecond: 2500},
			// P = 10000, T = 15000, 5000 per zone -> 2 servers; two zones left carry 10000.
			wantPerZone: 2, wantTolerant: true, wantReason: ReasonHeadroomCoversOneZone, wantHeadroom: 1.0 / 3, wantFirstEnds: [2]int{0, 249},
		},
		{
			name: "explicit low headroom is not tolerant",
			in:   Input{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 4, SlotCount: 1000, PeakOpensPerSecond: 40000, PerServerOpensPerSecond: 1000, Headroom: ptr(0.1)},
			// P = 10000, T = 11112, 3704 per zone -> 4 servers; two zones left carry 8000 < 10000.
			wantPerZone: 4, wantTolerant: false, wantReason: ReasonInsufficientHeadroom, wantHeadroom: 0.1, wantFirstEnds: [2]int{0, 249},
		},
		{
			name: "minimum servers per zone wins at low peak",
			in:   Input{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 3, SlotCount: 10, PeakOpensPerSecond: 30, PerServerOpensPerSecond: 1000, MinServersPerZone: 2},
			// 10 slots over 3 cells: 4, 3, 3.
			wantPerZone: 2, wantTolerant: true, wantReason: ReasonHeadroomCoversOneZone, wantHeadroom: 1.0 / 3, wantFirstEnds: [2]int{0, 3},
		},
		{
			name:        "zero peak still runs one server per zone",
			in:          Input{Set: "rp", Zones: []string{"a", "b"}, Cells: 1, SlotCount: 1000, PeakOpensPerSecond: 0, PerServerOpensPerSecond: 1000},
			wantPerZone: 1, wantTolerant: true, wantReason: ReasonHeadroomCoversOneZone, wantHeadroom: 0.5, wantFirstEnds: [2]int{0, 999},
		},
		{
			name: "uneven peak rounds the cell peak up",
			in:   Input{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 3, SlotCount: 1000, PeakOpensPerSecond: 10001, PerServerOpensPerSecond: 1000},
			// P = 3334, two zones must carry it: n = ⌈3334/2000⌉ = 2.
			wantPerZone: 2, wantTolerant: true, wantReason: ReasonHeadroomCoversOneZone, wantHeadroom: 1.0 / 3, wantFirstEnds: [2]int{0, 333},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Compute(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Cells) != c.in.Cells {
				t.Fatalf("got %d cells", len(p.Cells))
			}
			if p.ZoneFailureTolerant != c.wantTolerant || p.ToleranceReason != c.wantReason || p.ToleranceMessage == "" {
				t.Errorf("tolerant=%v reason=%s (%s)", p.ZoneFailureTolerant, p.ToleranceReason, p.ToleranceMessage)
			}
			if p.Headroom != c.wantHeadroom {
				t.Errorf("headroom %v, want %v", p.Headroom, c.wantHeadroom)
			}
			c0 := p.Cells[0]
			if c0.Start != c.wantFirstEnds[0] || c0.End != c.wantFirstEnds[1] || c0.Name != "rp-cell-0" {
				t.Errorf("cell 0 = %s %d..%d", c0.Name, c0.Start, c0.End)
			}
			for _, cell := range p.Cells {
				for _, z := range c.in.Zones {
					if cell.ServersPerZone[z] != c.wantPerZone {
						t.Errorf("%s zone %s: %d servers, want %d", cell.Name, z, cell.ServersPerZone[z], c.wantPerZone)
					}
				}
				if cell.Servers != c.wantPerZone*len(c.in.Zones) || cell.CapacityOpensPerSecond != int64(cell.Servers)*c.in.PerServerOpensPerSecond {
					t.Errorf("%s: servers %d capacity %d", cell.Name, cell.Servers, cell.CapacityOpensPerSecond)
				}
			}
			checkPlan(t, c.in, p)
		})
	}
}

func TestComputeRefusesBadInput(t *testing.T) {
	good := Input{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 4, SlotCount: 1000, PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 100}
	cases := map[string]struct {
		edit func(*Input)
		want string
	}{
		"no set":            {func(in *Input) { in.Set = "" }, "set:"},
		"no zones":          {func(in *Input) { in.Zones = nil }, "zones: must not be empty"},
		"empty zone":        {func(in *Input) { in.Zones = []string{"a", ""} }, "zones[1]"},
		"duplicate zone":    {func(in *Input) { in.Zones = []string{"a", "a"} }, "zones[1]"},
		"zero cells":        {func(in *Input) { in.Cells = 0 }, "cells:"},
		"cells over slots":  {func(in *Input) { in.Cells, in.SlotCount = 11, 10 }, "cells: 11 exceeds slotCount 10"},
		"slot count zero":   {func(in *Input) { in.SlotCount = 0 }, "slotCount:"},
		"slot count 1001":   {func(in *Input) { in.SlotCount = 1001 }, "slotCount:"},
		"negative peak":     {func(in *Input) { in.PeakOpensPerSecond = -1 }, "peakOpensPerSecond:"},
		"zero per server":   {func(in *Input) { in.PerServerOpensPerSecond = 0 }, "perServerOpensPerSecond:"},
		"headroom one":      {func(in *Input) { in.Headroom = ptr(1) }, "headroom:"},
		"negative headroom": {func(in *Input) { in.Headroom = ptr(-0.1) }, "headroom:"},
		"negative min":      {func(in *Input) { in.MinServersPerZone = -1 }, "minServersPerZone:"},
		// Issue 14: 9e18 at 1 per server wrapped the server count negative.
		"peak that wraps": {func(in *Input) { in.PeakOpensPerSecond, in.PerServerOpensPerSecond, in.Cells = 9e18, 1, 1 }, "capacity: peakOpensPerSecond 9000000000000000000"},
		"peak just past the bound": {func(in *Input) {
			in.PeakOpensPerSecond, in.PerServerOpensPerSecond, in.Cells = 100001, 1, 1
			in.Headroom = ptr(0)
		}, "needs more than 100000 servers per cell"},
		"headroom that multiplies": {func(in *Input) {
			in.PeakOpensPerSecond, in.PerServerOpensPerSecond, in.Cells = 10000, 1, 1
			in.Headroom = ptr(0.99)
		}, "needs more than 100000 servers per cell"},
		"floor past the bound": {func(in *Input) { in.MinServersPerZone = 40000 }, "at least 40000 per zone"},
	}
	for name, c := range cases {
		in := good
		in.Zones = slices.Clone(good.Zones)
		c.edit(&in)
		if _, err := Compute(in); err == nil || !strings.HasPrefix(err.Error(), c.want) && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
	}
}

// Extreme but valid rates never wrap: counts stay positive, capacities saturate.
func TestComputeExtremeRates(t *testing.T) {
	for _, in := range []Input{
		{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 1, SlotCount: 1000, PeakOpensPerSecond: 9e18, PerServerOpensPerSecond: 9e18},
		{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 1, SlotCount: 1000, PeakOpensPerSecond: math.MaxInt64, PerServerOpensPerSecond: math.MaxInt64 / 2},
		{Set: "rp", Zones: []string{"a", "b", "c"}, Cells: 1000, SlotCount: 1000, PeakOpensPerSecond: 9e18, PerServerOpensPerSecond: 1e14},
		{Set: "rp", Zones: []string{"a"}, Cells: 1, SlotCount: 1000, PeakOpensPerSecond: 100000, PerServerOpensPerSecond: 1},
	} {
		p, err := Compute(in)
		if err != nil {
			t.Errorf("%+v: %v", in, err)
			continue
		}
		for _, c := range p.Cells {
			if c.Servers <= 0 || c.Servers > MaxServersPerCell || c.CapacityOpensPerSecond <= 0 {
				t.Fatalf("%+v: cell %s plans %d servers, capacity %d", in, c.Name, c.Servers, c.CapacityOpensPerSecond)
			}
		}
		if p.WorstZoneLossCapacity < 0 || (len(in.Zones) >= 2 && !p.ZoneFailureTolerant) {
			t.Errorf("%+v: worst zone loss %d, tolerant %v", in, p.WorstZoneLossCapacity, p.ZoneFailureTolerant)
		}
	}
}

// checkPlan asserts the invariants every plan must keep.
func checkPlan(t *testing.T, in Input, p Plan) {
	t.Helper()
	owners := make([]int, in.SlotCount)
	for _, c := range p.Cells {
		for s := c.Start; s <= c.End; s++ {
			owners[s]++
		}
		size := c.End - c.Start + 1
		if size < in.SlotCount/in.Cells || size > in.SlotCount/in.Cells+1 {
			t.Fatalf("%s holds %d slots, not an equal share of %d over %d", c.Name, size, in.SlotCount, in.Cells)
		}
		for _, z := range in.Zones {
			if c.ServersPerZone[z] < max(1, in.MinServersPerZone) {
				t.Fatalf("%s: zone %s unused (%d servers)", c.Name, z, c.ServersPerZone[z])
			}
		}
		// Capacity after losing each zone in turn.
		z := len(in.Zones)
		for _, lost := range in.Zones {
			left := int64(0)
			for _, zone := range in.Zones {
				if zone != lost {
					left += int64(c.ServersPerZone[zone]) * in.PerServerOpensPerSecond
				}
			}
			if z >= 2 && p.Headroom >= 1/float64(z)-1e-12 && left < p.CellPeakOpensPerSec {
				t.Fatalf("%s: losing zone %s leaves %d < cell peak %d with headroom %v ≥ 1/%d", c.Name, lost, left, p.CellPeakOpensPerSec, p.Headroom, z)
			}
			if z >= 2 && left != p.WorstZoneLossCapacity {
				t.Fatalf("%s: losing %s leaves %d, plan says %d", c.Name, lost, left, p.WorstZoneLossCapacity)
			}
		}
		// Total capacity holds the headroom: T ≥ P/(1-h).
		if float64(c.CapacityOpensPerSecond)*(1-p.Headroom) < float64(p.CellPeakOpensPerSec)*(1-1e-9) {
			t.Fatalf("%s: capacity %d short of P/(1-h) = %v", c.Name, c.CapacityOpensPerSecond, float64(p.CellPeakOpensPerSec)/(1-p.Headroom))
		}
	}
	for s, n := range owners {
		if n != 1 {
			t.Fatalf("slot %d owned by %d cells", s, n)
		}
	}
	if p.CellPeakOpensPerSec*int64(in.Cells) < in.PeakOpensPerSecond {
		t.Fatalf("cell peaks %d×%d do not cover the set peak %d", p.CellPeakOpensPerSec, in.Cells, in.PeakOpensPerSecond)
	}
	wantTolerant := len(in.Zones) >= 2 && p.WorstZoneLossCapacity >= p.CellPeakOpensPerSec
	if p.ZoneFailureTolerant != wantTolerant {
		t.Fatalf("ZoneFailureTolerant = %v, capacity says %v", p.ZoneFailureTolerant, wantTolerant)
	}
}

func TestNextEpochFirstMatchesCompute(t *testing.T) {
	in := Input{Set: "rp", Zones: []string{"a"}, Cells: 3, SlotCount: 10, PeakOpensPerSecond: 1, PerServerOpensPerSecond: 1}
	p, _ := Compute(in)
	var cells []string
	for _, c := range p.Cells {
		cells = append(cells, c.Name)
	}
	e := NextEpoch(nil, cells, 10, 1, time.Date(2026, 1, 1, 0, 0, 0, 500, time.UTC))
	if !e.EffectiveTime.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("effective time not truncated to the second: %s", e.EffectiveTime)
	}
	for i, r := range e.Ranges {
		c := p.Cells[i]
		if r.Cell != c.Name || r.Start != c.Start || r.End != c.End {
			t.Errorf("range %d = %+v, plan says %s %d..%d", i, r, c.Name, c.Start, c.End)
		}
	}
}

func TestNextEpochScaleOutMovesOnlyWhatNewCellsTake(t *testing.T) {
	cells4 := []string{"rp-cell-0", "rp-cell-1", "rp-cell-2", "rp-cell-3"}
	e1 := NextEpoch(nil, cells4, 1000, 1, time.Unix(1_800_000_000, 0))
	e2 := NextEpoch(&e1, append(slices.Clone(cells4), "rp-cell-4", "rp-cell-5"), 1000, 2, time.Unix(1_800_003_600, 0))
	// 1000/6 = 166 r 4: the four old cells keep 167 each, the new ones get 166: 332 move.
	if moved := Moved(&e1, &e2, 1000); moved != 332 {
		t.Errorf("scale 4→6 moved %d slots, want 332", moved)
	}
	for _, c := range cells4 {
		if n := len(e2.Slots(c)); n != 167 {
			t.Errorf("%s keeps %d slots", c, n)
		}
	}
	if got := CellRanges(&e2, "rp-cell-0"); len(got) != 1 || got[0].Start != 0 || got[0].End != 166 {
		t.Errorf("cell 0 after scale-out owns %+v, want 0..166", got)
	}
	tab := &routing.Table{Set: "rp", SlotCount: 1000, Epochs: []routing.Epoch{e1, e2}}
	if _, err := tab.Marshal(); err != nil {
		t.Fatalf("planned epochs are not a valid routing table: %v", err)
	}
	// Scale back in: the removed cells' slots go back, nothing else moves.
	e3 := NextEpoch(&e2, cells4, 1000, 3, time.Unix(1_800_007_200, 0))
	if moved := Moved(&e2, &e3, 1000); moved != 332 {
		t.Errorf("scale 6→4 moved %d slots, want 332", moved)
	}
}

// TestNextEpochSimulation drives random sequences of scale-outs, scale-ins, zone changes and
// headroom changes, in the manner of cluster-api's rollout simulations, and checks every
// invariant after every step.
func TestNextEpochSimulation(t *testing.T) {
	zonesAll := []string{"zone-a", "zone-b", "zone-c", "zone-d", "zone-e"}
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		slotCount := []int{1000, 1000, 100, 37, 12}[rng.IntN(5)]
		set := fmt.Sprintf("s%d", seed)
		var epoch *routing.Epoch
		var cells []string
		nextIndex := 0
		effective := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for step := range 30 {
			// Choose the next cell list: grow, shrink (newest first or a random cell), or stay.
			switch op := rng.IntN(4); {
			case len(cells) == 0 || op == 0:
				for range 1 + rng.IntN(4) {
					if len(cells) < slotCount {
						cells = append(cells, CellName(set, nextIndex))
						nextIndex++
					}
				}
			case op == 1 && len(cells) > 1:
				cells = cells[:len(cells)-1-rng.IntN(len(cells)-1)]
			case op == 2 && len(cells) > 1:
				i := rng.IntN(len(cells))
				cells = slices.Delete(slices.Clone(cells), i, i+1)
			}
			zones := slices.Clone(zonesAll[:1+rng.IntN(len(zonesAll))])
			rng.Shuffle(len(zones), func(i, j int) { zones[i], zones[j] = zones[j], zones[i] })
			in := Input{
				Set: set, Zones: zones, Cells: len(cells), SlotCount: slotCount,
				PeakOpensPerSecond:      rng.Int64N(1_000_000),
				PerServerOpensPerSecond: 1 + rng.Int64N(20_000),
				MinServersPerZone:       rng.IntN(3),
			}
			if rng.IntN(2) == 0 {
				in.Headroom = ptr(rng.Float64() * 0.9)
			}
			p, err := Compute(in)
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			checkPlan(t, in, p)

			effective = effective.Add(time.Hour)
			next := NextEpoch(epoch, cells, slotCount, int64(step+1), effective)
			checkEpoch(t, fmt.Sprintf("seed %d step %d", seed, step), epoch, &next, cells, slotCount)
			epoch = &next
		}
	}
}

func checkEpoch(t *testing.T, where string, prev, next *routing.Epoch, cells []string, slotCount int) {
	t.Helper()
	// Coverage exactly once, via the routing package's own validation.
	tab := &routing.Table{Set: "s", SlotCount: slotCount, Epochs: []routing.Epoch{*next}}
	if err := tab.Validate(); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	for i := 1; i < len(next.Ranges); i++ {
		a, b := next.Ranges[i-1], next.Ranges[i]
		if a.End+1 == b.Start && a.Cell == b.Cell {
			t.Fatalf("%s: adjacent ranges of %s not merged", where, a.Cell)
		}
	}
	base := slotCount / len(cells)
	counts := map[string]int{}
	for _, c := range cells {
		counts[c] = len(next.Slots(c))
		if counts[c] < base || counts[c] > base+1 {
			t.Fatalf("%s: %s holds %d slots, target %d(+1)", where, c, counts[c], base)
		}
	}
	for _, c := range next.Cells() {
		if !slices.Contains(cells, c) {
			t.Fatalf("%s: removed cell %s still owns slots", where, c)
		}
	}
	if prev == nil {
		return
	}
	// Minimal movement: what removed cells held plus what staying cells held above target.
	want := 0
	for s := range slotCount {
		if !slices.Contains(cells, prev.Owner(s)) {
			want++
		}
	}
	for _, c := range cells {
		old := len(prev.Slots(c))
		want += max(0, old-counts[c])
		// A staying cell keeps min(old, target) of its own slots.
		kept := 0
		for _, s := range next.Slots(c) {
			if prev.Owner(s) == c {
				kept++
			}
		}
		if kept != min(old, counts[c]) {
			t.Fatalf("%s: %s kept %d of its %d slots, target %d", where, c, kept, old, counts[c])
		}
	}
	if got := Moved(prev, next, slotCount); got != want {
		t.Fatalf("%s: moved %d slots, minimum is %d", where, got, want)
	}
	// And the targets themselves were the cheapest: the +1s went to the biggest holders, so no
	// other equal split would move fewer. Check by computing the best possible directly.
	olds := make([]int, 0, len(cells))
	for _, c := range cells {
		olds = append(olds, len(prev.Slots(c)))
	}
	slices.SortFunc(olds, func(a, b int) int { return b - a })
	best := want - sumExcess(cells, prev, counts)
	extra := slotCount % len(cells)
	for i, o := range olds {
		tgt := base
		if i < extra {
			tgt++
		}
		best += max(0, o-tgt)
	}
	if want != best {
		t.Fatalf("%s: targets move %d, the best equal split moves %d", where, want, best)
	}
}

func sumExcess(cells []string, prev *routing.Epoch, counts map[string]int) int {
	n := 0
	for _, c := range cells {
		n += max(0, len(prev.Slots(c))-counts[c])
	}
	return n
}

func TestComputeDerivesCellsFromPeak(t *testing.T) {
	in := Input{Set: "rp", Zones: []string{"a", "b", "c"}, SlotCount: 1000, PeakOpensPerSecond: 760_000, PerServerOpensPerSecond: 5000, PerCellOpensPerSecond: 50_000}
	p, err := Compute(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Cells) != 16 || p.CellPeakOpensPerSec != 47_500 {
		t.Errorf("760k/s at 50k per cell: %d cells with peak %d, want 16 cells of 47500", len(p.Cells), p.CellPeakOpensPerSec)
	}
	in.Cells = 3 // an explicit count wins
	if p, _ := Compute(in); len(p.Cells) != 3 {
		t.Errorf("explicit cells ignored: %d", len(p.Cells))
	}
	in.Cells, in.PeakOpensPerSecond = 0, 0
	if p, err := Compute(in); err != nil || len(p.Cells) != 1 {
		t.Errorf("zero peak: %d cells, %v", len(p.Cells), err)
	}
	in.PeakOpensPerSecond, in.PerCellOpensPerSecond = 10_000_000, 1 // more cells than slots
	if _, err := Compute(in); err == nil || !strings.Contains(err.Error(), "exceeds slotCount") {
		t.Errorf("derived cells over slot count: %v", err)
	}
	in.PerCellOpensPerSecond = -1
	if _, err := Compute(in); err == nil || !strings.HasPrefix(err.Error(), "perCellOpensPerSecond") {
		t.Errorf("negative per-cell rate: %v", err)
	}
}

func TestCellName(t *testing.T) {
	if got := CellName("festival", 3); got != "festival-cell-3" {
		t.Errorf("CellName = %q", got)
	}
}

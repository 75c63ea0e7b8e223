// Package plan is the operator's pure planner: from what a RedPacketSet asks for it decides how
// many cells there are, which slots each owns, how many servers each cell runs in each zone, and
// whether the set survives the loss of a zone; and, when the cell count changes, which slots move
// to which cell in the next routing epoch.
//
// Capacity rule (docs/design.md §2, "Zones with 1/3 headroom"): headroom h is the fraction of a
// cell's total capacity held in reserve, 1/Z by default with Z zones. A cell whose peak is P
// needs total capacity T = P/(1-h), spread evenly, so each zone runs n = ⌈T/Z/perServer⌉
// servers. With h ≥ 1/Z the Z-1 zones left after losing one still carry (Z-1)·n·perServer ≥ P:
// the cell is zone-failure tolerant. One zone is never tolerant: there is nothing to fail to.
//
// Rebalancing rule (docs/design.md §2, "Scale-out by ID-range rebalancing"): a new epoch moves as
// few slots as it can. Every cell's target is an equal share (±1); cells that stay keep
// min(current, target) of their slots, and only slots above target and slots of removed cells
// move. No data is copied: the move only applies to packets created from the new epoch's
// effective time on.
//
// This package must never do I/O or import Kubernetes: the operator's reconcilers and the local
// one-command SET both call it, and its tests are plain table tests and seeded simulations.
package plan

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// MaxServersPerCell bounds the servers one cell may be planned with. The CRD refuses a spec
// whose peak needs more than 10,000 per cell before headroom; headroom (at most ×1/(1-h)) and
// the per-zone floor can raise that, and past this bound Compute refuses rather than plan a
// count a Deployment's int32 replicas (or the arithmetic here) could not hold.
const MaxServersPerCell = 100000

// Input is what a RedPacketSet's spec says about sizing.
type Input struct {
	Set                     string
	Zones                   []string
	Cells                   int
	SlotCount               int
	PeakOpensPerSecond      int64    // whole set
	PerServerOpensPerSecond int64    // what one cell server sustains
	Headroom                *float64 // nil: 1/len(Zones) (0 with one zone)
	MinServersPerZone       int      // 0: 1
	// PerCellOpensPerSecond is what one cell (its database, really) sustains at peak. With
	// Cells 0 the cell count is derived from it: ⌈peak / perCell⌉, at least 1.
	PerCellOpensPerSecond int64
}

// Cell is one planned cell.
type Cell struct {
	Index int
	Name  string
	// Start, End are the inclusive slots of the initial, equal split (what the first epoch
	// gives). After a rebalance a cell owns what NextEpoch gave it: read that from the routing
	// table (CellRanges), not from here.
	Start, End             int
	ServersPerZone         map[string]int
	Servers                int
	CapacityOpensPerSecond int64
}

// Reasons for the ZoneFailureTolerant condition, in the CamelCase Kubernetes conditions use.
const (
	ReasonSingleZone            = "SingleZone"
	ReasonInsufficientHeadroom  = "InsufficientHeadroom"
	ReasonHeadroomCoversOneZone = "HeadroomCoversZoneLoss"
)

// Plan is the sizing of a whole set.
type Plan struct {
	Cells                 []Cell
	Headroom              float64
	ZoneFailureTolerant   bool
	ToleranceReason       string // one of the Reason* constants
	ToleranceMessage      string // for humans: the numbers behind the reason
	CellPeakOpensPerSec   int64  // P: each cell's share of the peak
	WorstZoneLossCapacity int64  // per cell, min over zones: capacity left after losing one zone
}

// CellName is the name of cell i of set; every tier derives cell names from it.
func CellName(set string, i int) string { return fmt.Sprintf("%s-cell-%d", set, i) }

// Compute sizes a set. Errors name the offending field so the operator can put them in a
// condition message as is.
func Compute(in Input) (Plan, error) {
	if in.Cells == 0 && in.PerCellOpensPerSecond > 0 {
		in.Cells = int(max(1, ceilDiv(in.PeakOpensPerSecond, in.PerCellOpensPerSecond)))
	}
	if err := validate(in); err != nil {
		return Plan{}, err
	}
	z := len(in.Zones)
	h := defaultHeadroom(z)
	if in.Headroom != nil {
		h = *in.Headroom
	}
	minPerZone := in.MinServersPerZone
	if minPerZone == 0 {
		minPerZone = 1
	}
	per := in.PerServerOpensPerSecond
	cellPeak := ceilDiv(in.PeakOpensPerSecond, int64(in.Cells))

	// n = ⌈P/(1-h)/Z/per⌉. Floating point may land a hair above an integer and cost one
	// spare server, never one short: the exact integer check below tops n up whenever the
	// headroom promises zone-loss tolerance.
	// The float is checked before it becomes an integer: a peak of 9e18 at 1 per server would
	// otherwise wrap the server count negative.
	nf := math.Ceil(float64(cellPeak) / (1 - h) / float64(z) / float64(per) * (1 - 1e-12))
	if nf*float64(z) > MaxServersPerCell || minPerZone*z > MaxServersPerCell {
		return Plan{}, fmt.Errorf("capacity: peakOpensPerSecond %d over %d cells at perServerOpensPerSecond %d (headroom %.3f, at least %d per zone) needs more than %d servers per cell; add cells or raise perServerOpensPerSecond",
			in.PeakOpensPerSecond, in.Cells, per, h, minPerZone, MaxServersPerCell)
	}
	n := int64(nf)
	if z >= 2 && h >= 1/float64(z)-1e-12 {
		n = max(n, ceilDiv(cellPeak, mulSat(int64(z-1), per)))
	}
	n = max(n, int64(minPerZone))

	p := Plan{Headroom: h, CellPeakOpensPerSec: cellPeak}
	if z >= 2 {
		p.WorstZoneLossCapacity = mulSat(mulSat(int64(z-1), n), per)
	}
	switch {
	case z < 2:
		p.ToleranceReason = ReasonSingleZone
		p.ToleranceMessage = fmt.Sprintf("all servers run in zone %s: losing it loses every cell", in.Zones[0])
	case p.WorstZoneLossCapacity < cellPeak:
		p.ToleranceReason = ReasonInsufficientHeadroom
		p.ToleranceMessage = fmt.Sprintf("losing one of %d zones leaves %d opens/s per cell, below the cell peak of %d (headroom %.3f, need ≥ %.3f)",
			z, p.WorstZoneLossCapacity, cellPeak, h, 1/float64(z))
	default:
		p.ZoneFailureTolerant = true
		p.ToleranceReason = ReasonHeadroomCoversOneZone
		p.ToleranceMessage = fmt.Sprintf("losing any one of %d zones leaves %d opens/s per cell for a cell peak of %d",
			z, p.WorstZoneLossCapacity, cellPeak)
	}

	ranges := equalRanges(in.SlotCount, in.Cells)
	for i := range in.Cells {
		perZone := make(map[string]int, z)
		for _, zone := range in.Zones {
			perZone[zone] = int(n)
		}
		p.Cells = append(p.Cells, Cell{
			Index:                  i,
			Name:                   CellName(in.Set, i),
			Start:                  ranges[i][0],
			End:                    ranges[i][1],
			ServersPerZone:         perZone,
			Servers:                int(n) * z,
			CapacityOpensPerSecond: mulSat(mulSat(int64(z), n), per),
		})
	}
	return p, nil
}

func defaultHeadroom(zones int) float64 {
	if zones < 2 {
		return 0 // one zone has nowhere to fail over to; reserving capacity there buys nothing
	}
	return 1 / float64(zones)
}

func validate(in Input) error {
	switch {
	case in.Set == "":
		return errors.New("set: must not be empty")
	case len(in.Zones) == 0:
		return errors.New("zones: must not be empty")
	case in.PerCellOpensPerSecond < 0:
		return fmt.Errorf("perCellOpensPerSecond: %d, must not be negative", in.PerCellOpensPerSecond)
	case in.Cells < 1:
		return fmt.Errorf("cells: %d, must be at least 1 (or set perCellOpensPerSecond to derive it)", in.Cells)
	case in.SlotCount < 1 || in.SlotCount > routing.MaxSlotCount:
		return fmt.Errorf("slotCount: %d outside 1..%d", in.SlotCount, routing.MaxSlotCount)
	case in.Cells > in.SlotCount:
		return fmt.Errorf("cells: %d exceeds slotCount %d (every cell needs a slot)", in.Cells, in.SlotCount)
	case in.PeakOpensPerSecond < 0:
		return fmt.Errorf("peakOpensPerSecond: %d, must not be negative", in.PeakOpensPerSecond)
	case in.PerServerOpensPerSecond < 1:
		return fmt.Errorf("perServerOpensPerSecond: %d, must be at least 1", in.PerServerOpensPerSecond)
	case in.MinServersPerZone < 0:
		return fmt.Errorf("minServersPerZone: %d, must not be negative", in.MinServersPerZone)
	case in.Headroom != nil && (math.IsNaN(*in.Headroom) || *in.Headroom < 0 || *in.Headroom >= 1):
		return fmt.Errorf("headroom: %v outside [0, 1)", *in.Headroom)
	}
	seen := map[string]bool{}
	for i, z := range in.Zones {
		if z == "" {
			return fmt.Errorf("zones[%d]: must not be empty", i)
		}
		if seen[z] {
			return fmt.Errorf("zones[%d]: %q listed twice", i, z)
		}
		seen[z] = true
	}
	return nil
}

// equalRanges cuts [0, slots) into n contiguous ranges whose sizes differ by at most one, the
// larger ones first.
func equalRanges(slots, n int) [][2]int {
	out := make([][2]int, n)
	base, extra := slots/n, slots%n
	start := 0
	for i := range n {
		size := base
		if i < extra {
			size++
		}
		out[i] = [2]int{start, start + size - 1}
		start += size
	}
	return out
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	q := a / b // not (a+b-1)/b, which wraps for a near MaxInt64
	if a%b != 0 {
		q++
	}
	return q
}

// mulSat is a·b for non-negative a and b, saturated at MaxInt64 rather than wrapped: a
// capacity that large only ever compares as "enough".
func mulSat(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

// NextEpoch assigns [0, slotCount) to cells, moving as few slots as possible away from prev
// (nil: the first epoch, an equal contiguous split in the order of cells). cells must be
// non-empty, distinct and at most slotCount (Compute validates the same input); duplicates are
// ignored. The result's ranges are sorted and merged.
func NextEpoch(prev *routing.Epoch, cells []string, slotCount int, number int64, effective time.Time) routing.Epoch {
	cells = dedup(cells)
	next := routing.Epoch{Number: number, EffectiveTime: effective.UTC().Truncate(time.Second)}
	if len(cells) == 0 || slotCount < 1 {
		return next
	}
	owner := make([]string, slotCount)
	if prev == nil {
		for i, r := range equalRanges(slotCount, len(cells)) {
			for s := r[0]; s <= r[1]; s++ {
				owner[s] = cells[i]
			}
		}
		next.Ranges = toRanges(owner)
		return next
	}

	keep := make(map[string][]int, len(cells)) // slots each staying cell holds now, ascending
	for _, c := range cells {
		keep[c] = nil
	}
	var pool []int // slots that must find a new owner
	for s := range slotCount {
		c := prev.Owner(s)
		if _, stays := keep[c]; stays {
			keep[c] = append(keep[c], s)
		} else {
			pool = append(pool, s)
		}
	}

	target := targets(cells, keep, slotCount)
	for _, c := range cells {
		if extra := len(keep[c]) - target[c]; extra > 0 {
			// Give up the highest slots, so what stays is as contiguous as it was.
			pool = append(pool, keep[c][len(keep[c])-extra:]...)
			keep[c] = keep[c][:len(keep[c])-extra]
		}
		for _, s := range keep[c] {
			owner[s] = c
		}
	}
	slices.Sort(pool)
	// Hand the pool out in ascending runs, so each receiving cell gets contiguous slots where
	// the pool allows.
	i := 0
	for _, c := range cells {
		for need := target[c] - len(keep[c]); need > 0; need-- {
			owner[pool[i]] = c
			i++
		}
	}
	next.Ranges = toRanges(owner)
	return next
}

// targets gives every cell slotCount/len(cells) slots and the remainder, one each, to the cells
// holding the most now (earlier in cells on ties): the extra slot is one a big holder already
// has, so it need not move.
func targets(cells []string, holding map[string][]int, slotCount int) map[string]int {
	base, extra := slotCount/len(cells), slotCount%len(cells)
	order := slices.Clone(cells)
	slices.SortStableFunc(order, func(a, b string) int { return len(holding[b]) - len(holding[a]) })
	out := make(map[string]int, len(cells))
	for i, c := range order {
		out[c] = base
		if i < extra {
			out[c]++
		}
	}
	return out
}

// CellRanges lists the ranges cell owns in e, ascending.
func CellRanges(e *routing.Epoch, cell string) []routing.SlotRange {
	var out []routing.SlotRange
	for _, r := range e.Ranges {
		if r.Cell == cell {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b routing.SlotRange) int { return a.Start - b.Start })
	return out
}

// Moved counts the slots whose owner differs between two epochs over [0, slotCount).
func Moved(prev, next *routing.Epoch, slotCount int) int {
	n := 0
	for s := range slotCount {
		if prev.Owner(s) != next.Owner(s) {
			n++
		}
	}
	return n
}

func toRanges(owner []string) []routing.SlotRange {
	var out []routing.SlotRange
	for s, c := range owner {
		if n := len(out); n > 0 && out[n-1].Cell == c && out[n-1].End == s-1 {
			out[n-1].End = s
			continue
		}
		out = append(out, routing.SlotRange{Start: s, End: s, Cell: c})
	}
	return out
}

func dedup(cells []string) []string {
	out := make([]string, 0, len(cells))
	for _, c := range cells {
		if c != "" && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

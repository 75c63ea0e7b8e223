// Package masking is the operator's durable masking policy for one cell (docs/design.md §2, "Who
// decides a mask"): from the error counts the cell's servers publish per logical table it
// decides which slots stop getting new packets, and when a quiet table's mask lifts. Servers
// trip their own local breaker at once; this is the slower, cell-wide layer that survives
// restarts and reaches the gateways through the routing ConfigMap.
//
// The policy has a safety valve like MachineHealthCheck's: a mask budget (a fraction of the
// slots the cell owns in the routing epoch in force, rounded up). Past it no further table is
// masked and the decision says so, because masking everything is an outage the operator would
// have caused itself. The budget is per cell, never set-wide: each cell decides alone
// (docs/designdoc/masking.md).
//
// Decide is pure: the cell reconciler gathers the counts and the masks in force, calls it, and
// writes the result. It must never do I/O.
package masking

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// Policy is a set's masking policy, as its spec gives it.
type Policy struct {
	Threshold        int64         // errors of one logical table within Window that mask it
	Window           time.Duration // span errors are counted over
	CoolDown         time.Duration // a mask lifts after this long with no error
	MaxMaskedPercent int           // budget: most of the cell's owned slots masked at once
}

// Budget is how many slots percent of owned allows, rounded up: rounding down would leave a
// cell with fewer than 100/percent slots (every cell of a large set) unable to mask anything.
func Budget(percent, owned int) int {
	if percent <= 0 || owned <= 0 {
		return 0
	}
	return min((percent*owned+99)/100, owned)
}

// Input is what the reconciler observed.
type Input struct {
	Now       time.Time
	Layout    shard.Layout
	SlotCount int
	Owned     []int            // slots the cell owns in the routing epoch in force now
	Errors    map[string]int64 // errors per logical table name within Window
	Recent    map[string]int64 // errors per logical table name within max(CoolDown, Window)
	// RecentCalls is every call (failed or not) per logical table within max(CoolDown,
	// Window). A mask lifts only on evidence of health: calls and no error. A table no server
	// reported on (a server stopped publishing, or nothing touched the table) is unknown, and
	// unknown keeps the mask.
	RecentCalls map[string]int64
	Active      []control.Mask // the operator's masks in force (source operator)
}

// Decision is what the cell's operator masks should be from now on.
type Decision struct {
	Masks  []control.Mask // every operator mask to keep in force, sorted by Start
	Added  []string       // tables masked by this decision
	Lifted []string       // tables whose mask lifted
	// Released are tables whose masks covered only slots the cell no longer owns: another
	// cell creates packets there now, and this cell's failing table says nothing about it.
	Released        []string
	Deferred        []string // tables over the threshold left unmasked by the budget
	BudgetExhausted bool
	MaskedSlots     int
	BudgetSlots     int
}

// Decide applies the policy.
func Decide(p Policy, in Input) Decision {
	var d Decision
	owned := map[int]bool{}
	for _, s := range in.Owned {
		owned[s] = true
	}
	d.BudgetSlots = Budget(p.MaxMaskedPercent, len(owned))

	// Masks in force, clipped to the owned slots and grouped by the logical table their slots
	// map to. A slot that moved to another cell is that cell's to mask: keeping it here would
	// spend this cell's budget and close the slot at its new owner too.
	byTable := map[string][]control.Mask{}
	var released []string
	for _, m := range in.Active {
		name := in.Layout.Name(in.Layout.Of(m.Start))
		kept := clip(m, owned)
		if len(kept) == 0 {
			if !slices.Contains(released, name) {
				released = append(released, name)
			}
			continue
		}
		byTable[name] = append(byTable[name], kept...)
	}
	for _, name := range released {
		if byTable[name] == nil {
			d.Released = append(d.Released, name)
		}
	}
	sort.Strings(d.Released)
	tables := make([]string, 0, len(byTable))
	for name := range byTable {
		tables = append(tables, name)
	}
	sort.Strings(tables)
	for _, name := range tables {
		ms := byTable[name]
		since := ms[0].Since
		for _, m := range ms {
			if m.Since.Before(since) {
				since = m.Since
			}
		}
		if in.Now.Sub(since) >= p.CoolDown && in.Recent[name] == 0 && in.RecentCalls[name] > 0 {
			d.Lifted = append(d.Lifted, name)
			continue
		}
		for _, m := range ms {
			d.Masks = append(d.Masks, m)
			d.MaskedSlots += m.End - m.Start + 1
		}
	}

	// New candidates, worst first, so the budget goes to the tables failing the most.
	type candidate struct {
		name   string
		errors int64
	}
	var cands []candidate
	for name, n := range in.Errors {
		if n < p.Threshold || byTable[name] != nil {
			continue
		}
		cands = append(cands, candidate{name, n})
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].errors != cands[j].errors {
			return cands[i].errors > cands[j].errors
		}
		return cands[i].name < cands[j].name
	})
	for _, c := range cands {
		t, err := control.ParseTable(in.Layout, c.name)
		if err != nil {
			continue // a table this layout does not have: nothing of this cell to mask
		}
		var slots []int
		for _, s := range in.Layout.Slots(t, in.SlotCount) {
			if owned[s] {
				slots = append(slots, s)
			}
		}
		if len(slots) == 0 {
			continue
		}
		if d.MaskedSlots+len(slots) > d.BudgetSlots {
			d.Deferred = append(d.Deferred, c.name)
			d.BudgetExhausted = true
			continue
		}
		reason := fmt.Sprintf("table %s: %d errors in %s (threshold %d)", c.name, c.errors, p.Window, p.Threshold)
		for _, r := range runs(slots) {
			d.Masks = append(d.Masks, control.Mask{Start: r[0], End: r[1], Reason: reason, Source: control.SourceOperator, Since: in.Now})
		}
		d.Added = append(d.Added, c.name)
		d.MaskedSlots += len(slots)
	}
	slices.SortFunc(d.Masks, func(a, b control.Mask) int { return a.Start - b.Start })
	return d
}

// clip returns the parts of m on owned slots, as masks with m's reason, source and age.
func clip(m control.Mask, owned map[int]bool) []control.Mask {
	var slots []int
	for s := m.Start; s <= m.End; s++ {
		if owned[s] {
			slots = append(slots, s)
		}
	}
	out := make([]control.Mask, 0, 1)
	for _, r := range runs(slots) {
		c := m
		c.Start, c.End = r[0], r[1]
		out = append(out, c)
	}
	return out
}

// runs turns ascending slots into inclusive [start, end] runs.
func runs(slots []int) [][2]int {
	var out [][2]int
	for _, s := range slots {
		if n := len(out); n > 0 && out[n-1][1] == s-1 {
			out[n-1][1] = s
			continue
		}
		out = append(out, [2]int{s, s})
	}
	return out
}

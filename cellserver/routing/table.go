// Package routing owns the routing table of a SET: which cell owns which slot, epoch by epoch,
// which slots are masked, and (in local mode) where each cell's servers listen. It is the one
// format the operator writes (routing.json in the routing ConfigMap) and the servers and
// gateways read.
//
// A table is a list of epochs. Each epoch assigns every slot in [0, SlotCount) to exactly one
// cell and takes effect at its EffectiveTime. A packet belongs for ever to the owner of its slot
// at the packet's creation second (which the packet ID encodes), so scale-out and scale-in never
// copy data: a new epoch only changes where packets created from its effective time on live.
// The first epoch reaches back to the beginning of time, because a packet cannot predate its
// set and a server whose clock lags the operator's must still find an owner. Effective times are
// whole seconds, because packet IDs only carry the second: a sub-second boundary would let the
// server that issued an ID and the gateway that routes it disagree about its epoch.
//
// This package is pure apart from Load and the Watcher, which read one file. It must never
// talk to Kubernetes, a database or the network: every tier imports it.
package routing

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
)

// MaxSlotCount is the largest slot count a table may declare: the slot is the last three
// decimal digits of a packet ID.
const MaxSlotCount = 1000

// SlotRange assigns the inclusive slots Start..End to one cell.
type SlotRange struct {
	Start int    `json:"start"`
	End   int    `json:"end"`
	Cell  string `json:"cell"`
}

// Epoch is one complete assignment of slots to cells, in force from EffectiveTime until the
// next epoch's EffectiveTime.
type Epoch struct {
	Number        int64       `json:"number"`
	EffectiveTime time.Time   `json:"effectiveTime"`
	Ranges        []SlotRange `json:"ranges"`
	// FirstEffectiveTime is, for an epoch pushed back because readers were late, the
	// effective time it was first planned with; it bounds how long it is pushed back. Readers
	// ignore it.
	FirstEffectiveTime time.Time `json:"firstEffectiveTime,omitzero"`
}

// MaskedRange is a run of slots in which no new packet may be created (docs/design.md §2, masking).
// Packets already issued there stay routable.
type MaskedRange struct {
	Start  int       `json:"start"`
	End    int       `json:"end"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Table is the whole routing state of one SET.
type Table struct {
	Set       string              `json:"set"`
	SlotCount int                 `json:"slotCount"`
	Epochs    []Epoch             `json:"epochs"`
	Masked    []MaskedRange       `json:"masked"`
	Endpoints map[string][]string `json:"endpoints,omitempty"`
}

// ErrNoOwner is returned when a slot has no owner at the asked time (slot out of range or an
// empty table).
var ErrNoOwner = errors.New("no owner")

// ErrWrongCell is wrapped by CheckOwner when a packet belongs to another cell.
var ErrWrongCell = errors.New("packet belongs to another cell")

// Parse decodes and validates a routing table.
func Parse(data []byte) (*Table, error) {
	var t Table
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("parse routing table: %w", err)
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("parse routing table: %w", err)
	}
	return &t, nil
}

// Load reads and parses a routing table file.
func Load(path string) (*Table, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load routing table: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load routing table %s: %w", path, err)
	}
	return t, nil
}

// MaxTableBytes is the budget of an encoded table. A ConfigMap holds at most 1 MiB (data and
// metadata together) and the set's status mirrors every epoch, so the operator refuses a new
// epoch that would take the table past this, leaving room for masks and the status's own
// fields (docs/designdoc/rebalancing.md, "Size budget").
const MaxTableBytes = 640 << 10

// ErrTableTooLarge is returned by Marshal when the encoding exceeds MaxTableBytes.
var ErrTableTooLarge = errors.New("routing table over its size budget")

// Marshal encodes a table after validating it, so nobody writes a file readers would refuse.
// The encoding is compact: no indentation, and each epoch's adjacent ranges of one cell merged,
// because the table must fit a ConfigMap after many epochs. It fails with ErrTableTooLarge
// past MaxTableBytes.
func (t *Table) Marshal() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("marshal routing table: %w", err)
	}
	out := *t
	if out.Masked == nil {
		out.Masked = []MaskedRange{} // readers see "masked": [] rather than null
	}
	out.Epochs = make([]Epoch, len(t.Epochs))
	for i, e := range t.Epochs {
		e.Ranges = MergeRanges(e.Ranges)
		out.Epochs[i] = e
	}
	data, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("marshal routing table: %w", err)
	}
	data = append(data, '\n')
	if len(data) > MaxTableBytes {
		return nil, fmt.Errorf("marshal routing table: %d bytes with %d epochs: %w (%d bytes)", len(data), len(t.Epochs), ErrTableTooLarge, MaxTableBytes)
	}
	return data, nil
}

// MergeRanges returns ranges sorted by start with adjacent ranges of the same cell joined.
func MergeRanges(ranges []SlotRange) []SlotRange {
	sorted := slices.Clone(ranges)
	slices.SortFunc(sorted, func(a, b SlotRange) int { return a.Start - b.Start })
	out := sorted[:0]
	for _, r := range sorted {
		if n := len(out); n > 0 && out[n-1].Cell == r.Cell && out[n-1].End+1 == r.Start {
			out[n-1].End = r.End
			continue
		}
		out = append(out, r)
	}
	return out
}

// Validate checks every rule a reader relies on. Error messages name the offending field.
func (t *Table) Validate() error {
	if t.SlotCount < 1 || t.SlotCount > MaxSlotCount {
		return fmt.Errorf("slotCount: %d outside 1..%d", t.SlotCount, MaxSlotCount)
	}
	if len(t.Epochs) == 0 {
		return errors.New("epochs: must not be empty")
	}
	for i := range t.Epochs {
		e := &t.Epochs[i]
		if i > 0 {
			prev := &t.Epochs[i-1]
			if e.Number <= prev.Number {
				return fmt.Errorf("epochs[%d].number: %d not above previous epoch %d", i, e.Number, prev.Number)
			}
			if !e.EffectiveTime.After(prev.EffectiveTime) {
				return fmt.Errorf("epochs[%d].effectiveTime: %s not after previous epoch's %s", i,
					e.EffectiveTime.UTC().Format(time.RFC3339), prev.EffectiveTime.UTC().Format(time.RFC3339))
			}
		}
		if e.EffectiveTime.IsZero() {
			return fmt.Errorf("epochs[%d].effectiveTime: must be set", i)
		}
		if e.EffectiveTime.Nanosecond() != 0 {
			return fmt.Errorf("epochs[%d].effectiveTime: %s is not a whole second", i, e.EffectiveTime.Format(time.RFC3339Nano))
		}
		if err := validateCoverage(e.Ranges, t.SlotCount); err != nil {
			return fmt.Errorf("epochs[%d].ranges: %w", i, err)
		}
	}
	for i, m := range t.Masked {
		if m.Start < 0 || m.End >= t.SlotCount || m.Start > m.End {
			return fmt.Errorf("masked[%d]: range %d..%d outside 0..%d or reversed", i, m.Start, m.End, t.SlotCount-1)
		}
	}
	for cell, urls := range t.Endpoints {
		if cell == "" {
			return errors.New("endpoints: empty cell name")
		}
		for j, u := range urls {
			if u == "" {
				return fmt.Errorf("endpoints[%s][%d]: empty URL", cell, j)
			}
		}
	}
	return nil
}

// validateCoverage checks that ranges cover [0, slotCount) exactly once.
func validateCoverage(ranges []SlotRange, slotCount int) error {
	if len(ranges) == 0 {
		return errors.New("must not be empty")
	}
	sorted := slices.Clone(ranges)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].Start < sorted[b].Start })
	next := 0
	for _, r := range sorted {
		if r.Cell == "" {
			return fmt.Errorf("range %d..%d: empty cell name", r.Start, r.End)
		}
		if r.Start > r.End {
			return fmt.Errorf("range %d..%d: start after end", r.Start, r.End)
		}
		if r.Start < next {
			return fmt.Errorf("range %d..%d (%s): overlaps slot %d", r.Start, r.End, r.Cell, r.Start)
		}
		if r.Start > next {
			return fmt.Errorf("slots %d..%d: not owned by any cell", next, r.Start-1)
		}
		if r.End >= slotCount {
			return fmt.Errorf("range %d..%d (%s): beyond slotCount %d", r.Start, r.End, r.Cell, slotCount)
		}
		next = r.End + 1
	}
	if next != slotCount {
		return fmt.Errorf("slots %d..%d: not owned by any cell", next, slotCount-1)
	}
	return nil
}

// EpochAt is the epoch in force at ts: the last one whose EffectiveTime is not after ts, or
// the first epoch when ts precedes them all. ok is false only for a table without epochs.
func (t *Table) EpochAt(ts time.Time) (*Epoch, bool) {
	if len(t.Epochs) == 0 {
		return nil, false
	}
	// Epochs are few (old ones are pruned once settled), so a backwards scan is enough.
	for i := len(t.Epochs) - 1; i > 0; i-- {
		if !t.Epochs[i].EffectiveTime.After(ts) {
			return &t.Epochs[i], true
		}
	}
	return &t.Epochs[0], true
}

// Latest is the newest epoch, which may not be in force yet.
func (t *Table) Latest() *Epoch {
	if len(t.Epochs) == 0 {
		return nil
	}
	return &t.Epochs[len(t.Epochs)-1]
}

// OwnerAt is the cell owning slot at ts and the number of the epoch that says so. For a
// packet, ts is its creation second (ids.CreatedAt).
func (t *Table) OwnerAt(slot int, ts time.Time) (cell string, epoch int64, err error) {
	if slot < 0 || slot >= t.SlotCount {
		return "", 0, fmt.Errorf("slot %d outside 0..%d: %w", slot, t.SlotCount-1, ErrNoOwner)
	}
	e, ok := t.EpochAt(ts)
	if !ok {
		return "", 0, fmt.Errorf("slot %d: table has no epochs: %w", slot, ErrNoOwner)
	}
	if c := e.Owner(slot); c != "" {
		return c, e.Number, nil
	}
	return "", 0, fmt.Errorf("slot %d in epoch %d: %w", slot, e.Number, ErrNoOwner)
}

// PacketOwner is the cell that answers for packet id: the owner of the ID's slot at the ID's
// own creation second (docs/design.md §4.4). A packet never moves, so this holds for its
// whole life whatever epochs come later.
func (t *Table) PacketOwner(id int64) (cell string, epoch int64, err error) {
	return t.OwnerAt(ids.Slot(id), ids.CreatedAt(id))
}

// CheckOwner is nil when cell answers for packet id (PacketOwner); otherwise its error wraps
// ErrWrongCell, and names the owner when there is one.
func (t *Table) CheckOwner(cell string, id int64) error {
	owner, _, err := t.PacketOwner(id)
	if err != nil {
		return fmt.Errorf("packet %d: %w: %v", id, ErrWrongCell, err)
	}
	if owner != cell {
		return fmt.Errorf("packet %d belongs to cell %s: %w", id, owner, ErrWrongCell)
	}
	return nil
}

// Owner is the cell owning slot in this epoch, or "" when none does.
func (e *Epoch) Owner(slot int) string {
	for _, r := range e.Ranges {
		if slot >= r.Start && slot <= r.End {
			return r.Cell
		}
	}
	return ""
}

// Cells lists the cells owning at least one slot in this epoch, sorted.
func (e *Epoch) Cells() []string {
	var out []string
	for _, r := range e.Ranges {
		if !slices.Contains(out, r.Cell) {
			out = append(out, r.Cell)
		}
	}
	slices.Sort(out)
	return out
}

// Slots lists the slots a cell owns in this epoch, ascending.
func (e *Epoch) Slots(cell string) []int {
	var out []int
	for _, r := range e.Ranges {
		if r.Cell != cell {
			continue
		}
		for s := r.Start; s <= r.End; s++ {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// OwnedSlots lists the slots cell owns at ts, ascending, masked or not.
func (t *Table) OwnedSlots(cell string, ts time.Time) []int {
	e, ok := t.EpochAt(ts)
	if !ok {
		return nil
	}
	return e.Slots(cell)
}

// CreatableSlots lists the slots cell owns at ts that are not masked: where new packets may go.
func (t *Table) CreatableSlots(cell string, ts time.Time) []int {
	owned := t.OwnedSlots(cell, ts)
	out := owned[:0]
	for _, s := range owned {
		if !t.IsMasked(s) {
			out = append(out, s)
		}
	}
	return out
}

// IsMasked reports whether no new packet may be created in slot.
func (t *Table) IsMasked(slot int) bool {
	for _, m := range t.Masked {
		if slot >= m.Start && slot <= m.End {
			return true
		}
	}
	return false
}

// CellsBy lists, sorted, every cell named by an epoch taking effect at or before t: the cells
// that may hold something created up to t. A cell named only by a later epoch holds nothing yet,
// and may not be serving yet either (it is created when its epoch is decided).
func (t *Table) CellsBy(ts time.Time) []string {
	var out []string
	for i := range t.Epochs {
		if t.Epochs[i].EffectiveTime.After(ts) {
			continue
		}
		for _, c := range t.Epochs[i].Cells() {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// AllCells lists every cell named by any epoch, sorted. Cells that only old epochs name still
// hold packets (they drain), so reads that fan out, like a user's history, must ask them too.
func (t *Table) AllCells() []string {
	var out []string
	for i := range t.Epochs {
		for _, c := range t.Epochs[i].Cells() {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Pruned returns a copy of t without the epochs no unsettled packet can belong to. An epoch
// covers packets created from its EffectiveTime until the next epoch's; once the next epoch took
// effect at or before settledBefore (every packet created before settledBefore is expired,
// refunded and reconciled), the older epoch routes nothing anyone will ask about. The epoch in
// force at settledBefore and every later one are kept, so t always keeps at least one.
func (t *Table) Pruned(settledBefore time.Time) *Table {
	out := *t
	keepFrom := 0
	for i := 1; i < len(t.Epochs); i++ {
		if !t.Epochs[i].EffectiveTime.After(settledBefore) {
			keepFrom = i
		}
	}
	out.Epochs = slices.Clone(t.Epochs[keepFrom:])
	out.Masked = slices.Clone(t.Masked)
	return &out
}

// DrainingCells lists, sorted, the cells that own no slot in the epoch in force at now but
// still appear in an older epoch: they get no new packets and must not be deleted while the
// table names them (docs/design.md §2, scale-in).
func (t *Table) DrainingCells(now time.Time) []string {
	e, ok := t.EpochAt(now)
	if !ok {
		return nil
	}
	current := e.Cells()
	var out []string
	for _, c := range t.AllCells() {
		if !slices.Contains(current, c) {
			out = append(out, c)
		}
	}
	return out
}

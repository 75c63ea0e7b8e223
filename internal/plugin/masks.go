package plugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// DrainReasonPrefix starts the reason of every mask `drain` writes, so `drain --undo` lifts
// exactly those.
const DrainReasonPrefix = "drain: "

// ErrBadInput is a command line that names something that does not exist or fits no slot.
var ErrBadInput = errors.New("bad input")

// MaskResult says what a mask command changed.
type MaskResult struct {
	Cell    string   `json:"cell"`
	Table   string   `json:"table,omitempty"`
	Added   []string `json:"added"`
	Lifted  []string `json:"lifted"`
	Already []string `json:"already,omitempty"`
	// OperatorMasks are the operator's masks on the same slots: they stay, and lift by
	// themselves once the table is quiet.
	OperatorMasks []string `json:"operatorMasks,omitempty"`
}

// ownedSlots are the slots of table t that the cell owns now: the only slots it issues new
// packet IDs in, so the only ones a mask of the cell can stop.
func ownedSlots(cell *rpv1.RedPacketCell, l shard.Layout, t shard.Table) []int {
	var out []int
	for _, s := range l.Slots(t, int(cell.Spec.SlotCount)) {
		for _, r := range cell.Spec.Slots {
			if s >= int(r.Start) && s <= int(r.End) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// runs turns sorted slots into inclusive ranges.
func runs(slots []int, reason string) []control.Mask {
	var out []control.Mask
	for _, s := range slots {
		if n := len(out); n > 0 && out[n-1].End == s-1 {
			out[n-1].End = s
			continue
		}
		out = append(out, control.Mask{Start: s, End: s, Reason: reason, Source: control.SourceManual})
	}
	return out
}

func (p *Plugin) tableOf(cell *rpv1.RedPacketCell, table string) (shard.Layout, shard.Table, error) {
	l := layoutOf(cell.Spec.Template)
	t, err := control.ParseTable(l, table)
	if err != nil {
		return l, t, fmt.Errorf("%w: table: %v", ErrBadInput, err)
	}
	if t.DB >= l.Databases || t.Table >= l.TablesPerDB {
		return l, t, fmt.Errorf("%w: table: %s is outside cell %s's layout of %d databases × %d tables", ErrBadInput, table, cell.Name, l.Databases, l.TablesPerDB)
	}
	return l, t, nil
}

// Mask stops new packets in the slots of a logical table that the cell owns, with a manual
// mask the operator reports and never lifts.
func (p *Plugin) Mask(ctx context.Context, cellName, table, reason string) (*MaskResult, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, fmt.Errorf("%w: --reason is required: it is what the next person on call reads", ErrBadInput)
	}
	cell, err := p.getCell(ctx, cellName)
	if err != nil {
		return nil, err
	}
	l, t, err := p.tableOf(cell, table)
	if err != nil {
		return nil, err
	}
	slots := ownedSlots(cell, l, t)
	if len(slots) == 0 {
		return nil, fmt.Errorf("%w: table: cell %s owns no slot served by %s (it owns %s)", ErrBadInput, cell.Name, l.Name(t), ranges(cell.Spec.Slots))
	}
	return p.addMasks(ctx, cell, l.Name(t), runs(slots, reason))
}

// Unmask lifts the manual masks on a logical table's slots of the cell.
func (p *Plugin) Unmask(ctx context.Context, cellName, table string) (*MaskResult, error) {
	cell, err := p.getCell(ctx, cellName)
	if err != nil {
		return nil, err
	}
	l, t, err := p.tableOf(cell, table)
	if err != nil {
		return nil, err
	}
	served := l.Slots(t, int(cell.Spec.SlotCount))
	in := func(m control.Mask) (all, any bool) {
		all = true
		for s := m.Start; s <= m.End; s++ {
			if slices.Contains(served, s) {
				any = true
			} else {
				all = false
			}
		}
		return all, any
	}
	res := &MaskResult{Cell: cell.Name, Table: l.Name(t), Added: []string{}, Lifted: []string{}}
	err = p.editManual(ctx, cell, res, func(active []control.Mask) ([]control.Mask, error) {
		var keep []control.Mask
		for _, m := range active {
			all, any := in(m)
			switch {
			case all:
				res.Lifted = append(res.Lifted, slotRange(m.Start, m.End))
			case any:
				return nil, fmt.Errorf("%w: manual mask %s (%q) covers more than %s; lift it with the command that set it (drain --undo)", ErrBadInput, slotRange(m.Start, m.End), m.Reason, l.Name(t))
			default:
				keep = append(keep, m)
			}
		}
		return keep, nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Drain stops new packets in every slot the cell owns (manual masks with the drain reason),
// so gateways create them in the other cells, while the cell keeps serving its packets.
// undo lifts those masks.
func (p *Plugin) Drain(ctx context.Context, cellName, reason string, undo bool) (*MaskResult, error) {
	cell, err := p.getCell(ctx, cellName)
	if err != nil {
		return nil, err
	}
	if undo {
		res := &MaskResult{Cell: cell.Name, Added: []string{}, Lifted: []string{}}
		err := p.editManual(ctx, cell, res, func(active []control.Mask) ([]control.Mask, error) {
			var keep []control.Mask
			for _, m := range active {
				if strings.HasPrefix(m.Reason, DrainReasonPrefix) {
					res.Lifted = append(res.Lifted, slotRange(m.Start, m.End))
					continue
				}
				keep = append(keep, m)
			}
			return keep, nil
		})
		return res, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, fmt.Errorf("%w: --reason is required: it is what the next person on call reads", ErrBadInput)
	}
	if len(cell.Spec.Slots) == 0 {
		return nil, fmt.Errorf("%w: cell: %s owns no slot in the current epoch: it already gets no new packets", ErrBadInput, cell.Name)
	}
	var masks []control.Mask
	for _, r := range cell.Spec.Slots {
		masks = append(masks, control.Mask{Start: int(r.Start), End: int(r.End), Reason: DrainReasonPrefix + reason, Source: control.SourceManual})
	}
	return p.addMasks(ctx, cell, "", masks)
}

func (p *Plugin) addMasks(ctx context.Context, cell *rpv1.RedPacketCell, table string, add []control.Mask) (*MaskResult, error) {
	res := &MaskResult{Cell: cell.Name, Table: table, Added: []string{}, Lifted: []string{}}
	err := p.editManual(ctx, cell, res, func(active []control.Mask) ([]control.Mask, error) {
		out := slices.Clone(active)
		for _, m := range add {
			if slices.ContainsFunc(active, func(a control.Mask) bool { return a.Start == m.Start && a.End == m.End }) {
				res.Already = append(res.Already, slotRange(m.Start, m.End))
				continue
			}
			out = append(out, m)
			res.Added = append(res.Added, slotRange(m.Start, m.End))
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// editManual edits the cell's manual masks under the control schema's lock and notes the
// operator's masks on the same cell.
func (p *Plugin) editManual(ctx context.Context, cell *rpv1.RedPacketCell, res *MaskResult, edit func([]control.Mask) ([]control.Mask, error)) error {
	db, err := p.openCellDB(ctx, cell)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := control.EditSourceMasks(ctx, db, p.controlSchema(), control.SourceManual, edit); err != nil {
		return fmt.Errorf("cell %s: %w", cell.Name, err)
	}
	all, err := control.ReadMasks(ctx, db, p.controlSchema())
	if err != nil {
		return fmt.Errorf("cell %s: %w", cell.Name, err)
	}
	for _, m := range all {
		if m.Source == control.SourceOperator {
			res.OperatorMasks = append(res.OperatorMasks, slotRange(m.Start, m.End))
		}
	}
	return nil
}

package plugin

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
)

// liveReport is how recent a server's epoch report must be to count it as running: servers
// re-report every 10 s (cmd/cellserver), so a minute allows for a few missed reports.
const liveReport = time.Minute

// SetStatus is `kubectl redpacket status SET`.
type SetStatus struct {
	Namespace  string        `json:"namespace"`
	Name       string        `json:"name"`
	Cells      []CellStatus  `json:"cells"`
	Epochs     []EpochStatus `json:"epochs"`
	Masks      []MaskStatus  `json:"masks"`
	Conditions []Condition   `json:"conditions"`
}

// CellStatus is one cell's line.
type CellStatus struct {
	Name         string `json:"name"`
	Slots        string `json:"slots"`
	Servers      int32  `json:"servers"`
	ReadyServers int32  `json:"readyServers"`
	Available    string `json:"available"`
	Draining     bool   `json:"draining"`
	// Reported are the servers that reported the epoch they hold within the last minute.
	Reported    []control.ServerEpoch `json:"reportedServers"`
	TableErrors []TableErrors         `json:"tableErrors,omitempty"`
	// DatabaseError says why the cell's database could not be read (masks and epochs then
	// come from the cell's status alone).
	DatabaseError string `json:"databaseError,omitempty"`
}

// TableErrors is a logical table's errors in the last masking window.
type TableErrors struct {
	Table  string `json:"table"`
	Errors int64  `json:"errors"`
	Calls  int64  `json:"calls"`
}

// EpochStatus is one kept routing epoch and which servers hold it.
type EpochStatus struct {
	Number        int64     `json:"number"`
	EffectiveTime time.Time `json:"effectiveTime"`
	// State is pending (takes effect later), in-force, or kept (older; still routes the
	// packets created under it).
	State     string   `json:"state"`
	HeldBy    []string `json:"heldBy"`
	NotHeldBy []string `json:"notHeldBy"`
}

// MaskStatus is one mask in force.
type MaskStatus struct {
	Cell   string    `json:"cell"`
	Slots  string    `json:"slots"`
	Table  string    `json:"table,omitempty"`
	Source string    `json:"source,omitempty"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Condition is one of the set's conditions.
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Status gathers a set's state: its objects' status, and from each cell's control schema the
// masks in force (with their source) and the epoch every live server holds.
func (p *Plugin) Status(ctx context.Context, name string) (*SetStatus, error) {
	set, err := p.getSet(ctx, name)
	if err != nil {
		return nil, err
	}
	cells, err := p.listCells(ctx, name)
	if err != nil {
		return nil, err
	}
	sort.Slice(cells, func(i, j int) bool { return cells[i].Spec.Index < cells[j].Spec.Index })
	out := &SetStatus{Namespace: set.Namespace, Name: set.Name, Cells: []CellStatus{}, Epochs: []EpochStatus{}, Masks: []MaskStatus{}, Conditions: []Condition{}}
	for _, c := range set.Status.Conditions {
		out.Conditions = append(out.Conditions, Condition{Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message})
	}
	now := p.now()
	var servers []control.ServerEpoch
	for i := range cells {
		cell := &cells[i]
		cs := CellStatus{Name: cell.Name, Slots: ranges(cell.Spec.Slots), Servers: cell.Status.Servers, ReadyServers: cell.Status.ReadyServers,
			Available: "Unknown", Draining: cell.Spec.Draining, Reported: []control.ServerEpoch{}}
		if c := meta.FindStatusCondition(cell.Status.Conditions, rpv1.CellAvailable); c != nil {
			cs.Available = string(c.Status)
		}
		for _, te := range cell.Status.TableErrors {
			cs.TableErrors = append(cs.TableErrors, TableErrors{Table: te.Table, Errors: te.Errors, Calls: te.Calls})
		}
		layout := layoutOf(cell.Spec.Template)
		fromStatus := func() {
			for _, m := range cell.Status.MaskedSlots {
				out.Masks = append(out.Masks, MaskStatus{Cell: cell.Name, Slots: slotRange(int(m.Start), int(m.End)), Table: m.Table, Reason: m.Reason, Since: m.Since.UTC()})
			}
		}
		db, err := p.openCellDB(ctx, cell)
		if err != nil {
			cs.DatabaseError = err.Error()
			fromStatus()
			out.Cells = append(out.Cells, cs)
			continue
		}
		masks, merr := control.ReadMasks(ctx, db, p.controlSchema())
		reps, rerr := control.ReadRoutingEpochs(ctx, db, p.controlSchema(), now.Add(-liveReport))
		db.Close()
		switch {
		case merr != nil:
			cs.DatabaseError = merr.Error()
			fromStatus()
		default:
			for _, m := range masks {
				out.Masks = append(out.Masks, MaskStatus{Cell: cell.Name, Slots: slotRange(m.Start, m.End), Table: layout.Name(layout.Of(m.Start)),
					Source: m.Source, Reason: m.Reason, Since: m.Since})
			}
		}
		if rerr != nil {
			cs.DatabaseError = strings.TrimPrefix(cs.DatabaseError+"; ", "; ") + rerr.Error()
		} else {
			cs.Reported = reps
			servers = append(servers, reps...)
		}
		out.Cells = append(out.Cells, cs)
	}
	epochs := set.Status.Routing.Epochs
	for i, e := range epochs {
		es := EpochStatus{Number: e.Number, EffectiveTime: e.EffectiveTime.UTC(), HeldBy: []string{}, NotHeldBy: []string{}}
		switch {
		case e.EffectiveTime.Time.After(now):
			es.State = "pending"
		case i == len(epochs)-1 || epochs[i+1].EffectiveTime.Time.After(now):
			es.State = "in-force"
		default:
			es.State = "kept"
		}
		for _, s := range servers {
			if s.Epoch >= e.Number {
				es.HeldBy = append(es.HeldBy, s.Server)
			} else {
				es.NotHeldBy = append(es.NotHeldBy, s.Server)
			}
		}
		out.Epochs = append(out.Epochs, es)
	}
	return out, nil
}

func slotRange(start, end int) string {
	if start == end {
		return fmt.Sprint(start)
	}
	return fmt.Sprintf("%d-%d", start, end)
}

func ranges(rs []rpv1.SlotRange) string {
	if len(rs) == 0 {
		return "-"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = slotRange(int(r.Start), int(r.End))
	}
	return strings.Join(parts, ",")
}

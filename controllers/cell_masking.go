package controllers

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/controllers/masking"
)

// defaultMaskPoll is how often a ready cell's error counts are read.
const defaultMaskPoll = 10 * time.Second

// maxTableErrorsInStatus bounds the per-table error summary in a cell's status.
const maxTableErrorsInStatus = 20

// CellDBOpener opens a cell's database as the operator (which holds the cell's credentials,
// as MySQL operators do). Tests point it at a local MariaDB.
type CellDBOpener func(ctx context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error)

// DialCellDB reaches the cell's primary through its headless Service.
func DialCellDB(_ context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = string(creds.Data["user"])
	cfg.Passwd = string(creds.Data["password"])
	cfg.Net = "tcp"
	cfg.Addr = fmt.Sprintf("%s.%s.%s.svc:%d", cell.MySQLPodName(0), cell.MySQLName(), cell.Namespace, MySQLPort)
	cfg.ParseTime = true
	cfg.Timeout = 3 * time.Second
	cfg.ReadTimeout = 5 * time.Second
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("dsn for cell %s: %w", cell.Name, err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(2)
	return db, nil
}

// cellDBs keeps one pool per cell, keyed by UID so a recreated cell gets a fresh pool.
type cellDBs struct {
	mu   sync.Mutex
	open CellDBOpener
	dbs  map[types.UID]*sql.DB
}

func (c *cellDBs) get(ctx context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if db, ok := c.dbs[cell.UID]; ok {
		return db, nil
	}
	open := c.open
	if open == nil {
		open = DialCellDB
	}
	db, err := open(ctx, cell, creds)
	if err != nil {
		return nil, err
	}
	if c.dbs == nil {
		c.dbs = map[types.UID]*sql.DB{}
	}
	c.dbs[cell.UID] = db
	return db, nil
}

// forget closes and drops a deleted cell's pool.
func (c *cellDBs) forget(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if db, ok := c.dbs[uid]; ok {
		_ = db.Close()
		delete(c.dbs, uid)
	}
}

// reconcileMasks gathers the cell's error counts and masks in force, lets the pure policy
// decide, writes the operator's masks to the control schema (where servers read them within a
// second) and mirrors them into the cell's status (where the set collects them for the routing
// ConfigMap). Manual masks are reported but never lifted.
func (r *CellReconciler) reconcileMasks(ctx context.Context, cell *rpv1.RedPacketCell, now time.Time) error {
	db, err := r.dbs.forCell(ctx, r.Client, cell)
	if err != nil {
		return err
	}
	if err := control.EnsureSchema(ctx, db, control.DefaultSchema); err != nil {
		return fmt.Errorf("control schema: %w", err)
	}
	p := cell.Spec.Masking
	policy := masking.Policy{
		Threshold: int64(p.ErrorThreshold), Window: p.WindowOrDefault(), CoolDown: p.CoolDownOrDefault(),
		MaxMaskedPercent: int(p.MaxMaskedPercent),
	}
	if policy.Threshold <= 0 {
		policy.Threshold = 50
	}
	windowCounts, err := control.ReadErrorCounts(ctx, db, control.DefaultSchema, now.Add(-policy.Window))
	if err != nil {
		return fmt.Errorf("read error counts: %w", err)
	}
	// A mask lifts only when its table has been quiet for the cool-down AND the whole window,
	// or the errors still counted in the window would mask it again at the next poll.
	recentCounts, err := control.ReadErrorCounts(ctx, db, control.DefaultSchema, now.Add(-max(policy.CoolDown, policy.Window)))
	if err != nil {
		return fmt.Errorf("read error counts: %w", err)
	}
	inForce, err := control.ReadMasks(ctx, db, control.DefaultSchema)
	if err != nil {
		return fmt.Errorf("read masks: %w", err)
	}
	var ours []control.Mask
	for _, m := range inForce {
		if m.Source == control.SourceOperator {
			ours = append(ours, m)
		}
	}
	layout := shard.Layout{Databases: int(cell.Spec.Template.Shards.Databases), TablesPerDB: int(cell.Spec.Template.Shards.TablesPerDatabase)}
	if layout.Validate() != nil {
		layout = shard.Default
	}
	in := masking.Input{Now: now, Layout: layout, SlotCount: int(cell.Spec.SlotCount), Errors: map[string]int64{}, Recent: map[string]int64{}, Active: ours}
	for _, r := range cell.Spec.Slots {
		for s := int(r.Start); s <= int(r.End); s++ {
			in.Owned = append(in.Owned, s)
		}
	}
	for _, t := range windowCounts {
		in.Errors[t.Table] = t.Errors
	}
	for _, t := range recentCounts {
		in.Recent[t.Table] = t.Errors
	}
	d := masking.Decide(policy, in)
	if len(d.Added) > 0 || len(d.Lifted) > 0 {
		if err := control.WriteSourceMasks(ctx, db, control.DefaultSchema, control.SourceOperator, d.Masks); err != nil {
			return fmt.Errorf("write masks: %w", err)
		}
		for _, t := range d.Added {
			EventSlotsMasked.emit(r.Recorder, cell, t)
		}
		for _, t := range d.Lifted {
			EventSlotsUnmasked.emit(r.Recorder, cell, t)
		}
	}
	if d.BudgetExhausted {
		EventMaskBudgetExhausted.emit(r.Recorder, cell, d.BudgetSlots, fmt.Sprint(d.Deferred))
	}
	// Old counts only grow the table; keep a few windows for the SRE to look at.
	if _, err := control.PruneErrorCounts(ctx, db, control.DefaultSchema, now.Add(-3*max(policy.Window, policy.CoolDown))); err != nil {
		return fmt.Errorf("prune error counts: %w", err)
	}

	// Status: every mask in force (manual ones too) and the worst tables of the window.
	var masks []rpv1.MaskedSlotRange
	for _, m := range append(d.Masks, manual(inForce)...) {
		masks = append(masks, rpv1.MaskedSlotRange{
			SlotRange: rpv1.SlotRange{Start: int32(m.Start), End: int32(m.End)},
			Cell:      cell.Name, Table: layout.Name(layout.Of(m.Start)), Reason: m.Reason,
			Since: metav1.NewTime(m.Since.UTC().Truncate(time.Second)),
		})
	}
	sort.Slice(masks, func(i, j int) bool { return masks[i].Start < masks[j].Start })
	cell.Status.MaskedSlots = masks
	sort.Slice(windowCounts, func(i, j int) bool {
		if windowCounts[i].Errors != windowCounts[j].Errors {
			return windowCounts[i].Errors > windowCounts[j].Errors
		}
		return windowCounts[i].Table < windowCounts[j].Table
	})
	cell.Status.TableErrors = nil
	for _, t := range windowCounts {
		if t.Errors == 0 || len(cell.Status.TableErrors) == maxTableErrorsInStatus {
			continue
		}
		cell.Status.TableErrors = append(cell.Status.TableErrors, rpv1.TableErrorSummary{
			Table: t.Table, Errors: t.Errors, Calls: t.Calls, WindowStart: metav1.NewTime(t.FirstWindow.UTC().Truncate(time.Second)),
		})
	}
	return nil
}

func manual(ms []control.Mask) []control.Mask {
	var out []control.Mask
	for _, m := range ms {
		if m.Source != control.SourceOperator {
			out = append(out, m)
		}
	}
	return out
}

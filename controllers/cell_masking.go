package controllers

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/primarydb"
	"github.com/redpacketset/redpacket/cellserver/routing"
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

// DialCellDB reaches the cell's primary through its headless Service: pod 0 for a single
// instance, the writable one of a replicated cell.
func DialCellDB(_ context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = string(creds.Data["user"])
	cfg.Passwd = string(creds.Data["password"])
	cfg.Net = "tcp"
	cfg.Addr = fmt.Sprintf("%s.%s.%s.svc:%d", cell.MySQLPodName(0), cell.MySQLName(), cell.Namespace, MySQLPort)
	cfg.ParseTime = true
	cfg.Timeout = 3 * time.Second
	cfg.ReadTimeout = 5 * time.Second
	var connector driver.Connector
	var err error
	if addrs := databaseInstances(cell); addrs != nil {
		// A replicated cell's control schema is written on its primary, whichever pod it is.
		connector, err = primarydb.New(cfg, addrs, nil)
	} else {
		connector, err = mysql.NewConnector(cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("dsn for cell %s: %w", cell.Name, err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(2)
	return db, nil
}

// defaultCellDBTimeout bounds one pass of calls to a cell's database (a masking poll, a
// settlement check). A hung database then costs its own cell this long, and no other cell
// anything: reconciles of other cells run on other workers.
const defaultCellDBTimeout = 5 * time.Second

// cellDBs keeps one pool per cell, keyed by UID so a recreated cell gets a fresh pool.
type cellDBs struct {
	mu      sync.Mutex
	open    CellDBOpener
	timeout time.Duration // 0: defaultCellDBTimeout
	dbs     map[types.UID]*sql.DB
}

// bound gives ctx the deadline of one pass of calls to a cell's database.
func (c *cellDBs) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	d := c.timeout
	if d <= 0 {
		d = defaultCellDBTimeout
	}
	return context.WithTimeout(ctx, d)
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
	// The slots to guard are those the cell creates packets in now: the epoch in force, not
	// the newest one. A cell being scaled in keeps its slots until the next epoch takes
	// effect, and its failing tables must be masked until then.
	owned, err := r.ownedNow(ctx, cell, now)
	if err != nil {
		return err
	}
	ctx, cancel := r.dbs.bound(ctx)
	defer cancel()
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
	// Spans are measured on the database's clock, which stamps every publish: the servers'
	// window starts are their own clocks', and the operator's may differ from both.
	windowCounts, err := control.ReadRecentErrorCounts(ctx, db, control.DefaultSchema, policy.Window)
	if err != nil {
		return fmt.Errorf("read error counts: %w", err)
	}
	// A mask lifts only when its table has been quiet for the cool-down AND the whole window,
	// or the errors still counted in the window would mask it again at the next poll.
	recentCounts, err := control.ReadRecentErrorCounts(ctx, db, control.DefaultSchema, max(policy.CoolDown, policy.Window))
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
	in := masking.Input{Now: now, Layout: layout, SlotCount: int(cell.Spec.SlotCount), Owned: owned,
		Errors: map[string]int64{}, Recent: map[string]int64{}, RecentCalls: map[string]int64{}, Active: ours}
	for _, t := range windowCounts {
		in.Errors[t.Table] = t.Errors
	}
	for _, t := range recentCounts {
		in.Recent[t.Table] = t.Errors
		in.RecentCalls[t.Table] = t.Calls
	}
	d := masking.Decide(policy, in)
	if !sameMasks(ours, d.Masks) {
		if err := control.WriteSourceMasks(ctx, db, control.DefaultSchema, control.SourceOperator, d.Masks); err != nil {
			return fmt.Errorf("write masks: %w", err)
		}
		for _, t := range d.Added {
			EventSlotsMasked.emit(r.Recorder, cell, t)
		}
		for _, t := range d.Lifted {
			EventSlotsUnmasked.emit(r.Recorder, cell, t)
		}
		for _, t := range d.Released {
			EventSlotsReleased.emit(r.Recorder, cell, t)
		}
	}
	if d.BudgetExhausted {
		EventMaskBudgetExhausted.emit(r.Recorder, cell, d.BudgetSlots, fmt.Sprint(d.Deferred))
	}
	// Old counts only grow the table; keep a few windows for the SRE to look at.
	if _, err := control.PruneStaleErrorCounts(ctx, db, control.DefaultSchema, 3*max(policy.Window, policy.CoolDown)); err != nil {
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

// ownedNow lists the slots cell owns at now in the routing table its set published, which is
// the table its servers and the gateways route by.
func (r *CellReconciler) ownedNow(ctx context.Context, cell *rpv1.RedPacketCell, now time.Time) ([]int, error) {
	cm := &corev1.ConfigMap{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.RoutingConfigMapName()}, cm); err != nil {
		return nil, fmt.Errorf("read routing table: %w", err)
	}
	t, err := routing.Parse([]byte(cm.Data[rpv1.RoutingFile]))
	if err != nil {
		return nil, fmt.Errorf("read routing table %s: %w", cm.Name, err)
	}
	return t.OwnedSlots(cell.Name, now), nil
}

// sameMasks reports whether two mask lists cover the same ranges with the same reasons.
func sameMasks(a, b []control.Mask) bool {
	key := func(ms []control.Mask) []string {
		out := make([]string, 0, len(ms))
		for _, m := range ms {
			out = append(out, fmt.Sprintf("%d-%d %s", m.Start, m.End, m.Reason))
		}
		sort.Strings(out)
		return out
	}
	return slices.Equal(key(a), key(b))
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

package controllers_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestMasking drives the operator's masking end to end: servers' error counts land in each
// cell's real MariaDB control schema, the operator masks the failing table's slots there, in
// the cell and set status and in the routing ConfigMap, stops at the budget, and lifts the mask
// after a quiet cool-down.
func TestMasking(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	dbs, open := cellDatabases(t, "masked-cell-0", "masked-cell-1")
	startManager(t, env, controllers.Options{OpenCellDB: open, MaskPoll: 300 * time.Millisecond})

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "masked", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a", "zone-b"},
			Cells:    2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			Masking: rpv1.MaskingPolicy{
				ErrorThreshold: 5,
				// Long enough that a loaded machine still reads the counts inside the window.
				Window:   &rpv1.Duration{Duration: 8 * time.Second},
				CoolDown: &rpv1.Duration{Duration: time.Second},
				// 1% of a cell's 500 slots: at most 5 masked slots per cell.
				MaxMaskedPercent: 1,
			},
		},
	}
	createReady(t, ctx, c, set)
	for _, db := range dbs {
		testenv.Eventually(t, 30*time.Second, "control schema created by the operator", func() error {
			_, err := control.ReadMasks(ctx, db, control.DefaultSchema)
			return err
		})
	}

	// db_07.t_3 serves slot 73, which cell 0 owns; cell 1 sees nothing.
	if err := control.RecordErrors(ctx, dbs["masked-cell-0"], control.DefaultSchema, "server-a",
		[]control.WindowCount{{Table: "db_07.t_3", WindowStart: time.Now(), Errors: 7, Calls: 9}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "slot 73 masked everywhere", func() error {
		masks, err := control.ReadMasks(ctx, dbs["masked-cell-0"], control.DefaultSchema)
		if err != nil {
			return err
		}
		if len(masks) != 1 || masks[0].Start != 73 || masks[0].End != 73 || masks[0].Source != control.SourceOperator {
			return fmt.Errorf("control masks %+v", masks)
		}
		if other, _ := control.ReadMasks(ctx, dbs["masked-cell-1"], control.DefaultSchema); len(other) != 0 {
			return fmt.Errorf("cell 1 masked %+v", other)
		}
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if s.Status.MaskedSlotCount != 1 || len(s.Status.MaskedSlots) != 1 || s.Status.MaskedSlots[0].Table != "db_07.t_3" || s.Status.MaskedSlots[0].Cell != "masked-cell-0" {
			return fmt.Errorf("set status masked %d %+v", s.Status.MaskedSlotCount, s.Status.MaskedSlots)
		}
		if st, r := condition(s.Status.Conditions, rpv1.SetSlotsMasked); st != metav1.ConditionTrue || r != rpv1.ReasonMasksActive {
			return fmt.Errorf("SlotsMasked %s/%s", st, r)
		}
		tbl, err := routingTable(ctx, c, set)
		if err != nil {
			return err
		}
		if len(tbl.Masked) != 1 || !tbl.IsMasked(73) || tbl.IsMasked(72) {
			return fmt.Errorf("routing table masks %+v", tbl.Masked)
		}
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "masked-cell-0"}, cell); err != nil {
			return err
		}
		if len(cell.Status.TableErrors) != 1 || cell.Status.TableErrors[0].Errors != 7 {
			return fmt.Errorf("cell table errors %+v", cell.Status.TableErrors)
		}
		return nil
	})

	// Twelve more failing tables: the budget of 5 slots stops the masking at four more.
	var burst []control.WindowCount
	for i := 0; i < 12; i++ {
		burst = append(burst, control.WindowCount{Table: fmt.Sprintf("db_%02d.t_0", 10+i), WindowStart: time.Now(), Errors: int64(20 + i), Calls: 40})
	}
	if err := control.RecordErrors(ctx, dbs["masked-cell-0"], control.DefaultSchema, "server-a", burst); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "budget exhausted", func() error {
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if s.Status.MaskedSlotCount != 5 {
			return fmt.Errorf("%d slots masked, want the budget of 5", s.Status.MaskedSlotCount)
		}
		if st, r := condition(s.Status.Conditions, rpv1.SetSlotsMasked); st != metav1.ConditionTrue || r != rpv1.ReasonMaskBudgetExhausted {
			return fmt.Errorf("SlotsMasked %s/%s", st, r)
		}
		return nil
	})

	// No new errors, and the servers keep reporting calls on every masked table (silence
	// would keep the masks: unknown is not healthy): after the window and the cool-down every
	// mask lifts.
	var healthy []control.WindowCount
	for _, w := range append(burst, control.WindowCount{Table: "db_07.t_3"}) {
		healthy = append(healthy, control.WindowCount{Table: w.Table, Calls: 3})
	}
	testenv.Eventually(t, 30*time.Second, "masks lifted after the cool-down", func() error {
		for i := range healthy {
			healthy[i].WindowStart = time.Now()
		}
		if err := control.RecordErrors(ctx, dbs["masked-cell-0"], control.DefaultSchema, "server-a", healthy); err != nil {
			return err
		}
		masks, err := control.ReadMasks(ctx, dbs["masked-cell-0"], control.DefaultSchema)
		if err != nil {
			return err
		}
		if len(masks) != 0 {
			return fmt.Errorf("%d masks still in force", len(masks))
		}
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if st, r := condition(s.Status.Conditions, rpv1.SetSlotsMasked); st != metav1.ConditionFalse || r != rpv1.ReasonNoMasks {
			return fmt.Errorf("SlotsMasked %s/%s", st, r)
		}
		tbl, err := routingTable(ctx, c, set)
		if err != nil {
			return err
		}
		if len(tbl.Masked) != 0 {
			return fmt.Errorf("routing table still masks %+v", tbl.Masked)
		}
		return nil
	})
}

// cellDatabases starts one MariaDB per cell, as in production, so the cells' control and cell
// schemas are apart, and returns an opener the operator uses in place of dialing Services.
func cellDatabases(t *testing.T, cells ...string) (map[string]*sql.DB, controllers.CellDBOpener) {
	t.Helper()
	dbs := map[string]*sql.DB{}
	dsns := map[string]string{}
	for _, cell := range cells {
		m := testenv.StartMariaDB(t)
		db, err := sql.Open("mysql", m.DSN(""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		dbs[cell], dsns[cell] = db, m.DSN("")
	}
	// A pool of its own per open, as DialCellDB makes: the operator closes a deleted cell's pool.
	open := func(_ context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error) {
		if len(creds.Data["password"]) == 0 {
			return nil, fmt.Errorf("no credentials for %s", cell.Name)
		}
		dsn, ok := dsns[cell.Name]
		if !ok {
			return nil, fmt.Errorf("no database for %s", cell.Name)
		}
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { db.Close() })
		return db, nil
	}
	return dbs, open
}

// createReady creates a set and plays the kubelet until all of its cells' children are ready.
func createReady(t *testing.T, ctx context.Context, c client.Client, set *rpv1.RedPacketSet) {
	t.Helper()
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "every cell ready", func() error {
		cells, err := listCells(ctx, c, set)
		if err != nil || len(cells) != int(set.Spec.Cells) {
			return fmt.Errorf("%d cells, %v", len(cells), err)
		}
		for i := range cells {
			if err := markReady(ctx, c, &cells[i], cells[i].Spec.Servers); err != nil {
				return err
			}
		}
		return nil
	})
}

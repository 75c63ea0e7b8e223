package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestMaskingUsesEpochInForceAndDatabaseClock (issue 11 §7): a server whose clock is an hour
// behind still gets its failing table masked, and a cell being scaled in keeps masking the slots
// it owns until the epoch that takes them away is in force.
func TestMaskingUsesEpochInForceAndDatabaseClock(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	dbs, open := cellDatabases(t, "inforce-cell-0", "inforce-cell-1")
	startManager(t, env, controllers.Options{OpenCellDB: open, MaskPoll: 300 * time.Millisecond})
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "inforce", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a", "zone-b"},
			Cells:    2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			// The scale-in below stays pending for the whole test.
			RebalanceDelay: &rpv1.Duration{Duration: time.Hour},
			Masking: rpv1.MaskingPolicy{
				ErrorThreshold: 5, Window: &rpv1.Duration{Duration: 8 * time.Second},
				CoolDown: &rpv1.Duration{Duration: time.Second}, MaxMaskedPercent: 10,
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
	maskedSlots := func(cell string) ([]int, error) {
		ms, err := control.ReadMasks(ctx, dbs[cell], control.DefaultSchema)
		var out []int
		for _, m := range ms {
			for s := m.Start; s <= m.End; s++ {
				out = append(out, s)
			}
		}
		return out, err
	}

	// Cell 0's server reports windows stamped by a clock an hour behind the operator's.
	if err := control.RecordErrors(ctx, dbs["inforce-cell-0"], control.DefaultSchema, "server-slow-clock",
		[]control.WindowCount{{Table: "db_07.t_3", WindowStart: time.Now().Add(-time.Hour), Errors: 9, Calls: 9}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "slot 73 masked although the server's clock is an hour behind", func() error {
		// A failing table keeps failing: the server publishes again every window, so a
		// slow operator pass on a loaded machine still finds the errors inside its span.
		if err := control.RecordErrors(ctx, dbs["inforce-cell-0"], control.DefaultSchema, "server-slow-clock",
			[]control.WindowCount{{Table: "db_07.t_3", WindowStart: time.Now().Add(-time.Hour), Errors: 9, Calls: 9}}); err != nil {
			return err
		}
		got, err := maskedSlots("inforce-cell-0")
		if err != nil || len(got) != 1 || got[0] != 73 {
			return fmt.Errorf("cell 0 masks %v %v", got, err)
		}
		return nil
	})

	// Scale in: cell 1 owns no slot in the newest epoch, which takes effect in an hour. Until
	// then it owns 500..999 and creates packets there.
	scale(t, ctx, c, set, 1)
	testenv.Eventually(t, 30*time.Second, "cell 1 draining in the pending epoch", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "inforce-cell-1"}, cell); err != nil {
			return err
		}
		if !cell.Spec.Draining {
			return fmt.Errorf("cell 1 not draining yet: slots %v", cell.Spec.Slots)
		}
		return nil
	})
	if err := control.RecordErrors(ctx, dbs["inforce-cell-1"], control.DefaultSchema, "server-b",
		[]control.WindowCount{{Table: "db_67.t_3", WindowStart: time.Now(), Errors: 9, Calls: 9}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "slot 673 masked in the cell that still owns it", func() error {
		got, err := maskedSlots("inforce-cell-1")
		if err != nil || len(got) != 1 || got[0] != 673 {
			return fmt.Errorf("cell 1 masks %v %v", got, err)
		}
		s := getSet(t, c, types.NamespacedName{Namespace: "default", Name: "inforce"})
		for _, m := range s.Status.MaskedSlots {
			if m.Start == 673 && m.Cell == "inforce-cell-1" {
				return nil
			}
		}
		return fmt.Errorf("set status masks %+v", s.Status.MaskedSlots)
	})
}

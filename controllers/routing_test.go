package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

func testSet() *rpv1.RedPacketSet {
	return &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "s"},
		Spec: rpv1.RedPacketSetSpec{
			SlotCount:      1000,
			RebalanceDelay: &rpv1.Duration{Duration: 2 * time.Minute},
			Limits:         rpv1.PacketLimits{Expiry: &rpv1.Duration{Duration: 24 * time.Hour}},
		},
	}
}

func TestDecideRouting(t *testing.T) {
	now := time.Date(2026, 2, 17, 20, 0, 0, 0, time.UTC)
	set := testSet()
	two := []string{"s-cell-0", "s-cell-1"}
	three := []string{"s-cell-0", "s-cell-1", "s-cell-2"}

	first := decideRouting(set, routingInput{cells: two, now: now})
	if len(first.Table.Epochs) != 1 || !first.Table.Epochs[0].EffectiveTime.Equal(ids.Epoch) || first.Scheduled != nil {
		t.Fatalf("a new set must start with one epoch from the ID clock's zero: %+v", first.Table.Epochs)
	}
	if err := first.Table.Validate(); err != nil {
		t.Fatal(err)
	}

	same := decideRouting(set, routingInput{published: first.Table, cells: two, now: now})
	if same.Scheduled != nil || len(same.Table.Epochs) != 1 {
		t.Fatalf("unchanged cells scheduled an epoch: %+v", same.Table.Epochs)
	}

	out := decideRouting(set, routingInput{published: first.Table, cells: three, now: now})
	if out.Scheduled == nil || out.Scheduled.Number != 2 || len(out.Table.Epochs) != 2 {
		t.Fatalf("scale-out did not schedule epoch 2: %+v", out.Table.Epochs)
	}
	if want := now.Add(2*time.Minute + time.Second); !out.Scheduled.EffectiveTime.Equal(want) {
		t.Fatalf("epoch 2 effective %s, want %s (rebalance delay ahead, whole second)", out.Scheduled.EffectiveTime, want)
	}
	if out.Moved != 333 {
		t.Fatalf("moved %d slots; the new cell's share is 333", out.Moved)
	}
	// The hand-over gate looks again when its window opens, ahead of the effective time.
	if want := out.Scheduled.EffectiveTime.Add(-2 * plan.HandoverMargin); !out.RequeueAt.Equal(want) {
		t.Fatalf("requeue at %s, want %s", out.RequeueAt, want)
	}

	// Scaling again while epoch 2 is far from taking effect re-plans it under a new number
	// (epoch numbers are never reused: readers holding epoch 2 must be told apart).
	replan := decideRouting(set, routingInput{published: out.Table, cells: two, now: now.Add(time.Minute)})
	if len(replan.Table.Epochs) != 2 || replan.Table.Epochs[1].Number != 3 || len(replan.Table.Epochs[1].Cells()) != 2 || replan.Change.Dropped != 2 {
		t.Fatalf("pending epoch not re-planned as epoch 3: %+v", replan.Table.Epochs)
	}

	// Epoch 1 is kept while packets created under it can be unsettled, then pruned.
	eff := out.Scheduled.EffectiveTime
	kept := decideRouting(set, routingInput{published: out.Table, cells: three, now: eff.Add(48 * time.Hour)})
	if len(kept.Table.Epochs) != 2 || len(kept.Pruned) != 0 {
		t.Fatalf("epoch 1 pruned before 2×expiry + settle window: %+v", kept.Pruned)
	}
	pruned := decideRouting(set, routingInput{published: out.Table, cells: three, now: eff.Add(49*time.Hour + time.Second)})
	if len(pruned.Table.Epochs) != 1 || len(pruned.Pruned) != 1 || pruned.Pruned[0] != 1 {
		t.Fatalf("epoch 1 not pruned after 2×expiry + settle window: %+v", pruned.Table.Epochs)
	}

	// Past the time rule but a cell of epoch 1 still owes packets: kept, and looked at again.
	owed := decideRouting(set, routingInput{published: out.Table, cells: three, now: eff.Add(49*time.Hour + time.Second), settled: func(old, next *routing.Epoch) bool { return false }})
	if len(owed.Table.Epochs) != 2 || len(owed.Pruned) != 0 || len(owed.Unsettled) != 1 || owed.RequeueAt.IsZero() {
		t.Fatalf("epoch 1 pruned although unsettled: %+v", owed)
	}

	masked := decideRouting(set, routingInput{published: first.Table, cells: two, masked: []routing.MaskedRange{{Start: 73, End: 73, Reason: "r", Since: now}}, now: now})
	if !masked.Table.IsMasked(73) || masked.Table.IsMasked(74) {
		t.Fatalf("masks not carried into the table: %+v", masked.Table.Masked)
	}
}

func TestDecideCellStatus(t *testing.T) {
	base := func() *rpv1.RedPacketCell {
		return &rpv1.RedPacketCell{ObjectMeta: metav1.ObjectMeta{Name: "s-cell-0", Generation: 3}, Spec: rpv1.RedPacketCellSpec{Servers: 6}}
	}
	cases := []struct {
		name      string
		obs       cellObservation
		available metav1.ConditionStatus
		reason    string
	}{
		{"nothing yet", cellObservation{}, metav1.ConditionFalse, rpv1.ReasonDependenciesNotReady},
		{"database not ready", cellObservation{mysql: sts(0), servers: dep(6, 6)}, metav1.ConditionFalse, rpv1.ReasonDatabaseNotReady},
		{"servers short", cellObservation{mysql: sts(1), servers: dep(6, 4)}, metav1.ConditionFalse, rpv1.ReasonServersNotReady},
		{"all ready", cellObservation{mysql: sts(1), servers: dep(6, 6)}, metav1.ConditionTrue, rpv1.ReasonReady},
	}
	for _, tc := range cases {
		c := base()
		decideCellStatus(c, tc.obs)
		for _, typ := range []string{rpv1.CellAvailable, rpv1.CellDatabaseReady, rpv1.CellCacheReady, rpv1.CellServersReady} {
			if cond := findCond(c.Status.Conditions, typ); cond == nil || cond.Reason == "" || cond.ObservedGeneration != 3 {
				t.Fatalf("%s: condition %s missing, without reason or generation", tc.name, typ)
			}
		}
		got := findCond(c.Status.Conditions, rpv1.CellAvailable)
		if got.Status != tc.available || got.Reason != tc.reason {
			t.Errorf("%s: Available %s/%s, want %s/%s", tc.name, got.Status, got.Reason, tc.available, tc.reason)
		}
	}
}

func findCond(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

func sts(ready int32) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{Status: appsv1.StatefulSetStatus{ReadyReplicas: ready, Replicas: 1}}
}

func dep(replicas, ready int32) *appsv1.Deployment {
	return &appsv1.Deployment{Status: appsv1.DeploymentStatus{Replicas: replicas, ReadyReplicas: ready}}
}

// TestDecideRoutingHandover: the gate's push-back reaches the table; a delay below the floor
// is clamped and reported; a new epoch past the size budget is refused, keeping the table.
func TestDecideRoutingHandover(t *testing.T) {
	now := time.Date(2026, 2, 17, 20, 0, 0, 0, time.UTC)
	set := testSet()
	four := []string{"s-cell-0", "s-cell-1", "s-cell-2", "s-cell-3"}
	six := append(append([]string{}, four...), "s-cell-4", "s-cell-5")
	first := decideRouting(set, routingInput{cells: four, now: now})
	out := decideRouting(set, routingInput{published: first.Table, cells: six, now: now})
	e2 := out.Scheduled
	late := []plan.CellReaders{{Cell: "s-cell-0", Servers: map[string]int64{"srv-0": 1}}}
	at := e2.EffectiveTime.Add(-45 * time.Second)
	pushed := decideRouting(set, routingInput{published: out.Table, cells: six, now: at, readers: late})
	if pushed.Change.Kind != plan.Replanned || pushed.Scheduled.Number != 3 || !pushed.Scheduled.EffectiveTime.After(e2.EffectiveTime) ||
		pushed.Change.Moved != out.Moved || pushed.Handover.Reason != plan.HandoverWaiting {
		t.Fatalf("late reader did not push epoch 2 back as epoch 3: %+v %+v", pushed.Change, pushed.Handover)
	}
	held := []plan.CellReaders{{Cell: "s-cell-0", Servers: map[string]int64{"srv-0": 2}}}
	if kept := decideRouting(set, routingInput{published: out.Table, cells: six, now: at, readers: held}); kept.Change.Kind != plan.Unchanged || kept.Handover.Reason != plan.HandoverComplete {
		t.Fatalf("held epoch changed: %+v %+v", kept.Change, kept.Handover)
	}

	neg := testSet()
	neg.Spec.RebalanceDelay.Duration = -10 * time.Minute
	clamped := decideRouting(neg, routingInput{published: first.Table, cells: six, now: now})
	if !clamped.DelayClamped || clamped.Scheduled.EffectiveTime.Before(now.Add(plan.MinRebalanceDelay)) {
		t.Fatalf("negative delay: clamped=%v effective %s", clamped.DelayClamped, clamped.Scheduled.EffectiveTime)
	}

	// A history that fills the budget (nothing prunable: a long expiry): the next epoch is
	// refused, the table kept.
	long := testSet()
	long.Spec.Limits.Expiry.Duration = 30 * 24 * time.Hour
	tbl := first.Table
	step := now
	for i := 0; ; i++ {
		step = step.Add(3 * time.Minute)
		var cells []string
		for c := range 2 + (i*7)%11 {
			cells = append(cells, fmt.Sprintf("s-cell-%d", c))
		}
		d := decideRouting(long, routingInput{published: tbl, cells: cells, now: step})
		if d.Refused != "" {
			if d.Change.Kind != plan.Unchanged || len(d.Table.Epochs) != len(tbl.Epochs) || !strings.Contains(d.Refused, "size budget") {
				t.Fatalf("refused epoch still changed the table: %+v", d.Change)
			}
			if _, err := d.Table.Marshal(); err != nil {
				t.Fatalf("kept table does not marshal: %v", err)
			}
			break
		}
		tbl = d.Table
		if len(tbl.Epochs) > 100000 {
			t.Fatal("budget never reached")
		}
	}
}

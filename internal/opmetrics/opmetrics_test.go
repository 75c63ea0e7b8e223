package opmetrics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/opmetrics"
)

// TestStatusBecomesGauges: what a set's and a cell's status say (a cell not Available,
// masked slots, the budget spent, the newest epoch and when it takes effect) is exported with
// the namespace, set and cell labels the data plane's series carry.
func TestStatusBecomesGauges(t *testing.T) {
	env := envtestutil.Start(t)
	ctx := context.Background()
	c := env.Client
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "fest", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{Zones: []string{"a"}, Cells: 2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 10, PerServerOpensPerSecond: 10}},
	}
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_900_000_000, 0)
	set.Status = rpv1.RedPacketSetStatus{ReadyCells: 1, MaskedSlotCount: 3,
		Routing: rpv1.RoutingStatus{CurrentEpoch: 2, Epochs: []rpv1.RoutingEpoch{
			{Number: 1, EffectiveTime: metav1.NewTime(at.Add(-time.Hour)), Ranges: []rpv1.OwnedSlotRange{{SlotRange: rpv1.SlotRange{Start: 0, End: 999}, Cell: "fest-cell-0"}}},
			{Number: 2, EffectiveTime: metav1.NewTime(at), Ranges: []rpv1.OwnedSlotRange{{SlotRange: rpv1.SlotRange{Start: 0, End: 999}, Cell: "fest-cell-0"}}},
		}},
		Conditions: []metav1.Condition{{Type: rpv1.SetSlotsMasked, Status: metav1.ConditionTrue, Reason: rpv1.ReasonMaskBudgetExhausted, Message: "m", LastTransitionTime: metav1.Now()}},
	}
	if err := c.Status().Update(ctx, set); err != nil {
		t.Fatal(err)
	}
	for i, avail := range []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse} {
		cell := &rpv1.RedPacketCell{
			ObjectMeta: metav1.ObjectMeta{Name: set.CellName(i), Namespace: "default"},
			Spec:       rpv1.RedPacketCellSpec{SetName: "fest", Index: int32(i), SlotCount: 1000, Zones: []string{"a"}, Servers: 2, Draining: i == 1},
		}
		if err := c.Create(ctx, cell); err != nil {
			t.Fatal(err)
		}
		cell.Status = rpv1.RedPacketCellStatus{Servers: 2, ReadyServers: int32(2 - i),
			Conditions: []metav1.Condition{{Type: rpv1.CellAvailable, Status: avail, Reason: "R", Message: "m", LastTransitionTime: metav1.Now()}}}
		if i == 0 {
			cell.Status.MaskedSlots = []rpv1.MaskedSlotRange{{SlotRange: rpv1.SlotRange{Start: 7, End: 9}, Reason: "r", Since: metav1.Now()}}
		}
		if err := c.Status().Update(ctx, cell); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(opmetrics.New(c, nil))
	want := `
# HELP redpacket_cell_available 1 while the cell's Available condition is True.
# TYPE redpacket_cell_available gauge
redpacket_cell_available{cell="fest-cell-0",namespace="default",set="fest"} 1
redpacket_cell_available{cell="fest-cell-1",namespace="default",set="fest"} 0
# HELP redpacket_cell_draining 1 while the cell owns no slot in the current epoch.
# TYPE redpacket_cell_draining gauge
redpacket_cell_draining{cell="fest-cell-0",namespace="default",set="fest"} 0
redpacket_cell_draining{cell="fest-cell-1",namespace="default",set="fest"} 1
# HELP redpacket_cell_masked_slots Slots of the cell masked (operator and manual).
# TYPE redpacket_cell_masked_slots gauge
redpacket_cell_masked_slots{cell="fest-cell-0",namespace="default",set="fest"} 3
redpacket_cell_masked_slots{cell="fest-cell-1",namespace="default",set="fest"} 0
# HELP redpacket_cell_ready_servers Server pods of the cell that are ready.
# TYPE redpacket_cell_ready_servers gauge
redpacket_cell_ready_servers{cell="fest-cell-0",namespace="default",set="fest"} 2
redpacket_cell_ready_servers{cell="fest-cell-1",namespace="default",set="fest"} 1
# HELP redpacket_set_mask_budget_exhausted 1 while a cell of the set has spent its mask budget and failing tables stay unmasked (SlotsMasked reason MaskBudgetExhausted).
# TYPE redpacket_set_mask_budget_exhausted gauge
redpacket_set_mask_budget_exhausted{namespace="default",set="fest"} 1
# HELP redpacket_set_masked_slots Slots of the set in which no new packet is created (status.maskedSlotCount).
# TYPE redpacket_set_masked_slots gauge
redpacket_set_masked_slots{namespace="default",set="fest"} 3
# HELP redpacket_set_routing_epoch Number of the set's newest routing epoch (status.routing.currentEpoch).
# TYPE redpacket_set_routing_epoch gauge
redpacket_set_routing_epoch{namespace="default",set="fest"} 2
# HELP redpacket_set_routing_epoch_effective_timestamp_seconds When the set's newest routing epoch takes (or took) effect, Unix seconds.
# TYPE redpacket_set_routing_epoch_effective_timestamp_seconds gauge
redpacket_set_routing_epoch_effective_timestamp_seconds{namespace="default",set="fest"} 1.9e+09
# HELP redpacket_operator_status_read_errors 1 when the last scrape could not list the sets or cells (their gauges are then missing).
# TYPE redpacket_operator_status_read_errors gauge
redpacket_operator_status_read_errors 0
`
	names := []string{"redpacket_cell_available", "redpacket_cell_draining", "redpacket_cell_masked_slots", "redpacket_cell_ready_servers",
		"redpacket_set_mask_budget_exhausted", "redpacket_set_masked_slots", "redpacket_set_routing_epoch",
		"redpacket_set_routing_epoch_effective_timestamp_seconds", "redpacket_operator_status_read_errors"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "redpacket_set_condition"); err != nil || n != 1 {
		t.Fatalf("set conditions: %d series, %v", n, err)
	}
}

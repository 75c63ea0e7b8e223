package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestScaleInHoldsUnsettledCell scales a set in and moves the operator's clock past the time
// its old routing epoch may be pruned: the removed cell still holds an unpaid packet created
// under that epoch in its real database, so the epoch (and with it the packet's routing) and
// the cell are kept and reported; both go once the packet has settled.
func TestScaleInHoldsUnsettledCell(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	dbs, open := cellDatabases(t, "shrink-cell-0", "shrink-cell-1")
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	startManager(t, env, controllers.Options{
		Now:        now,
		OpenCellDB: open,
	})

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "shrink", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:          []string{"zone-a", "zone-b"},
			Cells:          2,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			RebalanceDelay: &rpv1.Duration{Duration: time.Minute},
			Limits:         rpv1.PacketLimits{Expiry: &rpv1.Duration{Duration: time.Hour}},
		},
	}
	createReady(t, ctx, c, set)

	// An unpaid packet in cell 1 (slot 600 is cell 1's in epoch 1), written by the real store.
	st, err := store.New(dbs["shrink-cell-1"], store.Config{Layout: shard.Layout{Databases: 2, TablesPerDB: 2}})
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now().UTC().Truncate(time.Second)
	if err := st.EnsureSchema(ctx, created); err != nil {
		t.Fatal(err)
	}
	id, err := ids.Compose(ids.Parts{Created: created, Slot: 600})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Wrap(ctx, store.Packet{ID: id, Sender: "alice", RequestID: "r1", Kind: "random", TotalCents: 500, Count: 5, CreatedAt: created}, created.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	scale(t, ctx, c, set, 1)
	testenv.Eventually(t, 30*time.Second, "cell 1 draining under epoch 2", func() error {
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if s.Status.Routing.CurrentEpoch != 2 {
			return fmt.Errorf("epoch %d", s.Status.Routing.CurrentEpoch)
		}
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "shrink-cell-1"}, cell); err != nil {
			return err
		}
		if !cell.Spec.Draining || len(cell.Spec.Slots) != 0 {
			return fmt.Errorf("cell 1 draining %v slots %v", cell.Spec.Draining, cell.Spec.Slots)
		}
		return nil
	})

	// Past 2×expiry + settle window, but the packet is not settled: epoch 1 stays.
	skew.Store(int64(4 * time.Hour))
	touch(t, ctx, c, "shrink-cell-1")
	testenv.Eventually(t, 30*time.Second, "epoch 1 and cell 1 kept for the unsettled packet", func() error {
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if len(s.Status.Routing.Epochs) != 2 {
			return fmt.Errorf("%d epochs kept, want 2", len(s.Status.Routing.Epochs))
		}
		cond, reason := condition(s.Status.Conditions, rpv1.SetRebalancing)
		msg := ""
		for _, cd := range s.Status.Conditions {
			if cd.Type == rpv1.SetRebalancing {
				msg = cd.Message
			}
		}
		if cond != metav1.ConditionTrue || reason != rpv1.ReasonDrainingCells || !strings.Contains(msg, "epochs [1] kept") || !strings.Contains(msg, "shrink-cell-1") {
			return fmt.Errorf("Rebalancing %s/%s %q", cond, reason, msg)
		}
		return c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "shrink-cell-1"}, &rpv1.RedPacketCell{})
	})

	// The sweeper cancels the unpaid packet at its deadline; then the cell may go.
	if _, err := st.ExpireDue(ctx, created.Add(2*time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	touch(t, ctx, c, "shrink-cell-1")
	testenv.Eventually(t, 30*time.Second, "epoch 1 pruned and cell 1 deleted once settled", func() error {
		err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "shrink-cell-1"}, &rpv1.RedPacketCell{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("cell 1 still there: %v", err)
		}
		if s := getSet(t, c, client.ObjectKeyFromObject(set)); len(s.Status.Routing.Epochs) != 1 {
			return fmt.Errorf("%d epochs kept", len(s.Status.Routing.Epochs))
		}
		return nil
	})
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "shrink-cell-0"}, &rpv1.RedPacketCell{}); err != nil {
		t.Fatalf("cell 0 must stay: %v", err)
	}
}

func scale(t *testing.T, ctx context.Context, c client.Client, set *rpv1.RedPacketSet, cells int32) {
	t.Helper()
	patch := client.RawPatch(types.MergePatchType, []byte(fmt.Sprintf(`{"spec":{"cells":%d}}`, cells)))
	if err := c.Patch(ctx, set.DeepCopy(), patch); err != nil {
		t.Fatal(err)
	}
}

// touch changes a cell's annotation, which wakes its set's reconciler at once. A cell the
// operator already deleted needs no waking.
func touch(t *testing.T, ctx context.Context, c client.Client, name string) {
	t.Helper()
	cell := &rpv1.RedPacketCell{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: name}, cell); apierrors.IsNotFound(err) {
		return
	} else if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(cell.DeepCopy())
	if cell.Annotations == nil {
		cell.Annotations = map[string]string{}
	}
	cell.Annotations["test/touched"] = time.Now().Format(time.RFC3339Nano)
	if err := c.Patch(ctx, cell, patch); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

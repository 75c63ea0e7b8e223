package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
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

// TestDeletionWaitsForSettlement (issue 11 §4): a draining cell holding an unpaid packet,
// deleted by hand once its epoch is past the time rule, stays (and its epoch is kept) until
// the packet settles; settled itself, it still stays, the same object and not a recreated one,
// while its epoch is kept for another cell's packet, and goes once that one settles and the
// epoch is pruned. A set deleted while a cell holds a packet waits with DeletionHeld until the
// deliberate discard annotation lets it go.
func TestDeletionWaitsForSettlement(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	dbs, open := cellDatabases(t, "doomed-cell-0", "doomed-cell-1")
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	startManager(t, env, controllers.Options{Now: now, OpenCellDB: open})

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "doomed", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:          []string{"zone-a", "zone-b"},
			Cells:          2,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			RebalanceDelay: &rpv1.Duration{Duration: time.Minute}, // the floor; the clock skew below moves past it
			Limits:         rpv1.PacketLimits{Expiry: &rpv1.Duration{Duration: time.Hour}},
		},
	}
	createReady(t, ctx, c, set)
	key := client.ObjectKeyFromObject(set)
	cellKey := func(i int) types.NamespacedName {
		return types.NamespacedName{Namespace: "default", Name: fmt.Sprintf("doomed-cell-%d", i)}
	}
	testenv.Eventually(t, 30*time.Second, "set and cells carry the settle finalizer", func() error {
		if s := getSet(t, c, key); !has(s.Finalizers, rpv1.FinalizerSettle) {
			return fmt.Errorf("set finalizers %v", s.Finalizers)
		}
		for i := range 2 {
			cell := &rpv1.RedPacketCell{}
			if err := c.Get(ctx, cellKey(i), cell); err != nil {
				return err
			}
			if !has(cell.Finalizers, rpv1.FinalizerSettle) {
				return fmt.Errorf("cell %d finalizers %v", i, cell.Finalizers)
			}
		}
		return nil
	})

	// Unpaid packets, written by the real store: wrap(1, 600) in cell 1 under epoch 1, and
	// later in cell 0 one under epoch 1 and one under epoch 2. Which epoch a packet was created
	// under is decided by its ID's time against the epochs' effective times, which the skewed
	// operator clock sets: "under epoch 2" needs that clock.
	stores := map[int]*store.Store{}
	wrap := func(i, slot int, at time.Time) time.Time {
		st, err := store.New(dbs[fmt.Sprintf("doomed-cell-%d", i)], store.Config{Layout: shard.Layout{Databases: 2, TablesPerDB: 2}})
		if err != nil {
			t.Fatal(err)
		}
		created := at.UTC().Truncate(time.Second)
		if err := st.EnsureSchema(ctx, created); err != nil {
			t.Fatal(err)
		}
		id, err := ids.Compose(ids.Parts{Created: created, Slot: slot})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Wrap(ctx, store.Packet{ID: id, Sender: "alice", RequestID: fmt.Sprintf("r%d-%d", i, slot), Kind: "random", TotalCents: 500, Count: 5, CreatedAt: created}, created.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		stores[i] = st
		return created
	}
	created := wrap(1, 600, time.Now())

	scale(t, ctx, c, set, 1)
	testenv.Eventually(t, 30*time.Second, "epoch 2 published", func() error { return publishedEpoch(t, c, key, 2) })
	skew.Store(int64(2 * time.Minute)) // past the minute's delay
	touch(t, ctx, c, "doomed-cell-0")
	testenv.Eventually(t, 30*time.Second, "epoch 2 in force, cell 1 draining", func() error {
		s := getSet(t, c, key)
		if s.Status.Routing.CurrentEpoch != 2 {
			return fmt.Errorf("epoch %d", s.Status.Routing.CurrentEpoch)
		}
		if st, r := condition(s.Status.Conditions, rpv1.SetRebalancing); st != metav1.ConditionTrue || r != rpv1.ReasonDrainingCells {
			return fmt.Errorf("Rebalancing %s/%s", st, r)
		}
		return nil
	})
	early := wrap(0, 101, time.Now()) // the real clock is still before epoch 2's effective time
	wrap(0, 100, now())
	// Epoch 1 is past its time; only the unsettled packet keeps it. Then cell 1 is deleted by hand.
	skew.Store(int64(4 * time.Hour))
	touch(t, ctx, c, "doomed-cell-1")
	testenv.Eventually(t, 30*time.Second, "epoch 1 kept for the unsettled packet", func() error {
		if s := getSet(t, c, key); len(s.Status.Routing.Epochs) != 2 || !strings.Contains(conditionMessage(s.Status.Conditions, rpv1.SetRebalancing), "epochs [1] kept") {
			return fmt.Errorf("%d epochs, Rebalancing %q", len(s.Status.Routing.Epochs), conditionMessage(s.Status.Conditions, rpv1.SetRebalancing))
		}
		return nil
	})
	if err := c.Delete(ctx, &rpv1.RedPacketCell{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "doomed-cell-1"}}); err != nil {
		t.Fatal(err)
	}
	var heldUID types.UID
	testenv.Eventually(t, 30*time.Second, "the deleted cell is held and says why", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cellKey(1), cell); err != nil {
			return fmt.Errorf("cell 1 gone while it holds a packet: %w", err)
		}
		cond := meta.FindStatusCondition(cell.Status.Conditions, rpv1.SetDeletionHeld)
		if cell.DeletionTimestamp.IsZero() || cond == nil || cond.Status != metav1.ConditionTrue || !strings.Contains(cond.Message, "1 unsettled packets") {
			return fmt.Errorf("cell 1 deleting %v, DeletionHeld %+v", !cell.DeletionTimestamp.IsZero(), cond)
		}
		heldUID = cell.UID
		return nil
	})
	touch(t, ctx, c, "doomed-cell-0")
	testenv.Eventually(t, 30*time.Second, "epoch 1 still kept after the hand deletion", func() error {
		s := getSet(t, c, key)
		if len(s.Status.Routing.Epochs) != 2 {
			return fmt.Errorf("%d epochs: the held cell's epoch was pruned", len(s.Status.Routing.Epochs))
		}
		tbl, err := routingTable(ctx, c, set)
		if err != nil {
			return err
		}
		if len(tbl.Epochs) != 2 {
			return fmt.Errorf("routing table has %d epochs", len(tbl.Epochs))
		}
		return nil
	})

	// The sweeper settles cell 1's packet, but cell 0 still owes one created under epoch 1: the
	// epoch is kept, and so is cell 1, the same object, still deleting and saying why.
	if got, err := stores[1].ExpireDue(ctx, created.Add(2*time.Hour), 100); err != nil || len(got) != 1 {
		t.Fatalf("sweep settled %v (%v), want the one packet", got, err)
	}
	touch(t, ctx, c, "doomed-cell-1")
	testenv.Eventually(t, 30*time.Second, "settled cell 1 held, not recreated, while epoch 1 is kept", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cellKey(1), cell); err != nil {
			return fmt.Errorf("cell 1: %w", err)
		}
		cond := meta.FindStatusCondition(cell.Status.Conditions, rpv1.SetDeletionHeld)
		if cell.UID != heldUID || cell.DeletionTimestamp.IsZero() || cond == nil || !strings.Contains(cond.Message, "routing epochs [1] still name it") {
			touch(t, ctx, c, "doomed-cell-1")
			return fmt.Errorf("cell 1 uid %s (held %s) deleting %v, DeletionHeld %+v", cell.UID, heldUID, !cell.DeletionTimestamp.IsZero(), cond)
		}
		if n := len(getSet(t, c, key).Status.Routing.Epochs); n != 2 {
			return fmt.Errorf("%d epochs: epoch 1 pruned while cell 0 owes a packet created under it", n)
		}
		return nil
	})

	// Cell 0's epoch-1 packet settles (its epoch-2 packet expires later): epoch 1 is pruned,
	// then the deletion goes through.
	if got, err := stores[0].ExpireDue(ctx, early.Add(time.Hour+time.Minute), 100); err != nil || len(got) != 1 {
		t.Fatalf("sweep of cell 0 settled %v (%v), want its epoch-1 packet", got, err)
	}
	touch(t, ctx, c, "doomed-cell-0")
	testenv.Eventually(t, 30*time.Second, "cell 1 gone and epoch 1 pruned once settled", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cellKey(1), cell); !apierrors.IsNotFound(err) {
			touch(t, ctx, c, "doomed-cell-1")
			return fmt.Errorf("cell 1 still there: %v (uid %s deleting %v finalizers %v, %d epochs)", err, cell.UID, cell.DeletionTimestamp, cell.Finalizers, len(getSet(t, c, key).Status.Routing.Epochs))
		}
		if s := getSet(t, c, key); len(s.Status.Routing.Epochs) != 1 {
			touch(t, ctx, c, "doomed-cell-0")
			return fmt.Errorf("%d epochs", len(s.Status.Routing.Epochs))
		}
		return nil
	})

	// Deleting the set while cell 0 holds its unpaid packet: the set waits and says why.
	if err := c.Delete(ctx, getSet(t, c, key)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "set deletion held", func() error {
		s := getSet(t, c, key)
		cond := meta.FindStatusCondition(s.Status.Conditions, rpv1.SetDeletionHeld)
		if s.DeletionTimestamp.IsZero() || cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != rpv1.ReasonUnsettled || !strings.Contains(cond.Message, "doomed-cell-0 (1 unsettled packets") {
			return fmt.Errorf("DeletionHeld %+v", cond)
		}
		return nil
	})
	// The deliberate force path.
	s := getSet(t, c, key)
	patch := client.MergeFrom(s.DeepCopy())
	s.Annotations = map[string]string{rpv1.AnnotationDiscardUnsettled: "true"}
	if err := c.Patch(ctx, s, patch); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "set gone after the forced discard, passed on to its cells", func() error {
		if err := c.Get(ctx, key, &rpv1.RedPacketSet{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("set still there: %v", err)
		}
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cellKey(0), cell); err != nil {
			return err
		}
		if cell.Annotations[rpv1.AnnotationDiscardUnsettled] != "true" {
			return fmt.Errorf("cell 0 annotations %v", cell.Annotations)
		}
		return nil
	})
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func conditionMessage(conds []metav1.Condition, typ string) string {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return c.Message
	}
	return ""
}

package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func smallSet(name string, cells int32) *rpv1.RedPacketSet {
	return &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:          []string{"zone-a"},
			Cells:          cells,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			RebalanceDelay: &rpv1.Duration{Duration: 10 * time.Minute},
		},
	}
}

func routingCM(ctx context.Context, c client.Client, set *rpv1.RedPacketSet) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.RoutingConfigMapName()}, cm)
	return cm, err
}

func sameEpochs(a, b *routing.Table) error {
	if len(a.Epochs) != len(b.Epochs) {
		return fmt.Errorf("%d epochs, want %d", len(a.Epochs), len(b.Epochs))
	}
	for i := range a.Epochs {
		x, y := a.Epochs[i], b.Epochs[i]
		if x.Number != y.Number || !x.EffectiveTime.Equal(y.EffectiveTime) || plan.Moved(&x, &y, a.SlotCount) != 0 {
			return fmt.Errorf("epoch %d (at %s) differs from epoch %d (at %s)", x.Number, x.EffectiveTime, y.Number, y.EffectiveTime)
		}
	}
	return nil
}

func routingCondition(s *rpv1.RedPacketSet) *metav1.Condition {
	return meta.FindStatusCondition(s.Status.Conditions, rpv1.SetRoutingPublished)
}

// TestRoutingSurvivesConfigMapLoss is finding 11 §2: deleting the routing ConfigMap, dropping
// its routing.json key or editing its slotCount made the operator publish a fresh equal split
// in force at once (epoch 1 again), moving 665 slots for live packets. The set's status holds
// every epoch, so the table is rebuilt from it; when neither exists for a set with cells,
// nothing is written.
func TestRoutingSurvivesConfigMapLoss(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	stop := startManager(t, env)

	set := smallSet("lossy", 4)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)
	testenv.Eventually(t, 30*time.Second, "epoch 1 published", func() error { _, err := routingTable(ctx, c, set); return err })
	scale(t, ctx, c, set, 6)
	var want *routing.Table
	testenv.Eventually(t, 30*time.Second, "epoch 2 pending in the ConfigMap and the status", func() error {
		tbl, err := routingTable(ctx, c, set)
		if err != nil {
			return err
		}
		if len(tbl.Epochs) != 2 || len(tbl.Latest().Cells()) != 6 {
			return fmt.Errorf("%d epochs", len(tbl.Epochs))
		}
		if s := getSet(t, c, key); s.Status.Routing.CurrentEpoch != tbl.Latest().Number {
			return fmt.Errorf("status at epoch %d", s.Status.Routing.CurrentEpoch)
		}
		want = tbl
		return nil
	})

	losses := []struct {
		name string
		lose func(cm *corev1.ConfigMap) error
	}{
		{"deleted", func(cm *corev1.ConfigMap) error { return c.Delete(ctx, cm) }},
		{"routing.json key removed", func(cm *corev1.ConfigMap) error {
			cm.Data = map[string]string{"other": "x"}
			return c.Update(ctx, cm)
		}},
		{"slotCount edited", func(cm *corev1.ConfigMap) error {
			cm.Data[rpv1.RoutingFile] = strings.Replace(cm.Data[rpv1.RoutingFile], `"slotCount":1000`, `"slotCount":999`, 1)
			if !strings.Contains(cm.Data[rpv1.RoutingFile], `"slotCount":999`) {
				return errors.New("slotCount not found in the table")
			}
			return c.Update(ctx, cm)
		}},
		{"unreadable", func(cm *corev1.ConfigMap) error {
			cm.Data[rpv1.RoutingFile] = "{not json"
			return c.Update(ctx, cm)
		}},
	}
	for _, l := range losses {
		t.Run(l.name, func(t *testing.T) {
			cm, err := routingCM(ctx, c, set)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.lose(cm); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "table rebuilt with every epoch", func() error {
				tbl, err := routingTable(ctx, c, set)
				if err != nil {
					return err
				}
				// (RoutingPublished says RebuiltFromStatus only until the next reconcile.)
				return sameEpochs(tbl, want)
			})
		})
	}

	t.Run("neither ConfigMap nor status: nothing is written", func(t *testing.T) {
		// With the operator stopped, so it cannot restore one from the other in between.
		stop()
		s := getSet(t, c, key)
		s.Status.Routing = rpv1.RoutingStatus{}
		if err := c.Status().Update(ctx, s); err != nil {
			t.Fatal(err)
		}
		cm, err := routingCM(ctx, c, set)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, cm); err != nil {
			t.Fatal(err)
		}
		startManager(t, env)
		testenv.Eventually(t, 30*time.Second, "refusal reported", func() error {
			cond := routingCondition(getSet(t, c, key))
			if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonRoutingStateLost ||
				!strings.Contains(cond.Message, "not writing") || strings.Contains(cond.Message, "delete it") {
				return fmt.Errorf("RoutingPublished %+v", cond)
			}
			return nil
		})
		// Wake the reconciler once more: still no table.
		touch(t, ctx, c, set.CellName(0))
		waitReconciled(t, 1)
		if _, err := routingCM(ctx, c, set); !apierrors.IsNotFound(err) {
			t.Fatalf("a routing ConfigMap was written without any known epoch: %v", err)
		}
	})
}

// TestRoutingTableBudget is finding 11 §3: a long history of epochs grew the indented table
// past a ConfigMap's 1 MiB, after which every apply failed and new epochs, masks and cells all
// stopped. The table is now compact and a new epoch that would pass the budget is refused with
// a condition while the published table stays in force.
func TestRoutingTableBudget(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	startManager(t, env)

	set := smallSet("history", 4)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)
	testenv.Eventually(t, 30*time.Second, "epoch 1 published", func() error { _, err := routingTable(ctx, c, set); return err })

	// A generated history: random cell counts every minute for the last day, fragmenting the
	// ranges, up to the last epoch that fits the budget; it ends on the set's own 4 cells.
	seed := uint64(time.Now().UnixNano()) // -run TestRoutingTableBudget with this line set to the logged seed replays one
	t.Logf("history seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	cells := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = set.CellName(i)
		}
		return out
	}
	now := time.Now().Add(-30 * time.Hour)
	tbl, _, _ := plan.NextTable(nil, plan.TableInput{Set: set.Name, SlotCount: 1000, Cells: cells(4), Now: now, Delay: time.Minute})
	for {
		now = now.Add(time.Minute)
		next, _, err := plan.NextTable(tbl, plan.TableInput{Set: set.Name, SlotCount: 1000, Cells: cells(2 + rng.IntN(7)), Now: now, Delay: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		closing, _, _ := plan.NextTable(next, plan.TableInput{Set: set.Name, SlotCount: 1000, Cells: cells(4), Now: now.Add(time.Minute), Delay: time.Minute})
		more, _, _ := plan.NextTable(closing, plan.TableInput{Set: set.Name, SlotCount: 1000, Cells: cells(5), Now: now.Add(2 * time.Minute), Delay: time.Minute})
		if _, err := more.Marshal(); err != nil {
			if !errors.Is(err, routing.ErrTableTooLarge) {
				t.Fatal(err)
			}
			if _, err := closing.Marshal(); err == nil {
				tbl = closing
				break
			}
			// This step's epoch left no room to close on 4 cells: drop it and draw another
			// from the same table (which had room for two more epochs).
			continue
		}
		tbl = next
		if now.After(time.Now().Add(-10 * time.Minute)) {
			t.Fatal("history fit the budget; make it longer")
		}
	}
	data, err := tbl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("planted %d epochs in %d bytes (indented it would be about twice that)", len(tbl.Epochs), len(data))
	cm, err := routingCM(ctx, c, set)
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[rpv1.RoutingFile] = string(data)
	if err := c.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the long history published and mirrored", func() error {
		s := getSet(t, c, key)
		if s.Status.Routing.CurrentEpoch != tbl.Latest().Number {
			return fmt.Errorf("status at epoch %d, want %d", s.Status.Routing.CurrentEpoch, tbl.Latest().Number)
		}
		return nil
	})

	scale(t, ctx, c, set, 5)
	testenv.Eventually(t, 30*time.Second, "the new epoch refused with a condition", func() error {
		s := getSet(t, c, key)
		cond := routingCondition(s)
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonRoutingTableFull || !strings.Contains(cond.Message, "size budget") {
			return fmt.Errorf("RoutingPublished %+v", cond)
		}
		if st, r := condition(s.Status.Conditions, rpv1.SetProgressing); r == rpv1.ReasonReconcileFailed {
			return fmt.Errorf("Progressing %s/%s: publishing failed", st, r)
		}
		got, err := routingTable(ctx, c, set)
		if err != nil {
			return err
		}
		return sameEpochs(got, tbl)
	})
}

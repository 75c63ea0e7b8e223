package controllers_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// collectGarbage plays Kubernetes' garbage collector, which envtest does not run: every object
// in the namespace whose owner references name the deleted uid is deleted.
func collectGarbage(t *testing.T, ctx context.Context, c client.Client, uid types.UID) (deleted []string) {
	t.Helper()
	for _, list := range []client.ObjectList{&corev1.SecretList{}, &corev1.ConfigMapList{}, &corev1.ServiceList{}, &appsv1.StatefulSetList{}, &appsv1.DeploymentList{}, &policyv1.PodDisruptionBudgetList{}} {
		if err := c.List(ctx, list, client.InNamespace("default")); err != nil {
			t.Fatal(err)
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range items {
			obj := item.(client.Object)
			for _, ref := range obj.GetOwnerReferences() {
				if ref.UID == uid {
					if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
						t.Fatal(err)
					}
					deleted = append(deleted, obj.GetName())
				}
			}
		}
	}
	return deleted
}

// TestRecreatedCellKeepsItsCredentials (issue 11 §6): scale 2→3→2→3. Cell 2 is deleted once it
// holds nothing, but its database volume is retained (a StatefulSet keeps its claims), and that
// datadir was initialised with cell 2's credentials. The recreated cell must use the same ones.
func TestRecreatedCellKeepsItsCredentials(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	_, open := cellDatabases(t, "again-cell-0", "again-cell-1", "again-cell-2")
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	startManager(t, env, controllers.Options{Now: now, OpenCellDB: open})

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "again", Namespace: "default"},
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
	cell2 := types.NamespacedName{Namespace: "default", Name: "again-cell-2"}
	secret2 := types.NamespacedName{Namespace: "default", Name: "again-cell-2-mysql-credentials"}
	inForce := func(epoch int64) func() error {
		return func() error {
			s := getSet(t, c, key)
			if s.Status.Routing.CurrentEpoch != epoch {
				return fmt.Errorf("epoch %d, want %d", s.Status.Routing.CurrentEpoch, epoch)
			}
			if st, r := condition(s.Status.Conditions, rpv1.SetRebalancing); st == metav1.ConditionTrue && r == rpv1.ReasonEpochPending {
				return fmt.Errorf("epoch %d pending", epoch)
			}
			return nil
		}
	}

	scale(t, ctx, c, set, 3)
	testenv.Eventually(t, 30*time.Second, "epoch 2 published", func() error { return publishedEpoch(t, c, key, 2) })
	skew.Store(int64(2 * time.Minute)) // past the minute's delay
	touch(t, ctx, c, "again-cell-0")
	testenv.Eventually(t, 30*time.Second, "epoch 2 in force", inForce(2))
	var first corev1.Secret
	testenv.Eventually(t, 30*time.Second, "cell 2's credentials", func() error { return c.Get(ctx, secret2, &first) })
	old := &rpv1.RedPacketCell{}
	if err := c.Get(ctx, cell2, old); err != nil {
		t.Fatal(err)
	}

	scale(t, ctx, c, set, 2)
	testenv.Eventually(t, 30*time.Second, "epoch 3 published", func() error { return publishedEpoch(t, c, key, 3) })
	skew.Store(int64(4 * time.Minute))
	touch(t, ctx, c, "again-cell-0")
	testenv.Eventually(t, 30*time.Second, "epoch 3 in force", inForce(3))
	skew.Store(int64(4 * time.Hour)) // every older epoch past its time; cell 2 holds nothing
	touch(t, ctx, c, "again-cell-0")
	testenv.Eventually(t, 30*time.Second, "cell 2 deleted", func() error {
		if err := c.Get(ctx, cell2, &rpv1.RedPacketCell{}); !apierrors.IsNotFound(err) {
			touch(t, ctx, c, "again-cell-0")
			return fmt.Errorf("cell 2 still there: %v", err)
		}
		return nil
	})
	gone := collectGarbage(t, ctx, c, old.UID)
	t.Logf("collected with cell 2: %v", gone)

	scale(t, ctx, c, set, 3)
	testenv.Eventually(t, 30*time.Second, "cell 2 recreated with the credentials its volume was initialised with", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cell2, cell); err != nil {
			return err
		}
		if cell.UID == old.UID {
			return fmt.Errorf("cell 2 not recreated yet")
		}
		var again corev1.Secret
		if err := c.Get(ctx, secret2, &again); err != nil {
			return err
		}
		for _, k := range []string{"root-password", "user", "password"} {
			if string(again.Data[k]) != string(first.Data[k]) {
				return fmt.Errorf("credentials key %s changed: the retained datadir would refuse the new cell", k)
			}
		}
		return nil
	})
}

// publishedEpoch is nil once the set's status holds epoch n, in force or pending.
func publishedEpoch(t *testing.T, c client.Client, key client.ObjectKey, n int64) error {
	t.Helper()
	s := getSet(t, c, key)
	for _, e := range s.Status.Routing.Epochs {
		if e.Number >= n {
			return nil
		}
	}
	return fmt.Errorf("status holds %d epochs, none numbered %d", len(s.Status.Routing.Epochs), n)
}

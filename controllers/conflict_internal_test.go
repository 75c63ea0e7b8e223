package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
)

// TestStatusConflictIsRetriedQuietly (issue 14 §2): another writer changes the cell between the
// reconciler's read and its status write, so the API server answers 409. The reconcile returns
// no error (nothing is logged or counted as "Reconciler error") and asks to run again; the next
// pass writes the status.
func TestStatusConflictIsRetriedQuietly(t *testing.T) {
	env := envtestutil.Start(t)
	ctx := context.Background()
	cell := &rpv1.RedPacketCell{
		ObjectMeta: metav1.ObjectMeta{Name: "race-cell-0", Namespace: "default", Labels: map[string]string{rpv1.LabelSet: "race"}},
		Spec:       rpv1.RedPacketCellSpec{SetName: "race", SlotCount: 1000, Zones: []string{"a"}, Servers: 1, Slots: []rpv1.SlotRange{{Start: 0, End: 999}}},
	}
	if err := env.Client.Create(ctx, cell); err != nil {
		t.Fatal(err)
	}
	base, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var raced atomic.Bool
	c := interceptor.NewClient(base, interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, cl client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			if !raced.Swap(true) {
				// A real concurrent write: the object the reconciler holds is now stale.
				other := &rpv1.RedPacketCell{}
				if err := cl.Get(ctx, client.ObjectKeyFromObject(obj), other); err != nil {
					return err
				}
				patch := client.MergeFrom(other.DeepCopy())
				other.Annotations = map[string]string{"test/other-writer": "1"}
				if err := cl.Patch(ctx, other, patch); err != nil {
					return err
				}
			}
			return cl.SubResource(sub).Update(ctx, obj, opts...)
		},
	})
	r := &CellReconciler{Client: c, Scheme: env.Scheme, Now: time.Now, MaskPoll: time.Minute, dbs: &cellDBs{}}
	req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(cell)}
	res, err := r.Reconcile(ctx, req)
	if err != nil {
		t.Fatalf("a status conflict was returned as an error: %v", err)
	}
	if !raced.Load() || res.RequeueAfter <= 0 {
		t.Fatalf("no conflict provoked (%v) or no requeue asked (%+v)", raced.Load(), res)
	}
	if _, err := r.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	got := &rpv1.RedPacketCell{}
	if err := env.Client.Get(ctx, req.NamespacedName, got); err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Conditions) == 0 {
		t.Fatal("the retry wrote no status")
	}
}

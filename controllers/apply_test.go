package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// applies reads redpacket_operator_child_applies_total by kind for one result.
func applies(t *testing.T, result string) map[string]float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "redpacket_operator_child_applies_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "result") == result {
				out[label(m, "kind")] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestUnchangedChildrenAreNotApplied: once a set's children hold what the operator wants,
// further reconciles read them from the cache and send nothing; a change to the spec is still
// applied, to the child it concerns.
func TestUnchangedChildrenAreNotApplied(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()
	startManager(t, env)

	set := smallSet("steady", 2)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)
	kinds := []string{"ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget"}
	// Settled: every child of both cells and of the set exists, and a second apart, with both
	// cells woken, nothing more was applied while every kind was found unchanged.
	var settled map[string]float64
	testenv.Eventually(t, 60*time.Second, "every kind of child found unchanged", func() error {
		for i := range 2 {
			d := &appsv1.Deployment{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(i) + "-server"}, d); err != nil {
				return err
			}
		}
		before := applies(t, "applied")
		touch(t, ctx, c, set.CellName(0))
		touch(t, ctx, c, set.CellName(1))
		time.Sleep(time.Second) // polling: two snapshots a second apart
		after, un := applies(t, "applied"), applies(t, "unchanged")
		for _, k := range kinds {
			if un[k] == 0 {
				return fmt.Errorf("no %s skipped yet (unchanged %v, applied %v)", k, un, after)
			}
		}
		if fmt.Sprint(before) != fmt.Sprint(after) {
			return fmt.Errorf("still applying: %v -> %v", before, after)
		}
		settled = after
		return nil
	})

	// Wake both reconcilers again and again: nothing is sent.
	before := applies(t, "unchanged")
	for i := range 5 {
		touch(t, ctx, c, set.CellName(i%2))
		time.Sleep(200 * time.Millisecond) // let the reconciles run; the assertion below waits
	}
	testenv.Eventually(t, 30*time.Second, "the wakes reconciled without applies", func() error {
		if after := applies(t, "unchanged"); after["Deployment"] < before["Deployment"]+2 {
			return fmt.Errorf("Deployment skips %v -> %v", before["Deployment"], after["Deployment"])
		}
		return nil
	})
	if got := applies(t, "applied"); fmt.Sprint(got) != fmt.Sprint(settled) {
		t.Fatalf("children applied while nothing changed: %v, then %v", settled, got)
	}

	// A new server image is applied, to the servers' Deployments only.
	const image = "registry.local/cellserver:v9"
	fresh := getSet(t, c, key)
	patch := client.MergeFrom(fresh.DeepCopy())
	fresh.Spec.Template.Server.Image = image
	if err := c.Patch(ctx, fresh, patch); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the new image applied", func() error {
		for i := range 2 {
			d := &appsv1.Deployment{}
			cell := set.CellName(i)
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell + "-server"}, d); err != nil {
				return err
			}
			if got := d.Spec.Template.Spec.Containers[0].Image; got != image {
				return fmt.Errorf("%s runs %s", d.Name, got)
			}
		}
		return nil
	})
	got := applies(t, "applied")
	if got["Deployment"] < settled["Deployment"]+2 {
		t.Fatalf("Deployment applies %v -> %v for a new image in 2 cells", settled["Deployment"], got["Deployment"])
	}
	if got["StatefulSet"] != settled["StatefulSet"] {
		t.Fatalf("the databases' StatefulSets were applied for a server image: %v -> %v", settled["StatefulSet"], got["StatefulSet"])
	}

	// Someone else edits a field the operator owns (kubectl edit): the field is no longer the
	// operator's in the managed fields, the comparison differs, and the operator restores it.
	d := &appsv1.Deployment{}
	dkey := types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(0) + "-server"}
	if err := c.Get(ctx, dkey, d); err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers[0].Image = "someone/else:latest"
	if err := c.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the edited image restored", func() error {
		touch(t, ctx, c, set.CellName(0))
		if err := c.Get(ctx, dkey, d); err != nil {
			return err
		}
		if got := d.Spec.Template.Spec.Containers[0].Image; got != image {
			return fmt.Errorf("%s runs %s", d.Name, got)
		}
		return nil
	})
}

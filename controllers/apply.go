package controllers

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// childApplies counts the operator's server-side applies of children, by kind and by whether
// the apply was sent or skipped because the child already held every field the operator owns.
var childApplies = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "redpacket_operator_child_applies_total",
	Help: "Server-side applies of a set's or cell's children, by kind and result (applied, unchanged, failed).",
}, []string{"kind", "result"})

func init() { metrics.Registry.MustRegister(childApplies) }

// applyChild writes desired by server-side apply, unless the live object (read from the
// cache) already holds exactly the fields the operator manages, with the values it wants.
// Every reconcile of every cell would otherwise send each of its children to the apiserver:
// a no-op apply is cheap for etcd but not for the apiserver, which decodes, merges and
// compares the whole object each time, for every cell every mask poll. As moco does, the
// comparison is against what the operator's field manager owns (the extracted apply
// configuration), so fields set by others (the StatefulSet controller's defaults, an HPA's
// replicas, kubectl annotate) never force an apply, and a field the operator set that someone
// changed always does. The error names the object.
func applyChild(ctx context.Context, c client.Client, desired runtime.ApplyConfiguration) error {
	kind := describeKind(desired)
	owned, err := ownedNow(ctx, c, desired)
	if err == nil && owned != nil && equality.Semantic.DeepEqual(owned, desired) {
		childApplies.WithLabelValues(kind, "unchanged").Inc()
		return nil
	}
	// A failed read or extraction only costs the skip: apply as always.
	if err := c.Apply(ctx, desired, FieldOwner, client.ForceOwnership); err != nil {
		childApplies.WithLabelValues(kind, "failed").Inc()
		return fmt.Errorf("apply %s: %w", describeApply(desired), err)
	}
	childApplies.WithLabelValues(kind, "applied").Inc()
	return nil
}

// ownedNow reads the live object desired names and extracts the fields the operator's field
// manager owns in it; nil when the object does not exist yet or is of a kind not compared.
func ownedNow(ctx context.Context, c client.Reader, desired runtime.ApplyConfiguration) (runtime.ApplyConfiguration, error) {
	key, ok := applyKey(desired)
	if !ok {
		return nil, nil
	}
	switch desired.(type) {
	case *corev1ac.ConfigMapApplyConfiguration:
		return extract(ctx, c, key, &corev1.ConfigMap{}, corev1ac.ExtractConfigMap)
	case *corev1ac.ServiceApplyConfiguration:
		return extract(ctx, c, key, &corev1.Service{}, corev1ac.ExtractService)
	case *appsv1ac.StatefulSetApplyConfiguration:
		owned, err := extract(ctx, c, key, &appsv1.StatefulSet{}, appsv1ac.ExtractStatefulSet)
		if sts, ok := owned.(*appsv1ac.StatefulSetApplyConfiguration); ok && sts != nil && sts.Spec != nil {
			// The apiserver gives each claim template a status (phase Pending) and files it
			// under the template's owner; a template's status means nothing and is never applied.
			for i := range sts.Spec.VolumeClaimTemplates {
				sts.Spec.VolumeClaimTemplates[i].Status = nil
			}
		}
		return owned, err
	case *appsv1ac.DeploymentApplyConfiguration:
		return extract(ctx, c, key, &appsv1.Deployment{}, appsv1ac.ExtractDeployment)
	case *policyv1ac.PodDisruptionBudgetApplyConfiguration:
		return extract(ctx, c, key, &policyv1.PodDisruptionBudget{}, policyv1ac.ExtractPodDisruptionBudget)
	}
	return nil, nil
}

// extract reads obj at key and extracts what the operator's field manager owns in it; nil when
// it does not exist.
func extract[O client.Object, A runtime.ApplyConfiguration](ctx context.Context, c client.Reader, key types.NamespacedName, obj O,
	from func(O, string) (A, error)) (runtime.ApplyConfiguration, error) {
	if err := c.Get(ctx, key, obj); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	owned, err := from(obj, string(FieldOwner))
	if err != nil {
		return nil, err
	}
	return owned, nil
}

// applyKey is the namespace and name an apply configuration names.
func applyKey(obj runtime.ApplyConfiguration) (types.NamespacedName, bool) {
	n, okName := obj.(interface{ GetName() *string })
	ns, okNS := obj.(interface{ GetNamespace() *string })
	if !okName || !okNS || n.GetName() == nil || ns.GetNamespace() == nil {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: *ns.GetNamespace(), Name: *n.GetName()}, true
}

// describeKind is an apply configuration's kind, for the metric's label.
func describeKind(obj runtime.ApplyConfiguration) string {
	if o, ok := obj.(interface{ GetKind() *string }); ok && o.GetKind() != nil {
		return *o.GetKind()
	}
	return "unknown"
}

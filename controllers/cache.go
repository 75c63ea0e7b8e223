package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// CacheByObject restricts the manager's informers for the built-in kinds the operator owns to
// the objects it labelled. Without it the manager lists, watches and keeps in memory every
// Secret (and ConfigMap, Service, …) of the cluster: other tenants' credentials in this
// process, and memory that grows with the cluster instead of with the sets. Every child carries
// the label (setLabels, cellLabels), so the reconcilers' reads are unaffected; an object
// without it is not the operator's and reads as absent.
func CacheByObject() map[client.Object]cache.ByObject {
	own := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{rpv1.LabelManagedBy: rpv1.ManagedByOperator})}
	return map[client.Object]cache.ByObject{
		&corev1.Secret{}:                own,
		&corev1.ConfigMap{}:             own,
		&corev1.Service{}:               own,
		&appsv1.Deployment{}:            own,
		&appsv1.StatefulSet{}:           own,
		&policyv1.PodDisruptionBudget{}: own,
		&corev1.Pod{}:                   own,
	}
}

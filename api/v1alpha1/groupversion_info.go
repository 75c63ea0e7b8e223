// Package v1alpha1 holds the RedPacketSet and RedPacketCell API, group redpacket.dev.
//
// A RedPacketSet declares a red packet service as SET cells spread over zones; the operator
// expands it into one RedPacketCell per cell (as a Deployment expands into ReplicaSets), and
// each cell into its MySQL, servers and memcached. This package holds types, defaults,
// validation markers and the name helpers that decide every child object's name; it must
// never import controller code.
//
// +kubebuilder:object:generate=true
// +groupName=redpacket.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "redpacket.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "redpacket.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime scheme.
	SchemeBuilder = &schemeBuilder{}

	// AddToScheme adds the types of this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// schemeBuilder collects the types each file registers from its init, for AddToScheme. It
// stands in for controller-runtime's deprecated scheme.Builder, which did the same over
// apimachinery's runtime.SchemeBuilder.
type schemeBuilder struct{ objects []runtime.Object }

// Register adds objects to the types AddToScheme installs.
func (b *schemeBuilder) Register(objects ...runtime.Object) {
	b.objects = append(b.objects, objects...)
}

// AddToScheme installs the registered types, with the meta types every group version carries.
func (b *schemeBuilder) AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, b.objects...)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Package setplan reads a RedPacketSet's spec into the pure planner's input (controllers/plan),
// so the operator's set reconciler and the local SET (internal/localset) plan one manifest the
// same way, field for field.
//
// It may read API types but must never do I/O, talk to Kubernetes or decide anything itself:
// the decisions are plan's, which stays free of Kubernetes imports.
package setplan

import (
	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// PlanInput is what the planner computes a set's cells, slots and servers from.
func PlanInput(set *rpv1.RedPacketSet) plan.Input {
	return plan.Input{
		Set:                     set.Name,
		Zones:                   set.Spec.Zones,
		Cells:                   int(set.Spec.Cells),
		SlotCount:               int(set.Spec.SlotCount),
		PeakOpensPerSecond:      set.Spec.Capacity.PeakOpensPerSecond,
		PerServerOpensPerSecond: set.Spec.Capacity.PerServerOpensPerSecond,
		Headroom:                set.Spec.Headroom,
		MinServersPerZone:       int(set.Spec.Capacity.MinServersPerZone),
	}
}

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RedPacketSetSpec declares a red packet service as SET cells over zones.
// +kubebuilder:validation:XValidation:rule="self.cells <= self.slotCount",message="spec.cells must not exceed spec.slotCount: every cell needs at least one slot"
// +kubebuilder:validation:XValidation:rule="!has(self.headroom) || self.headroom < 1.0",message="spec.headroom must be below 1: it is the fraction of capacity held in reserve"
// +kubebuilder:validation:XValidation:rule="self.capacity.perServerOpensPerSecond < 1 || self.capacity.peakOpensPerSecond / self.capacity.perServerOpensPerSecond / (has(self.cells) && self.cells > 0 ? self.cells : 1) <= 10000",message="spec.capacity.peakOpensPerSecond is more than 10000 servers per cell at spec.capacity.perServerOpensPerSecond: add cells or raise the per-server rate"
type RedPacketSetSpec struct {
	// Zones are the topology.kubernetes.io/zone values the cells' servers spread over. With
	// Z zones and the default headroom of 1/Z, losing any one zone leaves the full peak.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	// +listType=set
	Zones []string `json:"zones"`

	// Cells is the number of SET cells. It is the scale subresource's replica count, so
	// `kubectl scale redpacketset/NAME --replicas=N` changes it; a change moves slots to or
	// from cells for packets created after a future instant, never copying data.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Cells int32 `json:"cells,omitempty"`

	// Capacity is the peak the set must carry, from which servers per cell are sized.
	Capacity CapacitySpec `json:"capacity"`

	// Headroom is the fraction of total capacity held in reserve for losing a zone, in
	// [0,1). It defaults to 1/len(zones): with 3 zones, a third of each cell's capacity is
	// spare, so the other two zones still carry the peak.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Headroom *float64 `json:"headroom,omitempty"`

	// SlotCount is the number of slots the packet ID space is cut into (the last three
	// digits of a packet ID). It is fixed for the life of the set.
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.slotCount is immutable"
	// +optional
	SlotCount int32 `json:"slotCount,omitempty"`

	// Region is the home region number encoded in every packet ID issued by this set.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.region is immutable"
	// +optional
	Region int32 `json:"region,omitempty"`

	// Template is what every cell runs.
	// +kubebuilder:default={}
	// +optional
	Template CellTemplate `json:"template,omitempty"`

	// Gateway is the access layer that routes requests to cells by packet ID.
	// +kubebuilder:default={}
	// +optional
	Gateway GatewaySpec `json:"gateway,omitempty"`

	// Masking decides when slots of a failing logical table stop getting new packets.
	// +kubebuilder:default={}
	// +optional
	Masking MaskingPolicy `json:"masking,omitempty"`

	// Limits bounds the packets senders may wrap.
	// +kubebuilder:default={}
	// +optional
	Limits PacketLimits `json:"limits,omitempty"`

	// RebalanceDelay is how far ahead of now a new routing epoch takes effect, so every
	// gateway and server has loaded it before packets are created under it. At least 1m
	// (two hand-over margins of 30s: a late epoch can still be pushed back).
	// +kubebuilder:default="2m"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$') || duration(self) >= duration('60s')",message="spec.rebalanceDelay must be at least 1m: readers need time to load a new routing epoch before it takes effect"
	// +optional
	RebalanceDelay *Duration `json:"rebalanceDelay,omitempty"`
}

// CapacitySpec is the load the set is sized for.
type CapacitySpec struct {
	// PeakOpensPerSecond is the peak rate of open requests over the whole set.
	// +kubebuilder:validation:Minimum=1
	PeakOpensPerSecond int64 `json:"peakOpensPerSecond"`

	// PerServerOpensPerSecond is what one cell server sustains.
	// +kubebuilder:validation:Minimum=1
	PerServerOpensPerSecond int64 `json:"perServerOpensPerSecond"`

	// MinServersPerZone is the floor of servers per cell in each zone.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinServersPerZone int32 `json:"minServersPerZone,omitempty"`
}

// GatewaySpec describes the access-layer gateway.
type GatewaySpec struct {
	// Image of the gateway.
	// +kubebuilder:default="ghcr.io/redpacketset/gateway:v0.1.0"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^\S+$`
	// +optional
	Image string `json:"image,omitempty"`

	// Replicas of the gateway Deployment.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// Resources of the gateway container.
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.requests) || !(k in self.limits) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",message="spec.gateway.resources: a cpu, memory or ephemeral-storage request must not exceed its limit (the pod would never be created)"
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// RedPacketSetStatus is the observed state of a set.
type RedPacketSetStatus struct {
	// Conditions: Available, Progressing, Degraded, ZoneFailureTolerant, Rebalancing,
	// SlotsMasked and RoutingPublished. Each is set from the first reconcile on.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Cells is the number of cells that exist (the scale subresource's status replicas).
	// +optional
	Cells int32 `json:"cells,omitempty"`

	// ReadyCells is the number of cells whose Available condition is True.
	// +optional
	ReadyCells int32 `json:"readyCells"`

	// Selector selects the set's cells (for the scale subresource).
	// +optional
	Selector string `json:"selector,omitempty"`

	// CellSummaries is one line per cell.
	// +listType=map
	// +listMapKey=name
	// +optional
	CellSummaries []CellSummary `json:"cellSummaries,omitempty"`

	// Routing is the routing table: the current epoch and every older epoch still needed
	// by unsettled packets.
	// +optional
	Routing RoutingStatus `json:"routing,omitempty"`

	// MaskedSlots are the slot ranges in which no new packets are created.
	// +listType=atomic
	// +optional
	MaskedSlots []MaskedSlotRange `json:"maskedSlots,omitempty"`

	// MaskedSlotCount is the number of masked slots.
	// +optional
	MaskedSlotCount int32 `json:"maskedSlotCount"`
}

// CellSummary is a set's one-line view of a cell.
type CellSummary struct {
	// Name of the RedPacketCell.
	Name string `json:"name"`

	// Slots owned in the current epoch, e.g. "0-249".
	// +optional
	Slots string `json:"slots,omitempty"`

	// Servers desired in the cell.
	// +optional
	Servers int32 `json:"servers,omitempty"`

	// ReadyServers in the cell.
	// +optional
	ReadyServers int32 `json:"readyServers,omitempty"`

	// Available mirrors the cell's Available condition status.
	// +optional
	Available metav1.ConditionStatus `json:"available,omitempty"`

	// Draining is true for a cell that owns no slot in the current epoch but still serves
	// packets created under an older one; it is deleted only once they are settled.
	// +optional
	Draining bool `json:"draining,omitempty"`
}

// RoutingStatus is the routing table of a set.
type RoutingStatus struct {
	// CurrentEpoch is the number of the newest epoch.
	// +optional
	CurrentEpoch int64 `json:"currentEpoch,omitempty"`

	// Epochs, oldest first.
	// +listType=atomic
	// +optional
	Epochs []RoutingEpoch `json:"epochs,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.cells,statuspath=.status.cells,selectorpath=.status.selector
// +kubebuilder:resource:shortName=rps,categories=redpacket
// +kubebuilder:printcolumn:name="Cells",type=integer,JSONPath=`.spec.cells`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyCells`
// +kubebuilder:printcolumn:name="Masked",type=integer,JSONPath=`.status.maskedSlotCount`,description="masked slots"
// +kubebuilder:printcolumn:name="Epoch",type=integer,JSONPath=`.status.routing.currentEpoch`
// +kubebuilder:printcolumn:name="Available",type=string,JSONPath=`.status.conditions[?(@.type=="Available")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// RedPacketSet is a red packet service made of SET cells spread over zones.
type RedPacketSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired set.
	Spec RedPacketSetSpec `json:"spec"`

	// Status is the observed set.
	// +optional
	Status RedPacketSetStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// RedPacketSetList is a list of RedPacketSets.
type RedPacketSetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RedPacketSet `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RedPacketSet{}, &RedPacketSetList{})
}

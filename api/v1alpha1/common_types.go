package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CellTemplate is what every cell of a set runs: its server, MySQL and memcached, the queue
// and guard settings of the server, and the shard layout inside the cell.
type CellTemplate struct {
	// Server is the cell server (the data plane) container.
	// +kubebuilder:default={}
	// +optional
	Server ServerSpec `json:"server,omitempty"`

	// MySQL is the cell's database.
	// +kubebuilder:default={}
	// +optional
	MySQL MySQLSpec `json:"mysql,omitempty"`

	// Memcached is the sidecar beside each server that holds the concurrency guard's counters
	// and the cache of remaining shares.
	// +kubebuilder:default={}
	// +optional
	Memcached MemcachedSpec `json:"memcached,omitempty"`

	// Queue tunes the per-packet FIFO queue and its group commit.
	// +kubebuilder:default={}
	// +optional
	Queue QueueSpec `json:"queue,omitempty"`

	// Guard tunes the memcached concurrency guard.
	// +kubebuilder:default={}
	// +optional
	Guard GuardSpec `json:"guard,omitempty"`

	// Shards is the number of logical databases and tables per database inside the cell
	// (tables are named db_xx.t_y_dd). It is fixed when the set is created: a packet's table
	// follows from its ID and the layout, so another layout would look for existing packets
	// in other, empty tables. Each cell records its layout at first start and its servers
	// refuse to start with another.
	// +kubebuilder:default={}
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.template.shards is immutable: packets already stored are found through the layout they were created under"
	// +optional
	Shards ShardSpec `json:"shards,omitempty"`
}

// ServerSpec describes the cell server container.
type ServerSpec struct {
	// Image of the cell server. No whitespace anywhere: the kubelet would fail to pull it.
	// +kubebuilder:default="ghcr.io/redpacketset/cellserver:v0.1.0"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^\S+$`
	// +optional
	Image string `json:"image,omitempty"`

	// Resources of the cell server container.
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.requests) || !(k in self.limits) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",message="spec.template.server.resources: a cpu, memory or ephemeral-storage request must not exceed its limit (the pod would never be created)"
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// MySQLSpec describes the cell's database.
type MySQLSpec struct {
	// Image of the MySQL-compatible server (MySQL 8 or MariaDB 10.11+).
	// +kubebuilder:default="mariadb:10.11"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^\S+$`
	// +optional
	Image string `json:"image,omitempty"`

	// Replicas of the database StatefulSet, spread over the set's zones. With one, that
	// instance is the cell's database. With more, one is the writable primary and the others
	// semi-synchronous GTID replicas; the operator fails over to the most advanced clean
	// replica when the primary is lost, and the cell servers follow the writable instance.
	// Going from one to more on a cell that holds data is refused by its database (no binary
	// log to seed replicas from): create replicated cells replicated.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=5
	// +kubebuilder:validation:XValidation:rule="(self == 1) == (oldSelf == 1)",message="spec.template.mysql.replicas cannot change between 1 and more than 1: a single instance has no replication history to seed replicas from, and replicas never become a single instance in place"
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// Resources of the database container.
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.requests) || !(k in self.limits) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",message="spec.template.mysql.resources: a cpu, memory or ephemeral-storage request must not exceed its limit (the pod would never be created)"
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Storage is the size of each database volume; more than zero.
	// +kubebuilder:default="10Gi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="spec.template.mysql.storage must be a positive quantity, e.g. 10Gi"
	// +optional
	Storage *resource.Quantity `json:"storage,omitempty"`

	// StorageClassName of the database volumes; empty uses the cluster default.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// MemcachedSpec describes the memcached sidecar.
type MemcachedSpec struct {
	// Image of memcached.
	// +kubebuilder:default="memcached:1.6"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^\S+$`
	// +optional
	Image string `json:"image,omitempty"`

	// MemoryMB is memcached's item memory (-m).
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=8
	// +optional
	MemoryMB int32 `json:"memoryMB,omitempty"`

	// Resources of the memcached container.
	// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.requests) || !(k in self.limits) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",message="spec.template.memcached.resources: a cpu, memory or ephemeral-storage request must not exceed its limit (the pod would never be created)"
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// QueueSpec tunes the per-packet FIFO queue.
type QueueSpec struct {
	// Workers is the number of queue workers per server; packets are spread over them by
	// hash, and each packet is served by one worker in arrival order.
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4096
	// +optional
	Workers int32 `json:"workers,omitempty"`

	// Depth bounds each worker's queue; a request that finds it full takes the guarded path.
	// +kubebuilder:default=1024
	// +kubebuilder:validation:Minimum=1
	// +optional
	Depth int32 `json:"depth,omitempty"`

	// BatchMax is the most opens of one packet committed in one transaction.
	// +kubebuilder:default=128
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	// +optional
	BatchMax int32 `json:"batchMax,omitempty"`
}

// GuardSpec tunes the concurrency guard.
type GuardSpec struct {
	// Limit is the most DB transactions in flight per packet on the guarded path.
	// +kubebuilder:default=4
	// +kubebuilder:validation:Minimum=1
	// +optional
	Limit int32 `json:"limit,omitempty"`
}

// ShardSpec is the shard layout inside one cell.
type ShardSpec struct {
	// Databases is the number of logical databases (db_00 … db_99).
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	Databases int32 `json:"databases,omitempty"`

	// TablesPerDatabase is the number of logical tables per database (t_0 … t_9).
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	TablesPerDatabase int32 `json:"tablesPerDatabase,omitempty"`
}

// MaskingPolicy decides when slots served by a failing logical table are masked.
// +kubebuilder:validation:XValidation:rule="!has(self.window) || !self.window.matches('^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$') || duration(self.window) > duration('0s')",message="spec.masking.window must be a positive duration"
// +kubebuilder:validation:XValidation:rule="!has(self.coolDown) || !self.coolDown.matches('^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$') || duration(self.coolDown) >= duration('0s')",message="spec.masking.coolDown must not be negative"
type MaskingPolicy struct {
	// ErrorThreshold is the number of errors of one logical table within Window, summed over
	// the cell's servers, at which its slots are masked.
	// +kubebuilder:default=50
	// +kubebuilder:validation:Minimum=1
	// +optional
	ErrorThreshold int32 `json:"errorThreshold,omitempty"`

	// Window is the span over which errors are counted.
	// +kubebuilder:default="1m"
	// +optional
	Window *Duration `json:"window,omitempty"`

	// CoolDown is how long a masked table must stay quiet before its mask is lifted.
	// +kubebuilder:default="5m"
	// +optional
	CoolDown *Duration `json:"coolDown,omitempty"`

	// MaxMaskedPercent is the mask budget, per cell: the most of a cell's slots (those it
	// owns in the routing epoch in force), in percent and rounded up, that the operator may
	// mask at once. Each cell decides its masks alone, so there is no set-wide budget. Past
	// it the operator stops masking in that cell and reports SlotsMasked with reason
	// MaskBudgetExhausted, so masking can never take the whole service down.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxMaskedPercent int32 `json:"maxMaskedPercent,omitempty"`
}

// PacketLimits bounds what a sender may wrap.
// +kubebuilder:validation:XValidation:rule="!has(self.maxTotalCents) || !has(self.maxCount) || self.maxTotalCents >= self.maxCount",message="spec.limits.maxTotalCents must be at least spec.limits.maxCount: every share is at least one cent"
// +kubebuilder:validation:XValidation:rule="!has(self.expiry) || !self.expiry.matches('^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$') || duration(self.expiry) > duration('0s')",message="spec.limits.expiry must be a positive duration"
type PacketLimits struct {
	// MaxTotalCents is the largest packet, in cents.
	// +kubebuilder:default=20000
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxTotalCents int64 `json:"maxTotalCents,omitempty"`

	// MaxCount is the most shares one packet may be split into.
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	MaxCount int32 `json:"maxCount,omitempty"`

	// Expiry is how long after payment a packet may be opened; the remainder is then
	// refunded to the sender.
	// +kubebuilder:default="24h"
	// +optional
	Expiry *Duration `json:"expiry,omitempty"`
}

// SlotRange is an inclusive range of slots.
type SlotRange struct {
	// Start is the first slot of the range.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=999
	Start int32 `json:"start"`

	// End is the last slot of the range (inclusive).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=999
	End int32 `json:"end"`
}

// OwnedSlotRange is a slot range and the cell that owns it.
type OwnedSlotRange struct {
	SlotRange `json:",inline"`

	// Cell is the name of the RedPacketCell owning the range.
	Cell string `json:"cell"`
}

// RoutingEpoch is one version of the routing table: from EffectiveTime on, packets created in
// a slot are owned by the cell the ranges name. Packets keep the owner of the epoch they were
// created under, so no data moves when slots do.
type RoutingEpoch struct {
	// Number grows with every new epoch and is never reused: a re-planned or pushed-back
	// epoch gets a new number.
	Number int64 `json:"number"`

	// EffectiveTime is when packets start to be created under this epoch.
	EffectiveTime metav1.Time `json:"effectiveTime"`

	// Ranges map every slot to one cell.
	// +listType=atomic
	Ranges []OwnedSlotRange `json:"ranges"`

	// FirstEffectiveTime is, for an epoch pushed back because servers had not loaded it,
	// the effective time it was first planned with.
	// +optional
	FirstEffectiveTime *metav1.Time `json:"firstEffectiveTime,omitempty"`
}

// MaskedSlotRange is a slot range in which no new packet IDs are issued.
type MaskedSlotRange struct {
	SlotRange `json:",inline"`

	// Cell is the cell owning the range when it was masked.
	// +optional
	Cell string `json:"cell,omitempty"`

	// Table is the logical table (db_xx.t_y) whose errors caused the mask.
	// +optional
	Table string `json:"table,omitempty"`

	// Reason says why the range is masked.
	Reason string `json:"reason"`

	// Since is when the mask was applied.
	Since metav1.Time `json:"since"`
}

// ZoneServers is how many servers of a cell run in one zone.
type ZoneServers struct {
	// Zone is a topology.kubernetes.io/zone value.
	Zone string `json:"zone"`

	// Servers is the number of cell servers in the zone.
	// +kubebuilder:validation:Minimum=0
	Servers int32 `json:"servers"`
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RedPacketCellSpec is one SET cell: a vertical stack of servers, MySQL and memcached that
// owns some slots. The set controller writes it; a cell never looks at other cells.
type RedPacketCellSpec struct {
	// SetName is the RedPacketSet the cell belongs to.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.setName is immutable"
	SetName string `json:"setName"`

	// Index is the cell's number within its set.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.index is immutable"
	Index int32 `json:"index"`

	// Slots are the ranges the cell owns in the set's current routing epoch. A draining
	// cell owns none but still serves packets created under older epochs.
	// +listType=atomic
	// +optional
	Slots []SlotRange `json:"slots,omitempty"`

	// SlotCount is the set's slot count.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	SlotCount int32 `json:"slotCount"`

	// Region is the set's region number.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3
	// +optional
	Region int32 `json:"region,omitempty"`

	// Zones the cell's servers spread over.
	// +kubebuilder:validation:MinItems=1
	// +listType=set
	Zones []string `json:"zones"`

	// ServersPerZone is the planned number of servers in each zone.
	// +listType=map
	// +listMapKey=zone
	// +optional
	ServersPerZone []ZoneServers `json:"serversPerZone,omitempty"`

	// Servers is the total number of cell servers.
	// +kubebuilder:validation:Minimum=0
	Servers int32 `json:"servers"`

	// Template is what the cell runs.
	// +kubebuilder:default={}
	// +optional
	Template CellTemplate `json:"template,omitempty"`

	// Limits bounds the packets the cell accepts.
	// +kubebuilder:default={}
	// +optional
	Limits PacketLimits `json:"limits,omitempty"`

	// Masking is the set's masking policy, applied to this cell's logical tables.
	// +kubebuilder:default={}
	// +optional
	Masking MaskingPolicy `json:"masking,omitempty"`

	// Draining is true when the cell owns no slot in the current epoch. Defaulted, so the
	// object always carries it and `kubectl get rpc` shows false rather than a blank column.
	// +kubebuilder:default=false
	// +optional
	Draining bool `json:"draining,omitempty"`
}

// RedPacketCellStatus is the observed state of a cell.
type RedPacketCellStatus struct {
	// Conditions: Available, DatabaseReady, CacheReady and ServersReady.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Servers is the number of server pods that exist.
	// +optional
	Servers int32 `json:"servers,omitempty"`

	// ReadyServers is the number of server pods that are ready (memcached included).
	// +optional
	ReadyServers int32 `json:"readyServers,omitempty"`

	// ReadyDatabases is the number of ready database pods.
	// +optional
	ReadyDatabases int32 `json:"readyDatabases,omitempty"`

	// TableErrors summarises errors per logical table in the last masking window.
	// +listType=map
	// +listMapKey=table
	// +optional
	TableErrors []TableErrorSummary `json:"tableErrors,omitempty"`

	// MaskedSlots are the cell's slot ranges in which no new packets are created.
	// +listType=atomic
	// +optional
	MaskedSlots []MaskedSlotRange `json:"maskedSlots,omitempty"`

	// Database is the replicated database's primary and its durable history (only when
	// spec.template.mysql.replicas > 1). The operator's failover decisions rest on the
	// history: editing it by hand can promote an instance that lacks acknowledged commits.
	// +optional
	Database *CellDatabaseStatus `json:"database,omitempty"`
}

// CellDatabaseStatus is a replicated cell database's state as the operator last decided it.
type CellDatabaseStatus struct {
	// Primary is the database pod of the open term ("" before the first primary is opened).
	// +optional
	Primary string `json:"primary,omitempty"`

	// Terms are the primaries' tenures, oldest first; the last is open. Every transaction a
	// term's primary wrote carries its server ID, and once a term ends only that server's
	// GTIDs up to the term's end are legitimate (an instance holding others is refused).
	// +listType=atomic
	// +optional
	Terms []DatabaseTerm `json:"terms,omitempty"`

	// Refused are database pods (by ordinal) that must not serve or replicate until rebuilt,
	// and why: errant transactions, or a term ended under them.
	// +optional
	Refused map[string]string `json:"refused,omitempty"`

	// SemiSyncOffSince is when the primary stopped waiting for a replica because none could
	// replicate: commits since then may exist on the primary alone, so the operator does not
	// fail over from it until a replica has caught up.
	// +optional
	SemiSyncOffSince *metav1.Time `json:"semiSyncOffSince,omitempty"`
}

// DatabaseTerm is one primary's tenure.
type DatabaseTerm struct {
	// Number counts terms from 1.
	Number int32 `json:"number"`
	// Ordinal is the primary's pod ordinal in the database StatefulSet.
	Ordinal int32 `json:"ordinal"`
	// ServerID is the primary's server_id.
	ServerID int64 `json:"serverId"`
	// Start is the GTID position the term began at (MariaDB's syntax, e.g. "0-11-42").
	// +optional
	Start string `json:"start,omitempty"`
	// End is where the term ended ("" while it is open).
	// +optional
	End string `json:"end,omitempty"`
	// At is when the term began.
	At metav1.Time `json:"at"`
}

// TableErrorSummary is the error count of one logical table over a window.
type TableErrorSummary struct {
	// Table is the logical table, db_xx.t_y.
	Table string `json:"table"`

	// Errors within the window, summed over the cell's servers.
	Errors int64 `json:"errors"`

	// Calls within the window, summed over the cell's servers.
	// +optional
	Calls int64 `json:"calls,omitempty"`

	// WindowStart is the start of the window counted.
	// +optional
	WindowStart metav1.Time `json:"windowStart,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rpc,categories=redpacket
// +kubebuilder:printcolumn:name="Set",type=string,JSONPath=`.spec.setName`
// +kubebuilder:printcolumn:name="Servers",type=integer,JSONPath=`.spec.servers`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyServers`
// +kubebuilder:printcolumn:name="Draining",type=boolean,JSONPath=`.spec.draining`
// +kubebuilder:printcolumn:name="Available",type=string,JSONPath=`.status.conditions[?(@.type=="Available")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// RedPacketCell is one SET cell of a RedPacketSet.
type RedPacketCell struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired cell.
	Spec RedPacketCellSpec `json:"spec"`

	// Status is the observed cell.
	// +optional
	Status RedPacketCellStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// RedPacketCellList is a list of RedPacketCells.
type RedPacketCellList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RedPacketCell `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RedPacketCell{}, &RedPacketCellList{})
}

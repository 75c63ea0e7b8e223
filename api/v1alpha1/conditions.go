package v1alpha1

// Condition types of a RedPacketSet.
const (
	// SetAvailable is True when every cell owning slots in the current epoch is Available.
	SetAvailable = "Available"
	// SetProgressing is True while cells or children are being created or changed.
	SetProgressing = "Progressing"
	// SetDegraded is True when some cell is not Available.
	SetDegraded = "Degraded"
	// SetZoneFailureTolerant is True when losing any one zone leaves every cell its peak.
	SetZoneFailureTolerant = "ZoneFailureTolerant"
	// SetRebalancing is True while a new routing epoch is pending or old epochs drain.
	SetRebalancing = "Rebalancing"
	// SetSlotsMasked is True when some slots are masked.
	SetSlotsMasked = "SlotsMasked"
	// SetRoutingPublished is True when the routing table the set wants is published; False
	// when the operator refuses to write it (routing state lost, size budget reached).
	SetRoutingPublished = "RoutingPublished"
	// SetCellsServing is True when every cell the routing table names can serve its packets
	// (its database is ready and at least one server is); False names the cells that cannot.
	// Their packets get 503 from the gateways; every other cell keeps serving.
	SetCellsServing = "CellsServing"
	// SetDeletionHeld is True while the set (or a cell) is being deleted and its deletion waits
	// for unsettled packets and undelivered wallet effects.
	SetDeletionHeld = "DeletionHeld"
)

// Condition types of a RedPacketCell.
const (
	CellAvailable     = "Available"
	CellDatabaseReady = "DatabaseReady"
	CellCacheReady    = "CacheReady"
	CellServersReady  = "ServersReady"
	// CellProvisioned is True when every child of the cell was written; False names the child
	// the API server refused and its error.
	CellProvisioned = "Provisioned"
)

// Condition reasons. Each is documented in docs/operator.md with what an SRE does about it.
const (
	ReasonAllCellsAvailable    = "AllCellsAvailable"
	ReasonCellsUnavailable     = "CellsUnavailable"
	ReasonCellsProgressing     = "CellsProgressing"
	ReasonUpToDate             = "UpToDate"
	ReasonReconcileFailed      = "ReconcileFailed"
	ReasonHeadroomSufficient   = "HeadroomSufficient"
	ReasonHeadroomInsufficient = "HeadroomInsufficient"
	ReasonSingleZone           = "SingleZone"
	ReasonEpochPending         = "EpochPending"
	ReasonDrainingCells        = "DrainingCells"
	ReasonStable               = "Stable"
	ReasonNoMasks              = "NoMasks"
	ReasonMasksActive          = "MasksActive"
	ReasonMaskBudgetExhausted  = "MaskBudgetExhausted"
	ReasonInvalidSpec          = "InvalidSpec"
	// Rebalancing reasons of the hand-over gate (controllers/plan DecideHandover).
	ReasonReadersBehind      = "ReadersBehind"
	ReasonEpochPushedBack    = "EpochPushedBack"
	ReasonHandoverIncomplete = "HandoverIncomplete"
	// RoutingPublished reasons.
	ReasonPublished             = "Published"
	ReasonRebuiltFromStatus     = "RebuiltFromStatus"
	ReasonRebalanceDelayClamped = "RebalanceDelayClamped"
	ReasonRoutingStateLost      = "RoutingStateLost"
	ReasonRoutingTableFull      = "RoutingTableFull"
	ReasonAllCellsServing       = "AllCellsServing"
	ReasonCellsNotServing       = "CellsNotServing"
	ReasonUnsettled             = "Unsettled"
	ReasonDiscardForced         = "DiscardForced"

	ReasonReady                = "Ready"
	ReasonDatabaseNotReady     = "DatabaseNotReady"
	ReasonDatabaseMissing      = "DatabaseMissing"
	ReasonServersNotReady      = "ServersNotReady"
	ReasonServersMissing       = "ServersMissing"
	ReasonCacheNotReady        = "CacheNotReady"
	ReasonDependenciesNotReady = "DependenciesNotReady"

	// Provisioning failures (issue 14): a child the API server refused, pods a workload's
	// controller cannot create, a rollout past its deadline. Rolled up to the set as
	// ProvisioningFailed.
	ReasonApplied        = "Applied"
	ReasonApplyFailed    = "ApplyFailed"
	ReasonPodsNotCreated = "PodsNotCreated"
	ReasonRolloutStuck   = "RolloutStuck"
	// PodsFailing: pods exist but will not become ready by waiting (unschedulable, crash loop,
	// image pull failure), named with the kubelet's reason.
	ReasonPodsFailing        = "PodsFailing"
	ReasonProvisioningFailed = "ProvisioningFailed"
	// RoutingPublished: the routing ConfigMap could not be read at all (not merely unparsable).
	ReasonRoutingUnreadable = "RoutingUnreadable"
)

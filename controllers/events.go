package controllers

import (
	"fmt"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
)

// event is one kind of Kubernetes Event the operator emits, declared once so its type,
// reason and wording stay the same everywhere it is raised.
type event struct {
	Type    string
	Reason  string
	Action  string
	Message string // a fmt format
}

// The operator's events.
var (
	EventCellCreated         = event{corev1.EventTypeNormal, "CellCreated", "Create", "created cell %s owning slots %s"}
	EventCellScaled          = event{corev1.EventTypeNormal, "CellScaled", "Scale", "cell %s servers %d -> %d"}
	EventCellDraining        = event{corev1.EventTypeNormal, "CellDraining", "Drain", "cell %s owns no slot from epoch %d on; it keeps serving older packets until they settle"}
	EventCellHeld            = event{corev1.EventTypeWarning, "CellHeld", "Drain", "cell %s is in no routing epoch but is kept: %s"}
	EventDeletionHeld        = event{corev1.EventTypeWarning, "DeletionHeld", "Delete", "deletion waits for settlement: %s (annotate %s=true to discard)"}
	EventDiscardForced       = event{corev1.EventTypeWarning, "DiscardForced", "Delete", "deletion forced by %s=true: %s"}
	EventCellDeleted         = event{corev1.EventTypeNormal, "CellDeleted", "Delete", "deleted cell %s: no routing epoch names it any more"}
	EventRebalanceScheduled  = event{corev1.EventTypeNormal, "RebalanceScheduled", "Rebalance", "routing epoch %d takes effect at %s and moves %d slots"}
	EventEpochPruned         = event{corev1.EventTypeNormal, "EpochPruned", "Prune", "routing epoch %d pruned: every packet created under it is settled"}
	EventInvalidSpec         = event{corev1.EventTypeWarning, "InvalidSpec", "Plan", "%s"}
	EventSecretGenerated     = event{corev1.EventTypeNormal, "SecretGenerated", "Create", "generated secret %s"}
	EventZoneTolerance       = event{corev1.EventTypeWarning, "ZoneFailureIntolerant", "Plan", "losing a zone would leave less than the peak: %s"}
	EventSlotsMasked         = event{corev1.EventTypeWarning, "SlotsMasked", "Mask", "masked the slots of logical table %s: its errors passed the threshold"}
	EventSlotsUnmasked       = event{corev1.EventTypeNormal, "SlotsUnmasked", "Unmask", "lifted the mask of logical table %s after a quiet cool-down"}
	EventSlotsReleased       = event{corev1.EventTypeNormal, "SlotsReleased", "Unmask", "released the mask of logical table %s: the cell no longer owns its slots"}
	EventMaskBudgetExhausted = event{corev1.EventTypeWarning, "MaskBudgetExhausted", "Mask", "mask budget of %d slots spent; tables left unmasked: %s"}
	EventRoutingLost         = event{corev1.EventTypeWarning, "RoutingStateLost", "Route", "%s"}
	EventRoutingRebuilt      = event{corev1.EventTypeWarning, "RoutingRebuilt", "Route", "routing table rebuilt from status.routing (epochs up to %d): %s"}
	EventEpochReplaced       = event{corev1.EventTypeNormal, "EpochReplaced", "Rebalance", "routing epoch %d replaced by epoch %d before taking effect %s"}
	EventEpochRefused        = event{corev1.EventTypeWarning, "EpochRefused", "Rebalance", "%s"}
	EventAnnounceFailed      = event{corev1.EventTypeWarning, "AnnounceFailed", "Rebalance", "could not announce routing epoch %d to cells: %s"}
	EventSwitchoverRefused   = event{corev1.EventTypeWarning, "DatabaseSwitchoverRefused", "Database", "switchover to %s not done: %v"}
	EventMaskingFailed       = event{corev1.EventTypeWarning, "MaskingFailed", "Mask", "cannot read or write the cell's control schema: %v"}
)

// emit records the event on obj; a nil recorder (unit tests) drops it.
func (e event) emit(rec events.EventRecorder, obj runtime.Object, args ...any) {
	if rec == nil {
		return
	}
	rec.Eventf(obj, nil, e.Type, e.Reason, e.Action, "%s", e.format(args...))
}

// emitAbout records the event on obj with related as the object it is about (a set's event
// about one of its cells). The events recorder folds events of one object, type, reason and
// action into a series and keeps only the first message, so without the related object four
// CellCreated events of one set would be stored as one, and a cell's CellDraining could be
// lost in another's series.
func (e event) emitAbout(rec events.EventRecorder, obj, related runtime.Object, args ...any) {
	if rec == nil {
		return
	}
	rec.Eventf(obj, related, e.Type, e.Reason, e.Action, "%s", e.format(args...))
}

// maxEventMessage is the apiserver's limit on an Event's note: a longer one is refused and the
// event lost ("can have at most 1024 characters"), which is when an SRE needs it most, e.g. an
// announce that failed for every cell of a large set.
const maxEventMessage = 1024

// format renders the message, cut to what the apiserver stores, with a marker saying it was
// cut; the full text is in the condition or the log that goes with the event.
func (e event) format(args ...any) string {
	msg := fmt.Sprintf(e.Message, args...)
	if len(msg) <= maxEventMessage {
		return msg
	}
	const more = " … (truncated)"
	cut := maxEventMessage - len(more)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + more
}

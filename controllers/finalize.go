package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

// Deleting a set or a cell must never strand money: a cell's database holds the packets that
// still owe a payout or a refund and the outbox rows that still owe a wallet credit. Both
// objects carry FinalizerSettle, released only by the same check scale-in uses before it
// deletes a retired cell (cellHold), or deliberately by AnnotationDiscardUnsettled.

// ensureFinalizer adds FinalizerSettle to a live object.
func ensureFinalizer(ctx context.Context, c client.Client, obj client.Object) error {
	if controllerutil.ContainsFinalizer(obj, rpv1.FinalizerSettle) {
		return nil
	}
	patch := client.MergeFromWithOptions(obj.DeepCopyObject().(client.Object), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(obj, rpv1.FinalizerSettle)
	if err := c.Patch(ctx, obj, patch); err != nil {
		return fmt.Errorf("add finalizer to %s: %w", obj.GetName(), err)
	}
	return nil
}

// releaseFinalizer removes FinalizerSettle, letting the deletion finish.
func releaseFinalizer(ctx context.Context, c client.Client, obj client.Object) error {
	patch := client.MergeFromWithOptions(obj.DeepCopyObject().(client.Object), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(obj, rpv1.FinalizerSettle)
	if err := c.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer from %s: %w", obj.GetName(), err)
	}
	return nil
}

func discardForced(obj client.Object) bool {
	return obj.GetAnnotations()[rpv1.AnnotationDiscardUnsettled] == "true"
}

// finalizeSet decides a deleting set's finalizer: released once no cell of the set holds
// anything (each cell then goes through its own finalizer), or when the discard is forced, in
// which case the annotation is passed on to the cells. It reports whether the set is still held.
func (r *SetReconciler) finalizeSet(ctx context.Context, set *rpv1.RedPacketSet) (held bool, err error) {
	if !controllerutil.ContainsFinalizer(set, rpv1.FinalizerSettle) {
		return false, nil
	}
	cells, err := r.listCells(ctx, set)
	if err != nil {
		return true, err
	}
	if discardForced(set) {
		for i := range cells {
			if err := markDiscard(ctx, r.Client, &cells[i]); err != nil {
				return true, err
			}
		}
		EventDiscardForced.emit(r.Recorder, set, rpv1.AnnotationDiscardUnsettled, fmt.Sprintf("set %s and its %d cells deleted without the settlement check", set.Name, len(cells)))
		return false, releaseFinalizer(ctx, r.Client, set)
	}
	var holding []string
	for i := range cells {
		if why := cellHold(ctx, r.Client, r.dbs, &cells[i]); why != "" {
			holding = append(holding, fmt.Sprintf("%s (%s)", cells[i].Name, why))
		}
	}
	if len(holding) == 0 {
		return false, releaseFinalizer(ctx, r.Client, set)
	}
	msg := strings.Join(holding, "; ")
	EventDeletionHeld.emit(r.Recorder, set, msg, rpv1.AnnotationDiscardUnsettled)
	// Reconcile writes the status.
	meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetDeletionHeld, Status: metav1.ConditionTrue,
		Reason: rpv1.ReasonUnsettled, Message: "deletion waits for settlement: " + msg, ObservedGeneration: set.Generation})
	return true, nil
}

func markDiscard(ctx context.Context, c client.Client, cell *rpv1.RedPacketCell) error {
	if discardForced(cell) {
		return nil
	}
	patch := client.MergeFrom(cell.DeepCopy())
	if cell.Annotations == nil {
		cell.Annotations = map[string]string{}
	}
	cell.Annotations[rpv1.AnnotationDiscardUnsettled] = "true"
	if err := c.Patch(ctx, cell, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("pass the discard on to cell %s: %w", cell.Name, err)
	}
	return nil
}

// finalizeCell decides a deleting cell's finalizer. A cell still holding money stays, keeps its
// children and keeps serving, so its sweeper settles what it holds; the set sees it as present
// and prunes none of the routing epochs its packets need. A cell that owes nothing itself also
// stays while a kept epoch names it (other cells may still owe packets created under that
// epoch): gone, the set would count the epoch as unsettled and recreate the cell only to ask
// it again. Held, the set asks it, prunes the epoch, and then the cell goes. It reports whether
// the cell is held.
func (r *CellReconciler) finalizeCell(ctx context.Context, cell *rpv1.RedPacketCell) (held bool, err error) {
	if !controllerutil.ContainsFinalizer(cell, rpv1.FinalizerSettle) {
		return false, nil
	}
	if discardForced(cell) {
		EventDiscardForced.emit(r.Recorder, cell, rpv1.AnnotationDiscardUnsettled, "cell "+cell.Name+" deleted without the settlement check")
		r.dbs.forget(cell.UID)
		r.databases.forget(cell.UID)
		return false, releaseFinalizer(ctx, r.Client, cell)
	}
	var why string
	if neverRouted(cell) {
		// Never owned a slot in an epoch that took effect: nothing to ask its database (which
		// may never have come up). A stale view of the cell cannot release it: the release
		// patch carries its resourceVersion.
		why = namedByEpochs(ctx, r.Client, cell)
	} else if why = cellHold(ctx, r.Client, r.dbs, cell); why == "" {
		why = namedByEpochs(ctx, r.Client, cell)
	}
	if why == "" {
		r.dbs.forget(cell.UID)
		r.databases.forget(cell.UID)
		return false, releaseFinalizer(ctx, r.Client, cell)
	}
	EventDeletionHeld.emit(r.Recorder, cell, why, rpv1.AnnotationDiscardUnsettled)
	meta.SetStatusCondition(&cell.Status.Conditions, metav1.Condition{Type: rpv1.SetDeletionHeld, Status: metav1.ConditionTrue,
		Reason: rpv1.ReasonUnsettled, Message: "deletion waits for settlement: " + why, ObservedGeneration: cell.Generation})
	return true, nil
}

// namedByEpochs says which of the set's kept routing epochs still name the cell ("" when none
// does, or the set is gone). The set's status mirrors every epoch of the published table.
func namedByEpochs(ctx context.Context, c client.Reader, cell *rpv1.RedPacketCell) string {
	name := cell.Labels[rpv1.LabelSet]
	if name == "" {
		return ""
	}
	set := &rpv1.RedPacketSet{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: cell.Namespace, Name: name}, set); err != nil {
		if apierrors.IsNotFound(err) {
			return ""
		}
		return fmt.Sprintf("cannot read set %s to check which routing epochs name it: %v", name, err)
	}
	var epochs []int64
	for _, e := range set.Status.Routing.Epochs {
		for _, r := range e.Ranges {
			if r.Cell == cell.Name {
				epochs = append(epochs, e.Number)
				break
			}
		}
	}
	if len(epochs) == 0 {
		return ""
	}
	return fmt.Sprintf("routing epochs %v still name it; set %s prunes them once every packet created under them is settled", epochs, name)
}

// A cell of a cancelled scale-out may never get a database that comes up: asking it whether
// it holds money would hold it for ever. It does not have to be asked when the operator can
// prove it never owned a slot in an epoch that took effect, because packets are only created
// in slots their cell owns at that second. The proof is AnnotationNeverRouted: put on a cell
// created while no epoch that took effect, or that can no longer change, names it; taken off
// by clearNeverRouted before any reconcile can prune such an epoch. Pending epochs are only
// ever replaced while more than a hand-over margin ahead (plan.CanReplan), before any reader
// may act on them, so a cell named only by replaced epochs never held a packet.

// committedAt reports whether epoch e is in force at now or too close to change: from then on
// a reader may create packets under it.
func committedAt(effective, now time.Time) bool {
	return !plan.CanReplan(&routing.Epoch{EffectiveTime: effective}, now)
}

// namedByCommittedEpoch reports whether any epoch of the tables (nil ones skipped) or the
// set's status that gives cell a slot is committed at now.
func namedByCommittedEpoch(cell string, now time.Time, status []rpv1.RoutingEpoch, tables ...*routing.Table) bool {
	for _, t := range tables {
		if t == nil {
			continue
		}
		for i := range t.Epochs {
			if len(t.Epochs[i].Slots(cell)) > 0 && committedAt(t.Epochs[i].EffectiveTime, now) {
				return true
			}
		}
	}
	for _, e := range status {
		for _, r := range e.Ranges {
			if r.Cell == cell && committedAt(e.EffectiveTime.Time, now) {
				return true
			}
		}
	}
	return false
}

func neverRouted(cell *rpv1.RedPacketCell) bool {
	return cell.Annotations[rpv1.AnnotationNeverRouted] == "true"
}

// clearNeverRouted takes the never-routed proof off every cell a committed epoch names. It
// runs before the reconcile decides anything, so an epoch that took effect is always seen
// here, naming its cells, before it can be pruned; a failure stops the reconcile.
func (r *SetReconciler) clearNeverRouted(ctx context.Context, obs *setObservation, now time.Time) error {
	for _, c := range obs.cells {
		if !neverRouted(c) || !namedByCommittedEpoch(c.Name, now, nil, obs.published) {
			continue
		}
		patch := client.MergeFrom(c.DeepCopy())
		delete(c.Annotations, rpv1.AnnotationNeverRouted)
		if err := r.Client.Patch(ctx, c, patch); err != nil {
			return fmt.Errorf("take %s off cell %s, which an epoch in force names: %w", rpv1.AnnotationNeverRouted, c.Name, err)
		}
	}
	return nil
}

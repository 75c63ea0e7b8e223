package controllers

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/masking"
	"github.com/redpacketset/redpacket/controllers/plan"
	"github.com/redpacketset/redpacket/controllers/setplan"
)

// FieldOwner is the server-side apply field manager of everything the operator writes.
const FieldOwner = client.FieldOwner("redpacket-operator")

// SetReconciler expands a RedPacketSet into its cells, routing ConfigMap, signing Secret and
// gateway, and reports the set's conditions.
type SetReconciler struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	// Now is the clock; tests move it to let routing epochs take effect.
	Now func() time.Time
	// Workers is how many sets reconcile at once (0: defaultSetWorkers).
	Workers int

	dbs *cellDBs // shared with the cell reconciler

	// announced remembers, per cell UID, the newest epoch written to its control schema, so a
	// cell that missed an announcement (its database was unreachable) gets it on a later
	// reconcile without a write to every cell every time.
	announcedMu sync.Mutex
	announced   map[types.UID]int64
	// published is the same for the table itself (publishToCells).
	published map[types.UID]int64
}

// Least privilege: children are written by server-side apply (patch) or created once (secrets),
// and deleted only by the garbage collector through owner references, except cells, which the
// set deletes itself once no routing epoch names them.
// The set's own finalizer is added and removed by patch.
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketsets,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketsets/status,verbs=get;update;patch
// blockOwnerDeletion on children needs update on the owner's finalizers where the
// OwnerReferencesPermissionEnforcement admission plugin runs.
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketsets/finalizers;redpacketcells/finalizers,verbs=update
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketcells,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps;secrets;services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the reconciler; it watches its cells and owned children.
func (r *SetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.dbs == nil {
		r.dbs = &cellDBs{}
	}
	return ctrl.NewControllerManagedBy(mgr).
		// Annotations too: the discard annotation on a held deletion must act at once.
		For(&rpv1.RedPacketSet{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&rpv1.RedPacketCell{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Secret{}).
		Owns(&corev1.Service{}).
		Owns(&appsv1.Deployment{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Named("redpacketset").
		WithOptions(controller.Options{MaxConcurrentReconciles: workersOr(r.Workers, defaultSetWorkers)}).
		Complete(r)
}

// setObservation is everything the set reconciler reads before deciding.
type setObservation struct {
	published *routing.Table
	// rebuilt says why the published table came from the set's status rather than the
	// routing ConfigMap ("" when the ConfigMap had it).
	rebuilt string
	cells   map[string]*rpv1.RedPacketCell
	held    map[string]string // cells no epoch names that must stay, and why
}

// Reconcile runs the set's phases in order; each wraps its error with what failed. The status
// is written on every exit: an error exit leaves Progressing=True ReconcileFailed naming the
// phase and the error (and, for an unreadable routing ConfigMap, RoutingPublished=False), never
// the conditions of the last pass that succeeded.
func (r *SetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	set := &rpv1.RedPacketSet{}
	if err := r.Client.Get(ctx, req.NamespacedName, set); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	pass := &setPass{orig: set.DeepCopy()}
	res, err := r.reconcile(ctx, set, pass)
	if err != nil {
		err = fmt.Errorf("reconcile set %s: %w", req.NamespacedName, err)
		if !isOnlyConflict(err) && !pass.gone {
			markFailed(set, err)
		}
	}
	if !pass.gone && (err == nil || !isOnlyConflict(err)) {
		if werr := r.writeStatus(ctx, pass.orig, set); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return quietConflict(ctx, res, err)
}

// setPass is what one reconcile of a set carries between its status writes.
type setPass struct {
	orig *rpv1.RedPacketSet // the status as last written
	gone bool               // the finalizer was released: no status to write
}

// markFailed records an error exit on the set. Progressing says the operator could not finish
// (and what stopped it); the other conditions keep what the last full pass found.
func markFailed(set *rpv1.RedPacketSet, err error) {
	meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetProgressing, Status: metav1.ConditionTrue,
		Reason: rpv1.ReasonReconcileFailed, Message: err.Error(), ObservedGeneration: set.Generation})
}

func (r *SetReconciler) reconcile(ctx context.Context, set *rpv1.RedPacketSet, pass *setPass) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	if !set.DeletionTimestamp.IsZero() {
		// Owner references collect the children once the finalizer goes; until then the
		// set keeps serving so its cells can settle.
		held, err := r.finalizeSet(ctx, set)
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("finalize: %w", err)
		}
		if held {
			return ctrl.Result{RequeueAfter: heldRecheck}, nil
		}
		pass.gone = true
		return ctrl.Result{}, nil
	}
	if err := ensureFinalizer(ctx, r.Client, set); err != nil {
		return ctrl.Result{}, err
	}
	now := r.Now()

	if errs := set.Spec.StoredValueErrors(); len(errs) > 0 {
		// Stored before the CRD refused such values (or with validation bypassed): plan
		// nothing from them. The cells keep running as they are.
		err := errors.Join(errs...)
		EventInvalidSpec.emit(r.Recorder, set, err.Error())
		r.markInvalid(set, err)
		return ctrl.Result{}, nil
	}
	p, err := plan.Compute(setplan.PlanInput(set))
	if err != nil {
		EventInvalidSpec.emit(r.Recorder, set, err.Error())
		r.markInvalid(set, err)
		return ctrl.Result{}, nil
	}

	obs, err := r.gather(ctx, set)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("gather: %w", err)
	}
	// Before anything can prune an epoch: a cell an epoch in force names loses its proof of
	// never having held a packet.
	if err := r.clearNeverRouted(ctx, obs, now); err != nil {
		return ctrl.Result{}, err
	}

	names := make([]string, len(p.Cells))
	for i, c := range p.Cells {
		names[i] = c.Name
	}
	set.Status.MaskedSlots = collectMasks(obs.cells)
	masks := masksFromStatus(set.Status.MaskedSlots)
	if obs.published == nil && len(obs.cells) > 0 {
		// Cells exist, so packets may exist under epochs nobody can name any more: starting
		// again at epoch 1 would route them to other cells. Write nothing.
		msg := fmt.Sprintf("routing ConfigMap %s and status.routing both hold no epochs while %d cells exist (%s); not writing a new table. Restore the ConfigMap from a backup of its %s key (or of the set's status.routing)",
			set.RoutingConfigMapName(), len(obs.cells), obs.rebuilt, rpv1.RoutingFile)
		meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetRoutingPublished, Status: metav1.ConditionFalse,
			Reason: rpv1.ReasonRoutingStateLost, Message: msg, ObservedGeneration: set.Generation})
		EventRoutingLost.emit(r.Recorder, set, msg)
		return ctrl.Result{RequeueAfter: heldRecheck}, nil
	}
	in := routingInput{published: obs.published, cells: names, masked: masks, now: now, settled: r.epochSettled(ctx, set),
		minNumber: set.Status.Routing.CurrentEpoch}
	if obs.published != nil {
		in.minNumber = max(in.minNumber, obs.published.Latest().Number)
		if latest := obs.published.Latest(); latest.EffectiveTime.After(now) || !plan.SameCells(latest.Cells(), names) || obs.rebuilt != "" {
			var reported int64
			in.readers, reported = r.readReaders(ctx, obs.cells)
			in.minNumber = max(in.minNumber, reported)
		}
	}
	d := decideRouting(set, in)
	if obs.rebuilt != "" && obs.published != nil {
		EventRoutingRebuilt.emit(r.Recorder, set, obs.published.Latest().Number, obs.rebuilt)
	}
	// Announce before publishing: a server that misses the new table learns from its own
	// cell's control schema that it must stop issuing before the epoch can take effect.
	d.announceErrs = r.announce(ctx, obs.cells, d.Table.Latest())
	if len(d.announceErrs) > 0 {
		d.RequeueAt = earliest(d.RequeueAt, now.Add(5*time.Second))
	}
	if d.Change.Kind != plan.Unchanged {
		// Status first, so a lost ConfigMap is rebuilt with this epoch, never an older one.
		set.Status.Routing = epochsToStatus(d.Table)
		if err := r.writeStatus(ctx, pass.orig, set); err != nil {
			return ctrl.Result{}, fmt.Errorf("record routing epoch %d in status: %w", d.Table.Latest().Number, err)
		}
		pass.orig = set.DeepCopy()
	}

	phases := []struct {
		name string
		run  func() error
	}{
		{"signing secret", func() error { return r.ensureSigningSecret(ctx, set) }},
		{"routing configmap", func() error { return r.applyRouting(ctx, set, d) }},
		{"cells", func() error { return r.applyCells(ctx, set, p, d.Table, obs, now) }},
		{"gateway", func() error { return r.applyGateway(ctx, set) }},
	}
	for _, ph := range phases {
		if err := ph.run(); err != nil {
			return ctrl.Result{}, fmt.Errorf("%s: %w", ph.name, err)
		}
	}

	// After the status and the ConfigMap hold the table: a server may load it from here.
	if failed := r.publishToCells(ctx, obs.cells, d.Table); len(failed) > 0 {
		logger.Info("routing table not yet published to every cell's control schema; their servers wait for the ConfigMap", "epoch", d.Table.Latest().Number, "cells", failed)
		d.RequeueAt = earliest(d.RequeueAt, now.Add(5*time.Second))
	}

	// Re-read cells: applyCells may have created some.
	cells, err := r.listCells(ctx, set)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("list cells: %w", err)
	}
	r.summarise(set, p, d, cells, obs.held, obs.rebuilt, now)
	logger.V(1).Info("reconciled set", "cells", len(p.Cells), "epoch", set.Status.Routing.CurrentEpoch)
	if len(obs.held) > 0 {
		d.RequeueAt = earliest(d.RequeueAt, now.Add(heldRecheck))
	}
	if !d.RequeueAt.IsZero() {
		return ctrl.Result{RequeueAfter: max(d.RequeueAt.Sub(now), time.Second)}, nil
	}
	return ctrl.Result{}, nil
}

func (r *SetReconciler) gather(ctx context.Context, set *rpv1.RedPacketSet) (*setObservation, error) {
	obs := &setObservation{cells: map[string]*rpv1.RedPacketCell{}, held: map[string]string{}}
	cm := &corev1.ConfigMap{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.RoutingConfigMapName()}, cm)
	switch {
	case apierrors.IsNotFound(err):
		obs.rebuilt = "the routing ConfigMap is missing"
	case err != nil:
		err = fmt.Errorf("cannot read routing ConfigMap %s/%s: %w", set.Namespace, set.RoutingConfigMapName(), err)
		meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetRoutingPublished, Status: metav1.ConditionUnknown,
			Reason: rpv1.ReasonRoutingUnreadable, Message: err.Error() + "; nothing is published until it can be read", ObservedGeneration: set.Generation})
		return nil, err
	default:
		data, ok := cm.Data[rpv1.RoutingFile]
		if !ok {
			obs.rebuilt = fmt.Sprintf("the routing ConfigMap has no %s key", rpv1.RoutingFile)
			break
		}
		t, err := routing.Parse([]byte(data))
		switch {
		case err != nil:
			obs.rebuilt = fmt.Sprintf("the routing ConfigMap holds an unreadable table: %v", err)
		case t.SlotCount != int(set.Spec.SlotCount):
			obs.rebuilt = fmt.Sprintf("the routing ConfigMap's table has slotCount %d, the set %d", t.SlotCount, set.Spec.SlotCount)
		default:
			obs.published = t
		}
	}
	if obs.published == nil {
		// The status mirrors every epoch the ConfigMap held (and is written first), so the
		// table is rebuilt from it rather than restarted; the ConfigMap is then rewritten.
		obs.published = tableFromStatus(set, nil)
		if obs.published != nil {
			if err := obs.published.Validate(); err != nil {
				obs.rebuilt += fmt.Sprintf("; status.routing is unusable too: %v", err)
				obs.published = nil
			}
		}
	}
	cells, err := r.listCells(ctx, set)
	if err != nil {
		return nil, err
	}
	for i := range cells {
		obs.cells[cells[i].Name] = &cells[i]
	}
	return obs, nil
}

func (r *SetReconciler) listCells(ctx context.Context, set *rpv1.RedPacketSet) ([]rpv1.RedPacketCell, error) {
	list := &rpv1.RedPacketCellList{}
	if err := r.Client.List(ctx, list, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
		return nil, fmt.Errorf("list cells: %w", err)
	}
	out := list.Items
	slices.SortFunc(out, func(a, b rpv1.RedPacketCell) int { return int(a.Spec.Index - b.Spec.Index) })
	return out, nil
}

// ensureSigningSecret creates the gateway→cell signing key once; an existing Secret is never
// overwritten, or in-flight signed requests would start failing.
func (r *SetReconciler) ensureSigningSecret(ctx context.Context, set *rpv1.RedPacketSet) error {
	existing := &corev1.Secret{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.SigningSecretName()}, existing)
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get signing secret: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate signing key: %w", err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: set.SigningSecretName(), Namespace: set.Namespace, Labels: setLabels(set, "")},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"key": []byte(hex.EncodeToString(key))},
	}
	if err := ctrl.SetControllerReference(set, s, r.Scheme); err != nil {
		return err
	}
	if err := r.Client.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create signing secret: %w", err)
	}
	EventSecretGenerated.emit(r.Recorder, set, s.Name)
	return nil
}

func (r *SetReconciler) applyRouting(ctx context.Context, set *rpv1.RedPacketSet, d routingDecision) error {
	data, err := d.Table.Marshal()
	if err != nil {
		return err
	}
	cm := corev1ac.ConfigMap(set.RoutingConfigMapName(), set.Namespace).
		WithLabels(setLabels(set, "")).
		WithOwnerReferences(ownerRef(set, rpv1.GroupVersion.WithKind("RedPacketSet"))).
		WithData(map[string]string{rpv1.RoutingFile: string(data)})
	if err := applyChild(ctx, r.Client, cm); err != nil {
		return fmt.Errorf("routing: %w", err)
	}
	if d.Scheduled != nil {
		EventRebalanceScheduled.emit(r.Recorder, set, d.Scheduled.Number, d.Scheduled.EffectiveTime.UTC().Format(time.RFC3339), d.Moved)
	}
	if d.Change.Kind == plan.Replanned && d.Change.Dropped != 0 {
		EventEpochReplaced.emit(r.Recorder, set, d.Change.Dropped, d.Scheduled.Number, d.Handover.Message)
	}
	for _, n := range d.Pruned {
		EventEpochPruned.emit(r.Recorder, set, n)
	}
	if d.Refused != "" {
		EventEpochRefused.emit(r.Recorder, set, d.Refused)
	}
	if len(d.announceErrs) > 0 {
		EventAnnounceFailed.emit(r.Recorder, set, d.Table.Latest().Number, strings.Join(d.announceErrs, ", "))
	}
	return nil
}

// applyCells makes one RedPacketCell per cell any kept epoch names (so draining cells stay
// until their packets settle) and deletes the cells no epoch names any more.
func (r *SetReconciler) applyCells(ctx context.Context, set *rpv1.RedPacketSet, p plan.Plan, t *routing.Table, obs *setObservation, now time.Time) error {
	latest := t.Latest()
	sizing := map[string]plan.Cell{}
	for _, c := range p.Cells {
		sizing[c.Name] = c
	}
	wanted := map[string]bool{}
	for _, name := range t.AllCells() {
		wanted[name] = true
		size, planned := sizing[name]
		if !planned {
			size = p.Cells[0] // a draining cell keeps the sizing every cell has
		}
		index, err := cellIndex(set.Name, name)
		if err != nil {
			return err
		}
		slots := cellSlots(latest, name)
		cell := desiredCell(set, name, index, slots, size)
		existing, exists := obs.cells[name]
		// A new cell named by no committed epoch starts with the proof that it never held a
		// packet; an existing one keeps it only while that stays true.
		if (!exists || neverRouted(existing)) && !namedByCommittedEpoch(name, now, set.Status.Routing.Epochs, t, obs.published) {
			cell.Annotations = map[string]string{rpv1.AnnotationNeverRouted: "true"}
		}
		// Every cell status change wakes this reconcile; re-applying every cell of the set
		// each time would cost one write per cell per status change.
		if exists && cellUpToDate(existing, cell, set) {
			continue
		}
		if err := r.applyCell(ctx, set, cell); err != nil {
			return err
		}
		switch {
		case !exists:
			EventCellCreated.emitAbout(r.Recorder, set, cell, name, formatSlots(slots))
		case existing.Spec.Servers != cell.Spec.Servers:
			EventCellScaled.emitAbout(r.Recorder, set, existing, name, existing.Spec.Servers, cell.Spec.Servers)
		}
		if exists && len(slots) == 0 && !existing.Spec.Draining {
			EventCellDraining.emitAbout(r.Recorder, set, existing, name, latest.Number)
		}
	}
	for name, c := range obs.cells {
		if wanted[name] {
			continue
		}
		precondition := client.Preconditions{UID: &c.UID}
		if neverRouted(c) {
			// No epoch that took effect ever named it (see clearNeverRouted): it holds no
			// packet of its own, so its database need not answer. The resourceVersion makes
			// a stale cached cell, whose proof was already taken off, fail to delete.
			precondition.ResourceVersion = &c.ResourceVersion
		} else if why := cellHold(ctx, r.Client, r.dbs, c); why != "" {
			// The epochs naming it were pruned only once settled, but its outbox may still
			// owe wallet effects: the cell's own database has the last word.
			obs.held[name] = why
			EventCellHeld.emitAbout(r.Recorder, set, c, name, why)
			continue
		}
		if err := r.Client.Delete(ctx, c, precondition); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete cell %s: %w", name, err)
		}
		r.dbs.forget(c.UID)
		EventCellDeleted.emitAbout(r.Recorder, set, c, name)
	}
	return nil
}

func cellIndex(set, cell string) (int32, error) {
	var i int32
	if _, err := fmt.Sscanf(strings.TrimPrefix(cell, set+"-cell-"), "%d", &i); err != nil || !strings.HasPrefix(cell, set+"-cell-") {
		return 0, fmt.Errorf("routing table names cell %q, which is not a cell of set %s", cell, set)
	}
	return i, nil
}

// desiredCell is the RedPacketCell the set wants for one cell.
func desiredCell(set *rpv1.RedPacketSet, name string, index int32, slots []rpv1.SlotRange, size plan.Cell) *rpv1.RedPacketCell {
	perZone := make([]rpv1.ZoneServers, 0, len(set.Spec.Zones))
	total := int32(0)
	for _, z := range set.Spec.Zones {
		n := int32(size.ServersPerZone[z])
		perZone = append(perZone, rpv1.ZoneServers{Zone: z, Servers: n})
		total += n
	}
	return &rpv1.RedPacketCell{
		TypeMeta:   metav1.TypeMeta{APIVersion: rpv1.GroupVersion.String(), Kind: "RedPacketCell"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: set.Namespace, Labels: setLabels(set, name)},
		Spec: rpv1.RedPacketCellSpec{
			SetName:        set.Name,
			Index:          index,
			Slots:          slots,
			SlotCount:      set.Spec.SlotCount,
			Region:         set.Spec.Region,
			Zones:          set.Spec.Zones,
			ServersPerZone: perZone,
			Servers:        total,
			Template:       set.Spec.Template,
			Limits:         set.Spec.Limits,
			Masking:        set.Spec.Masking,
			Draining:       len(slots) == 0,
		},
	}
}

// cellUpToDate reports whether the stored cell already has everything applyCell would write:
// the desired spec, labels and the set as its controller.
func cellUpToDate(stored, desired *rpv1.RedPacketCell, set *rpv1.RedPacketSet) bool {
	ref := metav1.GetControllerOf(stored)
	if ref == nil || ref.UID != set.UID {
		return false
	}
	for k, v := range desired.Labels {
		if stored.Labels[k] != v {
			return false
		}
	}
	if neverRouted(stored) != neverRouted(desired) {
		return false
	}
	return equality.Semantic.DeepEqual(stored.Spec, desired.Spec)
}

func (r *SetReconciler) applyCell(ctx context.Context, set *rpv1.RedPacketSet, cell *rpv1.RedPacketCell) error {
	if err := ctrl.SetControllerReference(set, cell, r.Scheme); err != nil {
		return err
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cell)
	if err != nil {
		return fmt.Errorf("convert cell %s: %w", cell.Name, err)
	}
	delete(u, "status")
	md := u["metadata"].(map[string]any)
	delete(md, "creationTimestamp")
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(unstructuredOf(u)), FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("apply cell %s: %w", cell.Name, err)
	}
	return nil
}

func (r *SetReconciler) applyGateway(ctx context.Context, set *rpv1.RedPacketSet) error {
	for _, obj := range gatewayObjects(set) {
		if err := applyChild(ctx, r.Client, obj); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

func (r *SetReconciler) markInvalid(set *rpv1.RedPacketSet, err error) {
	msg := err.Error()
	for _, t := range []string{rpv1.SetAvailable, rpv1.SetZoneFailureTolerant, rpv1.SetRebalancing, rpv1.SetSlotsMasked, rpv1.SetRoutingPublished, rpv1.SetCellsServing} {
		if meta.FindStatusCondition(set.Status.Conditions, t) == nil {
			meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: t, Status: metav1.ConditionUnknown, Reason: rpv1.ReasonInvalidSpec, Message: msg, ObservedGeneration: set.Generation})
		}
	}
	meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetProgressing, Status: metav1.ConditionFalse, Reason: rpv1.ReasonInvalidSpec, Message: msg, ObservedGeneration: set.Generation})
	meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{Type: rpv1.SetDegraded, Status: metav1.ConditionTrue, Reason: rpv1.ReasonInvalidSpec, Message: msg, ObservedGeneration: set.Generation})
}

// summarise fills the status from the plan, the table and the cells' own status. It sets
// every condition on every reconcile, so a fresh set shows all of them at once.
func (r *SetReconciler) summarise(set *rpv1.RedPacketSet, p plan.Plan, d routingDecision, cells []rpv1.RedPacketCell, held map[string]string, rebuilt string, now time.Time) {
	t := d.Table
	st := &set.Status
	gen := set.Generation
	latest := t.Latest()
	st.Routing = epochsToStatus(t)
	st.Selector = metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: map[string]string{rpv1.LabelSet: set.Name}})
	st.CellSummaries = nil
	var draining []string
	for i := range cells {
		c := &cells[i]
		status := metav1.ConditionUnknown
		if avail := meta.FindStatusCondition(c.Status.Conditions, rpv1.CellAvailable); avail != nil {
			status = avail.Status
		}
		slots := cellSlots(latest, c.Name)
		st.CellSummaries = append(st.CellSummaries, rpv1.CellSummary{
			Name: c.Name, Slots: formatSlots(slots), Servers: c.Spec.Servers, ReadyServers: c.Status.ReadyServers,
			Available: status, Draining: len(slots) == 0,
		})
		if len(slots) == 0 {
			if why, ok := held[c.Name]; ok {
				draining = append(draining, fmt.Sprintf("%s (held: %s)", c.Name, why))
			} else {
				draining = append(draining, c.Name)
			}
		}
	}
	roll := rollUpCells(cells, latest.Cells())
	st.ReadyCells, st.Cells = roll.ready, roll.present
	notServing := cellsNotServing(cells)

	cond := func(typ string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	for _, c := range roll.conditions() {
		cond(c.Type, c.Status == metav1.ConditionTrue, c.Reason, c.Message)
	}
	if len(notServing) > 0 {
		cond(rpv1.SetCellsServing, false, rpv1.ReasonCellsNotServing, "cannot serve (their packets get 503, other cells serve): "+strings.Join(notServing, "; "))
	} else {
		cond(rpv1.SetCellsServing, true, rpv1.ReasonAllCellsServing, fmt.Sprintf("all %d cells can serve", len(cells)))
	}
	reason := rpv1.ReasonHeadroomSufficient
	switch p.ToleranceReason {
	case plan.ReasonSingleZone:
		reason = rpv1.ReasonSingleZone
	case plan.ReasonInsufficientHeadroom:
		reason = rpv1.ReasonHeadroomInsufficient
	}
	wasIntolerant := meta.IsStatusConditionFalse(st.Conditions, rpv1.SetZoneFailureTolerant)
	cond(rpv1.SetZoneFailureTolerant, p.ZoneFailureTolerant, reason, p.ToleranceMessage)
	if !p.ZoneFailureTolerant && !wasIntolerant {
		EventZoneTolerance.emit(r.Recorder, set, p.ToleranceMessage)
	}

	switch {
	case latest.EffectiveTime.After(now):
		reason, msg := d.Handover.Reason, d.Handover.Message
		if reason == plan.HandoverNone {
			reason, msg = rpv1.ReasonEpochPending, fmt.Sprintf("routing epoch %d takes effect at %s", latest.Number, latest.EffectiveTime.UTC().Format(time.RFC3339))
		}
		if len(d.announceErrs) > 0 {
			msg += "; not announced to " + strings.Join(d.announceErrs, ", ")
		}
		cond(rpv1.SetRebalancing, true, reason, msg)
	case len(draining) > 0:
		msg := "draining until their packets settle: " + strings.Join(draining, ", ")
		if len(d.Unsettled) > 0 {
			msg += fmt.Sprintf("; routing epochs %v kept past their time: their cells still hold unsettled packets", d.Unsettled)
		}
		cond(rpv1.SetRebalancing, true, rpv1.ReasonDrainingCells, msg)
	default:
		cond(rpv1.SetRebalancing, false, rpv1.ReasonStable, fmt.Sprintf("routing epoch %d in force", latest.Number))
	}

	switch {
	case d.Refused != "":
		cond(rpv1.SetRoutingPublished, false, rpv1.ReasonRoutingTableFull, d.Refused+"; masks and cells are still published, new epochs are not until old ones are pruned")
	case rebuilt != "":
		cond(rpv1.SetRoutingPublished, true, rpv1.ReasonRebuiltFromStatus, fmt.Sprintf("routing table rebuilt from status.routing and republished (epoch %d): %s", latest.Number, rebuilt))
	case d.DelayClamped:
		cond(rpv1.SetRoutingPublished, true, rpv1.ReasonRebalanceDelayClamped, fmt.Sprintf("spec.rebalanceDelay %s is below the floor; new epochs take effect %s ahead", set.RebalanceDelayOrDefault(), plan.MinRebalanceDelay))
	default:
		size := 0
		if data, err := t.Marshal(); err == nil {
			size = len(data)
		}
		cond(rpv1.SetRoutingPublished, true, rpv1.ReasonPublished, fmt.Sprintf("routing epoch %d published, %d epochs in %d of %d bytes", latest.Number, len(t.Epochs), size, routing.MaxTableBytes))
	}

	// The budget is a fraction of each cell's slots (cells decide their masks on their own),
	// so it is spent when any cell has reached its share.
	st.MaskedSlotCount = 0
	maskedPerCell := map[string]int32{}
	for _, m := range st.MaskedSlots {
		st.MaskedSlotCount += m.End - m.Start + 1
		maskedPerCell[m.Cell] += m.End - m.Start + 1
	}
	var spent []string
	inForce, _ := t.EpochAt(now)
	for cell, n := range maskedPerCell {
		// The cell's own rule (masking.Budget): its share of the slots it owns now.
		if int(n) >= masking.Budget(int(set.Spec.Masking.MaxMaskedPercent), len(inForce.Slots(cell))) {
			spent = append(spent, cell)
		}
	}
	slices.Sort(spent)
	switch {
	case st.MaskedSlotCount == 0:
		cond(rpv1.SetSlotsMasked, false, rpv1.ReasonNoMasks, "no slot is masked")
	case len(spent) > 0:
		cond(rpv1.SetSlotsMasked, true, rpv1.ReasonMaskBudgetExhausted, fmt.Sprintf("%d slots masked; mask budget (%d%% of a cell's slots) spent in %s: no further masks there", st.MaskedSlotCount, set.Spec.Masking.MaxMaskedPercent, strings.Join(spent, ", ")))
	default:
		cond(rpv1.SetSlotsMasked, true, rpv1.ReasonMasksActive, fmt.Sprintf("%d slots masked", st.MaskedSlotCount))
	}
	st.ObservedGeneration = gen
}

// cellsNotServing names the cells that cannot answer for their packets, with why: no ready
// database, or no ready server. A cell with fewer servers than planned still serves.
func cellsNotServing(cells []rpv1.RedPacketCell) []string {
	var out []string
	for i := range cells {
		c := &cells[i]
		switch {
		case !meta.IsStatusConditionTrue(c.Status.Conditions, rpv1.CellDatabaseReady):
			out = append(out, c.Name+" (database not ready)")
		case c.Status.ReadyServers == 0:
			out = append(out, c.Name+" (no ready server)")
		}
	}
	return out
}

// writeStatus writes the status only when it changed. A conflict is returned as is: Reconcile
// turns it into a quiet requeue (quietConflict).
func (r *SetReconciler) writeStatus(ctx context.Context, orig, set *rpv1.RedPacketSet) error {
	if equalStatus(orig.Status, set.Status) {
		return nil
	}
	// A full update rather than a merge patch: zero values (0 masked slots) must be written
	// for the printer columns to show them.
	if err := r.Client.Status().Update(ctx, set); err != nil {
		return fmt.Errorf("update status of set %s: %w", set.Name, err)
	}
	return nil
}

// collectMasks gathers the masks every cell reports, in slot order: the set's view of what the
// gateways must not create packets in.
func collectMasks(cells map[string]*rpv1.RedPacketCell) []rpv1.MaskedSlotRange {
	var out []rpv1.MaskedSlotRange
	for _, c := range cells {
		out = append(out, c.Status.MaskedSlots...)
	}
	slices.SortFunc(out, func(a, b rpv1.MaskedSlotRange) int { return int(a.Start - b.Start) })
	return out
}

// readReaders asks every cell's control schema which epoch its issuing servers hold, and the
// highest epoch number any of them ever saw. A cell whose schema cannot be read is reported as
// such: the hand-over gate treats it as not holding anything.
func (r *SetReconciler) readReaders(ctx context.Context, cells map[string]*rpv1.RedPacketCell) ([]plan.CellReaders, int64) {
	type answer struct {
		servers  map[string]int64
		reported int64
	}
	var mu sync.Mutex
	answers := map[string]answer{}
	sorted := cellsByName(cells)
	failed := r.dbs.eachCell(ctx, r.Client, sorted, func(ctx context.Context, cell *rpv1.RedPacketCell, db *sql.DB) error {
		servers, err := control.IssuingReaders(ctx, db, control.DefaultSchema)
		if err != nil {
			return err
		}
		n, err := control.MaxReportedEpoch(ctx, db, control.DefaultSchema)
		if err != nil {
			return err
		}
		mu.Lock()
		answers[cell.Name] = answer{servers, n}
		mu.Unlock()
		return nil
	})
	out := make([]plan.CellReaders, 0, len(cells))
	var highest int64
	for _, cell := range sorted {
		cr := plan.CellReaders{Cell: cell.Name}
		if err, ok := failed[cell.Name]; ok {
			cr.Err = err.Error()
		} else {
			a := answers[cell.Name]
			cr.Servers = a.servers
			highest = max(highest, a.reported)
		}
		out = append(out, cr)
	}
	return out, highest
}

// announce writes e into the control schema of every cell that has not been told of it yet,
// and returns the cells it could not reach, with why.
func (r *SetReconciler) announce(ctx context.Context, cells map[string]*rpv1.RedPacketCell, e *routing.Epoch) []string {
	todo := r.behind(cells, r.announced, e.Number)
	failed := r.dbs.eachCell(ctx, r.Client, todo, func(ctx context.Context, cell *rpv1.RedPacketCell, db *sql.DB) error {
		if err := control.EnsureSchema(ctx, db, control.DefaultSchema); err != nil {
			return err
		}
		if err := control.Announce(ctx, db, control.DefaultSchema, e.Number, e.EffectiveTime); err != nil {
			return err
		}
		r.mark(&r.announced, cell, e.Number)
		return nil
	})
	return describeFailures(failed)
}

// publishToCells writes t into the control schema of every cell that does not hold its newest
// epoch yet, and returns the cells it could not reach, with why. Only once the set's status
// holds t: a server must never load an epoch the operator could still forget and plan
// differently.
func (r *SetReconciler) publishToCells(ctx context.Context, cells map[string]*rpv1.RedPacketCell, t *routing.Table) []string {
	latest := t.Latest().Number
	todo := r.behind(cells, r.published, latest)
	if len(todo) == 0 {
		return nil
	}
	data, err := t.Marshal()
	if err != nil {
		return []string{fmt.Sprintf("every cell (%v)", err)}
	}
	failed := r.dbs.eachCell(ctx, r.Client, todo, func(ctx context.Context, cell *rpv1.RedPacketCell, db *sql.DB) error {
		if err := control.PublishTable(ctx, db, control.DefaultSchema, latest, data); err != nil {
			return err
		}
		r.mark(&r.published, cell, latest)
		return nil
	})
	return describeFailures(failed)
}

// behind lists the cells that, by done, do not hold epoch number yet.
func (r *SetReconciler) behind(cells map[string]*rpv1.RedPacketCell, done map[types.UID]int64, number int64) []*rpv1.RedPacketCell {
	r.announcedMu.Lock()
	defer r.announcedMu.Unlock()
	var out []*rpv1.RedPacketCell
	for _, cell := range cellsByName(cells) {
		if done[cell.UID] < number {
			out = append(out, cell)
		}
	}
	return out
}

// mark records that cell holds epoch number in done (r.announced or r.published).
func (r *SetReconciler) mark(done *map[types.UID]int64, cell *rpv1.RedPacketCell, number int64) {
	r.announcedMu.Lock()
	defer r.announcedMu.Unlock()
	if *done == nil {
		*done = map[types.UID]int64{}
	}
	(*done)[cell.UID] = max((*done)[cell.UID], number)
}

// epochSettled asks the cells of an old epoch whether anything created under it is still
// unsettled. Packet IDs are time-ordered, so "created before next took effect" is "ID below the
// first ID of that second". A cell that cannot be asked counts as unsettled.
func (r *SetReconciler) epochSettled(ctx context.Context, set *rpv1.RedPacketSet) func(old, next *routing.Epoch) bool {
	return func(old, next *routing.Epoch) bool {
		boundary, err := ids.Compose(ids.Parts{Created: next.EffectiveTime})
		if err != nil {
			return false
		}
		for _, name := range old.Cells() {
			cell := &rpv1.RedPacketCell{}
			if err := r.Client.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: name}, cell); err != nil {
				// Gone although an epoch still names it: only a forced deletion removes a
				// cell that holds money, and its volume may still hold it. applyCells
				// recreates the cell on its retained volume, and the next check asks it.
				return false
			}
			cctx, cancel := r.dbs.bound(ctx)
			defer cancel()
			db, err := r.dbs.forCell(cctx, r.Client, cell)
			if err != nil {
				return false
			}
			n, err := unsettledBefore(cctx, db, boundary)
			if err != nil || n > 0 {
				return false
			}
		}
		return true
	}
}

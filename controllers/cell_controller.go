package controllers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

// CellReconciler provisions one cell's MySQL, servers (with memcached beside each), Services,
// credentials and PodDisruptionBudget, and derives the cell's conditions from them. A cell
// never looks at other cells or at its set's spec: everything it needs is in its own spec.
type CellReconciler struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// MaskPoll is how often a ready cell's error counts are read (0: 10 s).
	MaskPoll time.Duration
	// Workers is how many cells reconcile at once (0: defaultCellWorkers).
	Workers int

	// APIReader reads without the cache (the database history: see statusHistory).
	APIReader client.Reader
	// DatabaseAddr reaches a database instance (nil: the pod through the headless Service).
	DatabaseAddr DatabaseAddr

	dbs       *cellDBs // shared with the set reconciler
	databases cellDatabases
}

// The cell's finalizer is added and removed by patch.
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketcells,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=redpacket.dev,resources=redpacketcells/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=statefulsets;deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=services;configmaps;secrets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// SetupWithManager registers the reconciler and the children it owns.
func (r *CellReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.dbs == nil {
		r.dbs = &cellDBs{}
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.MaskPoll <= 0 {
		r.MaskPoll = defaultMaskPoll
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&rpv1.RedPacketCell{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Secret{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		// Pods belong to ReplicaSets and the StatefulSet, not to the cell: map them by label, so
		// a pod that starts crash-looping shows on its cell without waiting for a resync.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToCell)).
		Named("redpacketcell").
		// Cells are independent: one cell's slow database must hold one worker, not the
		// queue (a key is never reconciled by two workers at once).
		WithOptions(controller.Options{MaxConcurrentReconciles: workersOr(r.Workers, defaultCellWorkers)}).
		Complete(r)
}

// podToCell is the cell a pod of the operator's belongs to, by its cell label.
func podToCell(_ context.Context, o client.Object) []reconcile.Request {
	cell := o.GetLabels()[rpv1.LabelCell]
	if cell == "" || o.GetLabels()[rpv1.LabelManagedBy] != rpv1.ManagedByOperator {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: cell}}}
}

// Reconcile applies the cell's children in dependency order, then reports conditions. The
// status is written on every exit, error exits included, so a child the API server refuses
// shows on the cell (and rolls up to the set) instead of only in the operator's log.
func (r *CellReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cell := &rpv1.RedPacketCell{}
	if err := r.Client.Get(ctx, req.NamespacedName, cell); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := cell.DeepCopy()
	res, gone, err := r.reconcile(ctx, cell)
	if err != nil {
		err = fmt.Errorf("reconcile cell %s: %w", req.NamespacedName, err)
	}
	if !gone && !equalStatus(orig.Status, cell.Status) {
		if werr := r.Client.Status().Update(ctx, cell); werr != nil {
			err = errors.Join(err, fmt.Errorf("update status of cell %s: %w", req.NamespacedName, werr))
		}
	}
	return quietConflict(ctx, res, err)
}

// reconcile does the work of Reconcile on cell, leaving in its status what it found; gone says
// the finalizer was released, so there is no status left to write.
func (r *CellReconciler) reconcile(ctx context.Context, cell *rpv1.RedPacketCell) (_ ctrl.Result, gone bool, _ error) {
	var deletionHeld bool
	if !cell.DeletionTimestamp.IsZero() {
		held, err := r.finalizeCell(ctx, cell)
		if err != nil {
			setProvisionFailed(cell, rpv1.ReasonApplyFailed, fmt.Sprintf("finalize: %v", err))
			return ctrl.Result{}, false, fmt.Errorf("finalize: %w", err)
		}
		if !held {
			return ctrl.Result{}, true, nil
		}
		// Held: provision and observe as usual below, so the cell keeps serving and settles.
		deletionHeld = true
	} else if err := ensureFinalizer(ctx, r.Client, cell); err != nil {
		setProvisionFailed(cell, rpv1.ReasonApplyFailed, err.Error())
		return ctrl.Result{}, false, err
	}
	if errs := cell.Spec.StoredValueErrors(); len(errs) > 0 {
		// Stored before the CRD refused such values: nothing is applied from them, and the
		// cell says why. Its running children are left as they are.
		err := errors.Join(errs...)
		setProvisionFailed(cell, rpv1.ReasonInvalidSpec, err.Error())
		return ctrl.Result{}, false, reconcile.TerminalError(err)
	}
	phases := []struct {
		name string
		run  func() error
	}{
		{"credentials secret", func() error { return r.ensureCredentials(ctx, cell) }},
		{"cell configmap", func() error {
			cm, err := cellConfigMap(cell)
			if err != nil {
				return err
			}
			return r.apply(ctx, cm)
		}},
		{"mysql service", func() error { return r.apply(ctx, mysqlService(cell)) }},
		{"mysql statefulset", func() error { return r.apply(ctx, mysqlStatefulSet(cell)) }},
		{"server deployment", func() error { return r.apply(ctx, serverDeployment(cell)) }},
		{"server service", func() error { return r.apply(ctx, serverService(cell)) }},
		{"server pdb", func() error { return r.apply(ctx, serverPDB(cell)) }},
		{"mysql pdb", func() error { return r.apply(ctx, mysqlPDB(cell)) }},
	}
	var obs cellObservation
	var applyErr error
	for _, ph := range phases {
		if err := ph.run(); err != nil {
			// Children are applied in dependency order, so the rest waits; what exists is
			// still observed below, so the other conditions stay true.
			applyErr = fmt.Errorf("%s: %w", ph.name, err)
			obs.applyFailed = applyErr.Error()
			break
		}
	}
	var err error
	if obs.mysql, obs.servers, obs.pods, err = r.observe(ctx, cell); err != nil {
		setProvisionFailed(cell, rpv1.ReasonApplyFailed, fmt.Sprintf("observe children: %v", err))
		return ctrl.Result{}, false, errors.Join(applyErr, fmt.Errorf("observe: %w", err))
	}
	replicated := cell.MySQLInstances() > 1 && obs.mysql != nil
	if replicated {
		// Whatever the pods say: a lost primary is exactly when this must run.
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		d, err := r.reconcileDatabase(dctx, cell)
		cancel()
		obs.database = &d
		if err != nil {
			obs.databaseErr = err.Error()
			log.FromContext(ctx).Error(err, "database failover logic", "cell", cell.Name)
		}
	}
	decideCellStatus(cell, obs)
	if applyErr != nil {
		return ctrl.Result{}, false, applyErr
	}
	var result ctrl.Result
	if meta.IsStatusConditionTrue(cell.Status.Conditions, rpv1.CellDatabaseReady) {
		// Masking needs the database; its failure must not stop provisioning, so it is
		// reported and retried on the next poll.
		if err := r.reconcileMasks(ctx, cell, r.Now()); err != nil {
			log.FromContext(ctx).Error(err, "masking", "cell", cell.Name)
			EventMaskingFailed.emit(r.Recorder, cell, err)
		}
		result.RequeueAfter = r.MaskPoll
	}
	if replicated && (result.RequeueAfter == 0 || result.RequeueAfter > databasePoll) {
		result.RequeueAfter = databasePoll
	}
	if deletionHeld && (result.RequeueAfter == 0 || result.RequeueAfter > heldRecheck) {
		result.RequeueAfter = heldRecheck
	}
	return result, false, nil
}

// apply writes one child (applyChild); the error names the object, so the cell's Provisioned
// condition says which child the API server refused and why.
func (r *CellReconciler) apply(ctx context.Context, obj runtime.ApplyConfiguration) error {
	return applyChild(ctx, r.Client, obj)
}

// setProvisionFailed records a failure that stopped the reconcile before the children could
// be observed: Provisioned and Available say why, the other conditions keep their last value.
func setProvisionFailed(cell *rpv1.RedPacketCell, reason, msg string) {
	gen := cell.Generation
	for _, typ := range []string{rpv1.CellProvisioned, rpv1.CellAvailable} {
		meta.SetStatusCondition(&cell.Status.Conditions, metav1.Condition{Type: typ, Status: metav1.ConditionFalse, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	for _, typ := range []string{rpv1.CellDatabaseReady, rpv1.CellCacheReady, rpv1.CellServersReady} {
		if meta.FindStatusCondition(cell.Status.Conditions, typ) == nil {
			meta.SetStatusCondition(&cell.Status.Conditions, metav1.Condition{Type: typ, Status: metav1.ConditionUnknown, Reason: reason, Message: msg, ObservedGeneration: gen})
		}
	}
}

// ensureCredentials creates the cell's database credentials once. They are never logged and
// never overwritten: the database keeps the password it was initialised with. That database
// lives on a volume the StatefulSet retains when the cell goes (and which a recreated cell of
// the same name mounts again), so the Secret must live as long as the volume, not the cell:
// it has no owner reference, and one a cell had (older releases) is removed. Both are deleted
// together, by hand, once the volume is no longer wanted (docs/operator.md).
func (r *CellReconciler) ensureCredentials(ctx context.Context, cell *rpv1.RedPacketCell) error {
	s := &corev1.Secret{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLSecretName()}, s)
	if err == nil {
		return releaseFromCell(ctx, r.Client, s)
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get credentials: %w", err)
	}
	root, err := randomPassword()
	if err != nil {
		return err
	}
	app, err := randomPassword()
	if err != nil {
		return err
	}
	s = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: cell.MySQLSecretName(), Namespace: cell.Namespace, Labels: cellLabels(cell, rpv1.ComponentMySQL)},
		Type:       corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			"root-password": []byte(root),
			"user":          []byte("cellserver"),
			"password":      []byte(app),
		},
	}
	if err := r.Client.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create credentials: %w", err)
	}
	EventSecretGenerated.emit(r.Recorder, cell, s.Name)
	return nil
}

// releaseFromCell drops owner references to cells from a credentials Secret, so deleting the
// cell no longer garbage-collects the credentials of the volume it leaves behind.
func releaseFromCell(ctx context.Context, c client.Client, s *corev1.Secret) error {
	var keep []metav1.OwnerReference
	for _, ref := range s.OwnerReferences {
		if ref.Kind != "RedPacketCell" || ref.APIVersion != rpv1.GroupVersion.String() {
			keep = append(keep, ref)
		}
	}
	if len(keep) == len(s.OwnerReferences) {
		return nil
	}
	patch := client.MergeFromWithOptions(s.DeepCopy(), client.MergeFromWithOptimisticLock{})
	s.OwnerReferences = keep
	if err := c.Patch(ctx, s, patch); err != nil {
		return fmt.Errorf("release credentials %s from their cell: %w", s.Name, err)
	}
	return nil
}

func randomPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// cellObservation is what the cell's children report.
type cellObservation struct {
	mysql   *appsv1.StatefulSet // nil: not found
	servers *appsv1.Deployment  // nil: not found
	pods    []corev1.Pod        // the cell's pods (database and servers)
	// applyFailed is the phase and API error of a child that could not be written ("" when
	// every child was).
	applyFailed string
	// database is the failover logic's decision for a replicated cell (nil: one instance),
	// databaseErr why its steps could not all be carried out.
	database    *dbfailover.Decision
	databaseErr string
}

func (r *CellReconciler) observe(ctx context.Context, cell *rpv1.RedPacketCell) (*appsv1.StatefulSet, *appsv1.Deployment, []corev1.Pod, error) {
	var mysql *appsv1.StatefulSet
	sts := &appsv1.StatefulSet{}
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLName()}, sts); {
	case err == nil:
		mysql = sts
	case !apierrors.IsNotFound(err):
		return nil, nil, nil, fmt.Errorf("get StatefulSet %s/%s: %w", cell.Namespace, cell.MySQLName(), err)
	}
	var servers *appsv1.Deployment
	dep := &appsv1.Deployment{}
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.ServerName()}, dep); {
	case err == nil:
		servers = dep
	case !apierrors.IsNotFound(err):
		return nil, nil, nil, fmt.Errorf("get Deployment %s/%s: %w", cell.Namespace, cell.ServerName(), err)
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(cell.Namespace), client.MatchingLabels{rpv1.LabelCell: cell.Name, rpv1.LabelManagedBy: rpv1.ManagedByOperator}); err != nil {
		return nil, nil, nil, fmt.Errorf("list pods of cell %s/%s: %w", cell.Namespace, cell.Name, err)
	}
	return mysql, servers, pods.Items, nil
}

// decideCellStatus derives the cell's conditions from its children. It is pure. A pod is
// Ready only when both the server and its memcached sidecar are, so a ready server implies a
// ready cache beside it. A failure to provision (a child refused, pods the workload controller
// cannot create, a rollout past its deadline) wins over "not ready yet": it will not go away
// by waiting, and the set rolls it up as ProvisioningFailed.
func decideCellStatus(cell *rpv1.RedPacketCell, obs cellObservation) {
	st := &cell.Status
	gen := cell.Generation
	set := func(typ string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}

	var dbReady bool
	dbReason, dbMsg := "", ""
	switch {
	case obs.mysql == nil:
		dbReason, dbMsg = rpv1.ReasonDatabaseMissing, "database StatefulSet not created yet"
	case podsNotCreated(obs.mysql.Status.Conditions) != "":
		st.ReadyDatabases = obs.mysql.Status.ReadyReplicas
		dbReason, dbMsg = rpv1.ReasonPodsNotCreated, fmt.Sprintf("StatefulSet %s/%s cannot create its pods: %s", obs.mysql.Namespace, obs.mysql.Name, podsNotCreated(obs.mysql.Status.Conditions))
	case obs.database != nil:
		// Replicated: ready means a writable primary, whichever pod it is; the reason is the
		// failover logic's (Healthy, ReplicaMissing, PrimaryLost, FailoverBlocked, …).
		st.ReadyDatabases = obs.mysql.Status.ReadyReplicas
		dbReady = obs.database.Ready
		dbReason, dbMsg = obs.database.Reason, obs.database.Message
		if dbReason == "" {
			dbReason, dbMsg = rpv1.ReasonDatabaseNotReady, "the failover logic has not decided yet"
		}
		if trouble := podTrouble(obs.pods, rpv1.ComponentMySQL); !dbReady && trouble != "" {
			dbReason, dbMsg = rpv1.ReasonPodsFailing, fmt.Sprintf("StatefulSet %s/%s: %s (database: %s)", obs.mysql.Namespace, obs.mysql.Name, trimMessage(trouble, 400), dbMsg)
		}
		if obs.databaseErr != "" {
			dbMsg = strings.TrimSpace(dbMsg + "; last step failed: " + trimMessage(obs.databaseErr, 400))
		}
		set(rpv1.CellDatabaseReady, dbReady, dbReason, dbMsg)
	case obs.mysql.Status.ReadyReplicas < 1 && podTrouble(obs.pods, rpv1.ComponentMySQL) != "":
		st.ReadyDatabases = 0
		dbReason, dbMsg = rpv1.ReasonPodsFailing, fmt.Sprintf("StatefulSet %s/%s: %s", obs.mysql.Namespace, obs.mysql.Name, trimMessage(podTrouble(obs.pods, rpv1.ComponentMySQL), 400))
	case obs.mysql.Status.ReadyReplicas < 1:
		st.ReadyDatabases = 0
		dbReason, dbMsg = rpv1.ReasonDatabaseNotReady, fmt.Sprintf("primary %s is not ready", cell.MySQLPodName(0))
	default:
		dbReady = true
		st.ReadyDatabases = obs.mysql.Status.ReadyReplicas
		set(rpv1.CellDatabaseReady, true, rpv1.ReasonReady, fmt.Sprintf("%d/%d database pods ready", obs.mysql.Status.ReadyReplicas, ptrOr(obs.mysql.Spec.Replicas, 1)))
	}
	if !dbReady {
		set(rpv1.CellDatabaseReady, false, dbReason, dbMsg)
	}

	want := cell.Spec.Servers
	var serversReady bool
	srvReason, srvMsg := "", ""
	switch {
	case obs.servers == nil:
		st.Servers, st.ReadyServers = 0, 0
		srvReason, srvMsg = rpv1.ReasonServersMissing, "server Deployment not created yet"
		set(rpv1.CellCacheReady, false, rpv1.ReasonServersMissing, "memcached runs beside the servers, which do not exist yet")
	default:
		st.Servers, st.ReadyServers = obs.servers.Status.Replicas, obs.servers.Status.ReadyReplicas
		serversReady = st.ReadyServers >= want && want > 0 && obs.servers.Status.ObservedGeneration >= obs.servers.Generation
		name := obs.servers.Namespace + "/" + obs.servers.Name
		switch {
		case serversReady:
			set(rpv1.CellServersReady, true, rpv1.ReasonReady, fmt.Sprintf("%d/%d servers ready", st.ReadyServers, want))
		case podsNotCreated(obs.servers.Status.Conditions) != "":
			srvReason, srvMsg = rpv1.ReasonPodsNotCreated, fmt.Sprintf("Deployment %s cannot create its pods (%d/%d servers ready): %s", name, st.ReadyServers, want, podsNotCreated(obs.servers.Status.Conditions))
		case podTrouble(obs.pods, rpv1.ComponentServer) != "":
			srvReason, srvMsg = rpv1.ReasonPodsFailing, fmt.Sprintf("Deployment %s (%d/%d servers ready): %s", name, st.ReadyServers, want, trimMessage(podTrouble(obs.pods, rpv1.ComponentServer), 400))
		case rolloutStuck(obs.servers.Status.Conditions) != "":
			srvReason, srvMsg = rpv1.ReasonRolloutStuck, fmt.Sprintf("Deployment %s is past its progress deadline (%d/%d servers ready): %s", name, st.ReadyServers, want, rolloutStuck(obs.servers.Status.Conditions))
		default:
			srvReason, srvMsg = rpv1.ReasonServersNotReady, fmt.Sprintf("%d/%d servers ready", st.ReadyServers, want)
		}
		if st.ReadyServers > 0 {
			set(rpv1.CellCacheReady, true, rpv1.ReasonReady, fmt.Sprintf("memcached ready beside %d servers", st.ReadyServers))
		} else {
			set(rpv1.CellCacheReady, false, rpv1.ReasonCacheNotReady, "no server pod is ready, so no memcached sidecar is")
		}
	}
	if !serversReady {
		set(rpv1.CellServersReady, false, srvReason, srvMsg)
	}

	if obs.applyFailed != "" {
		set(rpv1.CellProvisioned, false, rpv1.ReasonApplyFailed, obs.applyFailed)
	} else {
		set(rpv1.CellProvisioned, true, rpv1.ReasonApplied, "every child is written")
	}

	switch {
	case obs.applyFailed != "":
		set(rpv1.CellAvailable, false, rpv1.ReasonApplyFailed, obs.applyFailed)
	case dbReason == rpv1.ReasonPodsNotCreated, dbReason == rpv1.ReasonPodsFailing:
		set(rpv1.CellAvailable, false, dbReason, dbMsg)
	case srvReason == rpv1.ReasonPodsNotCreated, srvReason == rpv1.ReasonRolloutStuck, srvReason == rpv1.ReasonPodsFailing:
		set(rpv1.CellAvailable, false, srvReason, srvMsg)
	case dbReady && serversReady:
		set(rpv1.CellAvailable, true, rpv1.ReasonReady, "database and servers ready")
	case !dbReady && obs.mysql == nil, !serversReady && obs.servers == nil:
		set(rpv1.CellAvailable, false, rpv1.ReasonDependenciesNotReady, "children are being created")
	case !dbReady && obs.database != nil:
		set(rpv1.CellAvailable, false, rpv1.ReasonDatabaseNotReady, fmt.Sprintf("database %s: %s", dbReason, dbMsg))
	case !dbReady:
		set(rpv1.CellAvailable, false, rpv1.ReasonDatabaseNotReady, fmt.Sprintf("database primary %s is not ready", cell.MySQLPodName(0)))
	default:
		set(rpv1.CellAvailable, false, rpv1.ReasonServersNotReady, fmt.Sprintf("%d/%d servers ready", st.ReadyServers, want))
	}
	// Stamped only when every child was written: a cell whose last reconcile failed has not
	// observed its generation.
	if obs.applyFailed == "" {
		st.ObservedGeneration = gen
	}
}

// podsNotCreated is the workload controller's account of pods it cannot create (a
// ReplicaFailure condition, e.g. FailedCreate when Pod Security or a quota refuses them), ""
// when there is none.
func podsNotCreated(conds any) string {
	for _, c := range workloadConditions(conds) {
		if c.typ == "ReplicaFailure" && c.status == corev1.ConditionTrue {
			return c.reason + ": " + c.message
		}
	}
	return ""
}

// rolloutStuck is a Deployment's Progressing=False (ProgressDeadlineExceeded) account, "" when
// it is progressing or done.
func rolloutStuck(conds any) string {
	for _, c := range workloadConditions(conds) {
		if c.typ == string(appsv1.DeploymentProgressing) && c.status == corev1.ConditionFalse {
			return c.reason + ": " + c.message
		}
	}
	return ""
}

type workloadCondition struct {
	typ     string
	status  corev1.ConditionStatus
	reason  string
	message string
}

// workloadConditions reads Deployment and StatefulSet conditions alike.
func workloadConditions(conds any) []workloadCondition {
	var out []workloadCondition
	switch cs := conds.(type) {
	case []appsv1.DeploymentCondition:
		for _, c := range cs {
			out = append(out, workloadCondition{string(c.Type), c.Status, c.Reason, c.Message})
		}
	case []appsv1.StatefulSetCondition:
		for _, c := range cs {
			out = append(out, workloadCondition{string(c.Type), c.Status, c.Reason, c.Message})
		}
	}
	return out
}

func ptrOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

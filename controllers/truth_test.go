package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// Issue 14 §2: every provisioning failure is a condition with a reason, rolled up to the set.

func truthSet(name, ns string, cells int32) *rpv1.RedPacketSet {
	return &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: rpv1.RedPacketSetSpec{
			Zones:          []string{"zone-a", "zone-b"},
			Cells:          cells,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			RebalanceDelay: &rpv1.Duration{Duration: 10 * time.Minute},
			Limits:         rpv1.PacketLimits{Expiry: &rpv1.Duration{Duration: time.Hour}},
		},
	}
}

func setCondition(t *testing.T, c client.Client, key types.NamespacedName, typ string) *metav1.Condition {
	t.Helper()
	cond := meta.FindStatusCondition(getSet(t, c, key).Status.Conditions, typ)
	if cond == nil {
		return &metav1.Condition{Type: typ}
	}
	return cond
}

func cellCondition(ctx context.Context, c client.Client, ns, name, typ string) (*metav1.Condition, error) {
	cell := &rpv1.RedPacketCell{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, cell); err != nil {
		return nil, err
	}
	cond := meta.FindStatusCondition(cell.Status.Conditions, typ)
	if cond == nil {
		return nil, fmt.Errorf("cell %s has no %s condition", name, typ)
	}
	return cond, nil
}

func createNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

// TestProvisioningFailuresAreConditions: a child the API server refuses (here an admission
// policy, as Pod Security or a quota would), and pods a workload's controller cannot create,
// each show on the cell with the object and the API's words, and on the set as Degraded and
// not Progressing — never as "up to date".
func TestProvisioningFailuresAreConditions(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	createNamespace(t, c, "refused")
	createNamespace(t, c, "forbidden-pods")
	createNamespace(t, c, "crashing-pods")
	// The API server's own CEL admission: no StatefulSet in namespace "refused".
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-statefulsets"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"statefulsets"}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "false", Message: "statefulsets are not allowed in this namespace by policy"}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "no-statefulsets"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy.Name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources:    &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "refused"}}},
		},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// The policy is loaded asynchronously: wait until it refuses.
	testenv.Eventually(t, 30*time.Second, "the admission policy refuses statefulsets", func() error {
		probe := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "refused"}, Spec: appsv1.StatefulSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}},
		}}
		err := c.Create(ctx, probe, client.DryRunAll)
		if err == nil || !strings.Contains(err.Error(), "not allowed in this namespace by policy") {
			return fmt.Errorf("dry-run create gave %v", err)
		}
		return nil
	})

	startManager(t, env, controllers.Options{OpenCellDB: noDatabase})

	t.Run("a refused child", func(t *testing.T) {
		set := truthSet("refused", "refused", 2)
		if err := c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		key := client.ObjectKeyFromObject(set)
		cellName := set.CellName(0)
		testenv.Eventually(t, 30*time.Second, "the cell names the refused StatefulSet and the API error", func() error {
			for _, typ := range []string{rpv1.CellProvisioned, rpv1.CellAvailable} {
				cond, err := cellCondition(ctx, c, set.Namespace, cellName, typ)
				if err != nil {
					return err
				}
				want := "apply StatefulSet refused/" + cellName + "-mysql"
				if cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonApplyFailed || !strings.Contains(cond.Message, want) ||
					!strings.Contains(cond.Message, "statefulsets are not allowed in this namespace by policy") {
					return fmt.Errorf("%s %s/%s %q, want False/ApplyFailed naming %s and the policy's message", typ, cond.Status, cond.Reason, cond.Message, want)
				}
			}
			return nil
		})
		testenv.Eventually(t, 30*time.Second, "the set rolls it up", func() error {
			d := setCondition(t, c, key, rpv1.SetDegraded)
			if d.Status != metav1.ConditionTrue || d.Reason != rpv1.ReasonProvisioningFailed || !strings.Contains(d.Message, cellName) || !strings.Contains(d.Message, "not allowed") {
				return fmt.Errorf("Degraded %s/%s %q", d.Status, d.Reason, d.Message)
			}
			p := setCondition(t, c, key, rpv1.SetProgressing)
			if p.Status != metav1.ConditionFalse || p.Reason != rpv1.ReasonProvisioningFailed || !strings.Contains(p.Message, cellName) {
				return fmt.Errorf("Progressing %s/%s %q", p.Status, p.Reason, p.Message)
			}
			return nil
		})
	})

	t.Run("pods the workload controller cannot create", func(t *testing.T) {
		set := truthSet("forbidden", "forbidden-pods", 1)
		key := client.ObjectKeyFromObject(set)
		cell := createOneCellSet(t, ctx, c, set, func(cell *rpv1.RedPacketCell) error { return markReady(ctx, c, cell, 0) })
		// What the deployment controller writes when Pod Security refuses every pod.
		const refusal = `pods "forbidden-cell-0-server-7d9f" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true`
		testenv.Eventually(t, 30*time.Second, "ReplicaFailure written", func() error {
			dep := &appsv1.Deployment{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell.ServerName()}, dep); err != nil {
				return err
			}
			dep.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue,
				Reason: "FailedCreate", Message: refusal, LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			return c.Status().Update(ctx, dep)
		})
		testenv.Eventually(t, 30*time.Second, "the cell says its servers' pods cannot be created", func() error {
			for _, typ := range []string{rpv1.CellServersReady, rpv1.CellAvailable} {
				cond, err := cellCondition(ctx, c, set.Namespace, cell.Name, typ)
				if err != nil {
					return err
				}
				if cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonPodsNotCreated || !strings.Contains(cond.Message, "Deployment forbidden-pods/"+cell.ServerName()) || !strings.Contains(cond.Message, refusal) {
					return fmt.Errorf("%s %s/%s %q", typ, cond.Status, cond.Reason, cond.Message)
				}
			}
			return nil
		})
		testenv.Eventually(t, 30*time.Second, "the set is degraded and not up to date", func() error {
			d := setCondition(t, c, key, rpv1.SetDegraded)
			p := setCondition(t, c, key, rpv1.SetProgressing)
			if d.Status != metav1.ConditionTrue || d.Reason != rpv1.ReasonProvisioningFailed || !strings.Contains(d.Message, "PodSecurity") {
				return fmt.Errorf("Degraded %s/%s %q", d.Status, d.Reason, d.Message)
			}
			if p.Reason == rpv1.ReasonUpToDate {
				return fmt.Errorf("Progressing %s/%s %q", p.Status, p.Reason, p.Message)
			}
			return nil
		})
		// The same for the database's StatefulSet.
		testenv.Eventually(t, 30*time.Second, "ReplicaFailure on the database", func() error {
			sts := &appsv1.StatefulSet{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell.MySQLName()}, sts); err != nil {
				return err
			}
			sts.Status.ReadyReplicas = 0
			sts.Status.Conditions = []appsv1.StatefulSetCondition{{Type: "ReplicaFailure", Status: corev1.ConditionTrue, Reason: "FailedCreate", Message: "exceeded quota: pods", LastTransitionTime: metav1.Now()}}
			return c.Status().Update(ctx, sts)
		})
		testenv.Eventually(t, 30*time.Second, "the cell says its database's pods cannot be created", func() error {
			cond, err := cellCondition(ctx, c, set.Namespace, cell.Name, rpv1.CellDatabaseReady)
			if err != nil {
				return err
			}
			if cond.Reason != rpv1.ReasonPodsNotCreated || !strings.Contains(cond.Message, "StatefulSet forbidden-pods/"+cell.MySQLName()) || !strings.Contains(cond.Message, "exceeded quota") {
				return fmt.Errorf("DatabaseReady %s/%s %q", cond.Status, cond.Reason, cond.Message)
			}
			return nil
		})
	})

	// A StatefulSet has no progress deadline: without looking at its pods, a database that
	// crash-loops reads "primary not ready" for ever.
	t.Run("pods that cannot start", func(t *testing.T) {
		set := truthSet("crashing", "crashing-pods", 1)
		key := client.ObjectKeyFromObject(set)
		cell := createOneCellSet(t, ctx, c, set, func(cell *rpv1.RedPacketCell) error {
			return c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell.MySQLName()}, &appsv1.StatefulSet{})
		})
		// What the StatefulSet controller and a kubelet would leave: the primary's pod, with
		// the cell's labels, its database container crash-looping after an OOM kill.
		sts := &appsv1.StatefulSet{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell.MySQLName()}, sts); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: set.Namespace, Name: cell.MySQLPodName(0), Labels: sts.Spec.Template.Labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "mysql", Image: "mariadb"}}}}
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "mysql", RestartCount: 7,
				State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 5m0s restarting failed container"}},
				LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "OOMKilled", ExitCode: 137}}}}}
		if err := c.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, "the cell names the pod, the container and the kubelet's reason", func() error {
			for _, typ := range []string{rpv1.CellDatabaseReady, rpv1.CellAvailable} {
				cond, err := cellCondition(ctx, c, set.Namespace, cell.Name, typ)
				if err != nil {
					return err
				}
				for _, want := range []string{cell.MySQLPodName(0), "container mysql", "CrashLoopBackOff", "OOMKilled"} {
					if cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonPodsFailing || !strings.Contains(cond.Message, want) {
						return fmt.Errorf("%s %s/%s %q (want %q)", typ, cond.Status, cond.Reason, cond.Message, want)
					}
				}
			}
			return nil
		})
		testenv.Eventually(t, 30*time.Second, "the set is degraded", func() error {
			d := setCondition(t, c, key, rpv1.SetDegraded)
			if d.Status != metav1.ConditionTrue || d.Reason != rpv1.ReasonProvisioningFailed || !strings.Contains(d.Message, "CrashLoopBackOff") {
				return fmt.Errorf("Degraded %s/%s %q", d.Status, d.Reason, d.Message)
			}
			return nil
		})
	})
}

// createOneCellSet creates set and waits for its one cell, until then(cell) succeeds.
func createOneCellSet(t *testing.T, ctx context.Context, c client.Client, set *rpv1.RedPacketSet, then func(*rpv1.RedPacketCell) error) rpv1.RedPacketCell {
	t.Helper()
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	var cell rpv1.RedPacketCell
	testenv.Eventually(t, 30*time.Second, "cell and children", func() error {
		cells, err := listCells(ctx, c, set)
		if err != nil || len(cells) != 1 {
			return fmt.Errorf("%d cells, %v", len(cells), err)
		}
		cell = cells[0]
		return then(&cell)
	})
	return cell
}

// setEvents lists the events regarding the set with reason, by the cell they are about.
func setEvents(ctx context.Context, c client.Client, set *rpv1.RedPacketSet, reason string) (map[string]string, error) {
	list := &eventsv1.EventList{}
	if err := c.List(ctx, list, client.InNamespace(set.Namespace)); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range list.Items {
		if e.Reason != reason || e.Regarding.Name != set.Name || e.Regarding.Kind != "RedPacketSet" {
			continue
		}
		related := ""
		if e.Related != nil {
			related = e.Related.Name
		}
		out[related] = e.Note
	}
	return out, nil
}

// TestEventsPerCell (issue 14 §2): the events recorder folds events of one object, reason and
// action into one series keeping the first message. Each cell's event names the cell as the
// related object, so four cells created are four events, and one cell's draining is not lost
// in another's.
func TestEventsPerCell(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	startManager(t, env, controllers.Options{OpenCellDB: noDatabase})
	set := truthSet("events", "default", 4)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "one CellCreated event per cell", func() error {
		got, err := setEvents(ctx, c, set, "CellCreated")
		if err != nil {
			return err
		}
		for i := range 4 {
			name := set.CellName(i)
			if note, ok := got[name]; !ok || !strings.Contains(note, "created cell "+name+" ") {
				return fmt.Errorf("CellCreated events by cell: %v; missing %s", got, name)
			}
		}
		return nil
	})
}

// TestCancelledScaleOutCellsAreDeleted (issue 14 §2): a scale-out cancelled before its epoch
// took effect leaves cells whose database never came up. No epoch that took effect ever gave
// them a slot, so they held no packet: they are deleted without asking their databases. A cell
// an epoch in force named keeps being held while its database cannot answer: money first.
func TestCancelledScaleOutCellsAreDeleted(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	var skew atomic.Int64
	startManager(t, env, controllers.Options{OpenCellDB: noDatabase, CellDBTimeout: time.Second,
		Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})

	set := truthSet("cancel", "default", 2)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)
	testenv.Eventually(t, 30*time.Second, "two cells, no never-routed proof on either (epoch 1 is in force)", func() error {
		cells, err := listCells(ctx, c, set)
		if err != nil || len(cells) != 2 {
			return fmt.Errorf("%d cells, %v", len(cells), err)
		}
		for _, cell := range cells {
			if _, ok := cell.Annotations[rpv1.AnnotationNeverRouted]; ok {
				return fmt.Errorf("cell %s of the epoch in force carries %s", cell.Name, rpv1.AnnotationNeverRouted)
			}
		}
		return nil
	})

	scale(t, ctx, c, set, 3)
	newCell := set.CellName(2)
	testenv.Eventually(t, 30*time.Second, "the new cell exists for the pending epoch, marked never-routed", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, cell); err != nil {
			return err
		}
		if cell.Annotations[rpv1.AnnotationNeverRouted] != "true" {
			return fmt.Errorf("annotations %v", cell.Annotations)
		}
		return nil
	})

	scale(t, ctx, c, set, 2) // cancelled 10 minutes before the epoch would take effect
	testenv.Eventually(t, 30*time.Second, "the cancelled cell is deleted", func() error {
		err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, &rpv1.RedPacketCell{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("cell %s still there: %v", newCell, err)
		}
		return nil
	})
	if held, _ := setEvents(ctx, c, set, "CellHeld"); len(held) > 0 {
		t.Errorf("CellHeld events for a cell that never held anything: %v", held)
	}
	for i := range 2 {
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(i)}, &rpv1.RedPacketCell{}); err != nil {
			t.Fatalf("cell %d must stay: %v", i, err)
		}
	}

	// Now a scale-out that takes effect: the proof goes as the epoch commits, and the cell
	// is held (its database cannot say it is empty) although the scale-out is then undone.
	scale(t, ctx, c, set, 3)
	testenv.Eventually(t, 30*time.Second, "the new cell exists again", func() error {
		return c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, &rpv1.RedPacketCell{})
	})
	skew.Store(int64(11 * time.Minute))
	touch(t, ctx, c, newCell)
	testenv.Eventually(t, 30*time.Second, "the proof is taken off once the epoch is in force", func() error {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, cell); err != nil {
			return err
		}
		if _, ok := cell.Annotations[rpv1.AnnotationNeverRouted]; ok {
			touch(t, ctx, c, newCell)
			return fmt.Errorf("%s still on %s", rpv1.AnnotationNeverRouted, newCell)
		}
		if s := getSet(t, c, key); len(s.Status.Routing.Epochs) < 2 {
			return fmt.Errorf("epochs %d", len(s.Status.Routing.Epochs))
		}
		return nil
	})
	before := getSet(t, c, key).Status.Routing.CurrentEpoch
	scale(t, ctx, c, set, 2)
	testenv.Eventually(t, 30*time.Second, "the scale-back epoch is planned", func() error {
		if n := getSet(t, c, key).Status.Routing.CurrentEpoch; n <= before {
			return fmt.Errorf("current epoch %d", n)
		}
		return nil
	})
	// Past the scale-back epoch: the cell owns no slot, but an epoch that was in force names
	// it and its database never answers, so nothing can show it empty: it stays, draining.
	skew.Store(int64(11*time.Minute + 30*time.Minute))
	testenv.Eventually(t, 30*time.Second, "the routed cell is kept, draining", func() error {
		touch(t, ctx, c, newCell)
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, cell); err != nil {
			return fmt.Errorf("the cell an epoch in force named was deleted: %v", err)
		}
		r := setCondition(t, c, key, rpv1.SetRebalancing)
		if r.Reason != rpv1.ReasonDrainingCells || !strings.Contains(r.Message, newCell) {
			return fmt.Errorf("Rebalancing %s/%s %q", r.Status, r.Reason, r.Message)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // give a wrong deletion the chance to happen
	if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: newCell}, &rpv1.RedPacketCell{}); err != nil {
		t.Fatalf("the cell an epoch in force named was deleted: %v", err)
	}
}

// startManagerWithHealth runs the controllers as the user of cfg with the operator's cache
// health check, which it returns.
// syncTimeout bounds how long its controllers wait for their caches, which is also how long
// stopping a manager that can never sync takes.
func startManagerWithHealth(t *testing.T, env *envtestutil.Env, cfg *rest.Config, syncTimeout time.Duration, opts ...controllers.Options) (manager.Manager, *controllers.CacheHealth) {
	t.Helper()
	health := controllers.NewCacheHealth()
	mgr, _ := runManager(t, env, cfg, func(o *ctrl.Options) {
		o.Cache.DefaultWatchErrorHandler = health.WatchErrorHandler
		o.Controller.CacheSyncTimeout = syncTimeout
	}, func(err error) { t.Logf("manager: %v", err) }, opts...) // a manager that can never sync ends with an error
	return mgr, health
}

func readyz(mgr manager.Manager, h *controllers.CacheHealth) error {
	req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
	return h.Checker(mgr.GetCache())(req)
}

// TestBadStoredValueDoesNotStallOtherSets (issue 14 §1): a set stored with rebalanceDelay
// "abc" (validation bypassed: the CRD's rule is taken out, the set written, the rule put back)
// decodes, gets a condition naming the field, and every other set is reconciled.
func TestBadStoredValueDoesNotStallOtherSets(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()

	scheme := envtestutil.Scheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	crds, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	crdKey := types.NamespacedName{Name: "redpacketsets.redpacket.dev"}
	if err := crds.Get(ctx, crdKey, crd); err != nil {
		t.Fatal(err)
	}
	orig := crd.DeepCopy()
	spec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	delay := spec.Properties["rebalanceDelay"]
	delay.Pattern, delay.XValidations = "", nil
	spec.Properties["rebalanceDelay"] = delay
	crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"] = spec
	if err := crds.Update(ctx, crd); err != nil {
		t.Fatal(err)
	}
	bad := unstructuredOf(t, truthSet("bad", "default", 1))
	if err := unstructured.SetNestedField(bad.Object, "abc", "spec", "rebalanceDelay"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the set with rebalanceDelay abc stored", func() error { return c.Create(ctx, bad.DeepCopy()) })
	testenv.Eventually(t, 30*time.Second, "the CRD's rule restored", func() error {
		cur := &apiextensionsv1.CustomResourceDefinition{}
		if err := crds.Get(ctx, crdKey, cur); err != nil {
			return err
		}
		cur.Spec = orig.Spec
		if err := crds.Update(ctx, cur); err != nil {
			return err
		}
		probe := unstructuredOf(t, truthSet("probe", "default", 1))
		_ = unstructured.SetNestedField(probe.Object, "abc", "spec", "rebalanceDelay")
		if err := c.Create(ctx, probe, client.DryRunAll); err == nil {
			return errors.New("rebalanceDelay abc still accepted")
		}
		return nil
	})

	mgr, health := startManagerWithHealth(t, env, env.Config, 2*time.Minute, controllers.Options{OpenCellDB: noDatabase})
	good := truthSet("good", "default", 2)
	if err := c.Create(ctx, good); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the good set is reconciled", func() error {
		cells, err := listCells(ctx, c, good)
		if err != nil || len(cells) != 2 {
			return fmt.Errorf("%d cells, %v", len(cells), err)
		}
		if s := getSet(t, c, client.ObjectKeyFromObject(good)); s.Status.ObservedGeneration != s.Generation {
			return fmt.Errorf("good set not observed")
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, "the bad set gets a condition naming the field", func() error {
		d := setCondition(t, c, types.NamespacedName{Namespace: "default", Name: "bad"}, rpv1.SetDegraded)
		if d.Status != metav1.ConditionTrue || d.Reason != rpv1.ReasonInvalidSpec || !strings.Contains(d.Message, `spec.rebalanceDelay: "abc" is not a duration`) {
			return fmt.Errorf("Degraded %s/%s %q", d.Status, d.Reason, d.Message)
		}
		return nil
	})
	// The stored value is kept as written: the operator's status writes do not rewrite it.
	stored := &unstructured.Unstructured{}
	stored.SetGroupVersionKind(rpv1.GroupVersion.WithKind("RedPacketSet"))
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "bad"}, stored); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := unstructured.NestedString(stored.Object, "spec", "rebalanceDelay"); v != "abc" {
		t.Errorf("stored rebalanceDelay became %q", v)
	}
	testenv.Eventually(t, 30*time.Second, "ready: every informer lists", func() error { return readyz(mgr, health) })
}

// TestReadyzReflectsAManagerThatCannotList: with a cache (the manager's, configured as the
// operator's main does) whose user has no RBAC, the informers cannot list; the readiness
// check says so, naming the error (it answered 200 before).
func TestReadyzReflectsAManagerThatCannotList(t *testing.T) {
	env := startEnv(t)
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:default:nobody", Groups: []string{"system:authenticated"}}
	health := controllers.NewCacheHealth()
	cc, err := cache.New(cfg, cache.Options{Scheme: env.Scheme, ByObject: controllers.CacheByObject(), DefaultWatchErrorHandler: health.WatchErrorHandler})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, obj := range []client.Object{&rpv1.RedPacketSet{}, &rpv1.RedPacketCell{}} {
		if _, err := cc.GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = cc.Start(ctx) }()
	check := health.Checker(cc)
	req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
	testenv.Eventually(t, 30*time.Second, "unready naming the failed list", func() error {
		err := check(req)
		if err == nil {
			return errors.New("ready although nothing can be listed")
		}
		if !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "RedPacketSet") {
			return fmt.Errorf("readyz: %v (want the list's forbidden error)", err)
		}
		return nil
	})
}

func unstructuredOf(t *testing.T, set *rpv1.RedPacketSet) *unstructured.Unstructured {
	t.Helper()
	set.APIVersion, set.Kind = rpv1.GroupVersion.String(), "RedPacketSet"
	u := &unstructured.Unstructured{}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(set)
	if err != nil {
		t.Fatal(err)
	}
	u.Object = m
	unstructured.RemoveNestedField(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u
}

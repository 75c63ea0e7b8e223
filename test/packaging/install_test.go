package packaging

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

const fieldOwner = client.FieldOwner("packaging-test")

// install is what a packaged install put into the cluster, as the tests look it up.
type install struct {
	namespace      string // where the operator runs
	serviceAccount string
	deployment     string
	metricsService string
	clusterRole    string
	leaderRole     string
}

// TestKustomizeInstallsIntoAPIServer is `kubectl apply --server-side -k config/default`.
func TestKustomizeInstallsIntoAPIServer(t *testing.T) {
	objs, err := renderKustomize(filepath.Join(configDir, "default"))
	if err != nil {
		t.Fatal(err)
	}
	c, cfg := startAPIServer(t)
	applyAll(t, c, objs)
	checkInstall(t, c, cfg, objs, install{
		namespace:      "redpacket-system",
		serviceAccount: "redpacket-operator",
		deployment:     "redpacket-operator",
		metricsService: "redpacket-operator-metrics",
		clusterRole:    "redpacket-operator",
		leaderRole:     "redpacket-operator-leader-election",
	}, false)
}

// TestHelmChartInstallsIntoAPIServer is `helm template rp charts/redpacket-operator -n rp-system
// | kubectl apply --server-side -f -` after creating the namespace, as `helm install
// --create-namespace` would.
func TestHelmChartInstallsIntoAPIServer(t *testing.T) {
	objs, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName("rp-system")
	// Hold the chart's defaults to the restricted Pod Security profile, as config/default's
	// namespace does.
	ns.SetLabels(map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	c, cfg := startAPIServer(t)
	applyAll(t, c, append([]*unstructured.Unstructured{ns}, objs...))
	checkInstall(t, c, cfg, objs, install{
		namespace:      "rp-system",
		serviceAccount: "rp-redpacket-operator",
		deployment:     "rp-redpacket-operator",
		metricsService: "rp-redpacket-operator-metrics",
		clusterRole:    "rp-redpacket-operator",
		leaderRole:     "rp-redpacket-operator-leader-election",
	}, true)
}

// startAPIServer runs a control plane of its own without any CRD, so the install under test
// is what creates them; each install gets its own, so cluster-scoped names never collide.
func startAPIServer(t *testing.T) (client.Client, *rest.Config) {
	t.Helper()
	env := &envtest.Environment{BinaryAssetsDirectory: envtestutil.Assets(t)}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stop envtest: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c, cfg
}

func scheme() *runtime.Scheme {
	s := envtestutil.Scheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// applyOrder is the order kubectl and Helm create kinds in: what others refer to first.
var applyOrder = map[string]int{
	"CustomResourceDefinition": 0,
	"Namespace":                1,
	"ServiceAccount":           2,
	"ClusterRole":              3,
	"ClusterRoleBinding":       4,
	"Role":                     5,
	"RoleBinding":              6,
	"Service":                  7,
	"Deployment":               8,
}

// applyAll server-side applies objs in dependency order and waits for the CRDs to be
// established, as a real install must before any RedPacketSet can be created.
func applyAll(t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	sorted := append([]*unstructured.Unstructured(nil), objs...)
	for _, o := range sorted {
		if _, ok := applyOrder[o.GetKind()]; !ok {
			t.Fatalf("the install renders a %s (%s), which this test does not know how to order", o.GetKind(), o.GetName())
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool { return applyOrder[sorted[i].GetKind()] < applyOrder[sorted[j].GetKind()] })
	for _, o := range sorted {
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o.DeepCopy()), fieldOwner, client.ForceOwnership); err != nil {
			t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	for _, o := range byKind(objs, "CustomResourceDefinition") {
		testenv.Eventually(t, 60*time.Second, "CRD "+o.GetName()+" established", func() error {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.Get(ctx, client.ObjectKey{Name: o.GetName()}, &crd); err != nil {
				return err
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
			return fmt.Errorf("not established: %v", crd.Status.Conditions)
		})
	}
}

func checkInstall(t *testing.T, c client.Client, cfg *rest.Config, objs []*unstructured.Unstructured, in install, helm bool) {
	t.Helper()
	ctx := context.Background()

	// Every rendered object is in the API server as rendered.
	for _, o := range objs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Errorf("%s %s/%s not installed: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	for name := range crdBases(t) {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
			t.Errorf("CRD %s: %v", name, err)
			continue
		}
		if helm && crd.Annotations[keepAnnotation] != "keep" {
			t.Errorf("CRD %s installed by Helm lacks %s: keep", name, keepAnnotation)
		}
	}
	for _, k := range []struct {
		obj  client.Object
		name string
	}{
		{&corev1.ServiceAccount{}, in.serviceAccount},
		{&corev1.Service{}, in.metricsService},
	} {
		if err := c.Get(ctx, client.ObjectKey{Namespace: in.namespace, Name: k.name}, k.obj); err != nil {
			t.Errorf("%T %s/%s: %v", k.obj, in.namespace, k.name, err)
		}
	}
	dep := one(t, objs, "Deployment")
	if dep.GetName() != in.deployment || dep.GetNamespace() != in.namespace {
		t.Errorf("Deployment is %s/%s, want %s/%s", dep.GetNamespace(), dep.GetName(), in.namespace, in.deployment)
	}
	checkPodSecurity(t, c, in)

	// The bindings really grant the operator's ServiceAccount what the controllers need, and
	// no more than that: ask the API server's authorizer.
	user := fmt.Sprintf("system:serviceaccount:%s:%s", in.namespace, in.serviceAccount)
	for _, a := range []struct {
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{authorizationv1.ResourceAttributes{Namespace: "payments", Verb: "create", Group: "apps", Resource: "statefulsets"}, true},
		{authorizationv1.ResourceAttributes{Namespace: "payments", Verb: "watch", Group: "redpacket.dev", Resource: "redpacketcells"}, true},
		{authorizationv1.ResourceAttributes{Namespace: "payments", Verb: "patch", Group: "redpacket.dev", Resource: "redpacketsets", Subresource: "status"}, true},
		{authorizationv1.ResourceAttributes{Namespace: "payments", Verb: "create", Group: "policy", Resource: "poddisruptionbudgets"}, true},
		{authorizationv1.ResourceAttributes{Namespace: in.namespace, Verb: "update", Group: "coordination.k8s.io", Resource: "leases"}, true},
		{authorizationv1.ResourceAttributes{Namespace: "kube-system", Verb: "update", Group: "coordination.k8s.io", Resource: "leases"}, false},
		{authorizationv1.ResourceAttributes{Verb: "delete", Resource: "nodes"}, false},
		{authorizationv1.ResourceAttributes{Namespace: "payments", Verb: "create", Resource: "pods", Subresource: "exec"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"}, false},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: &a.attrs}}
		if err := c.Create(ctx, sar); err != nil {
			t.Fatalf("subject access review: %v", err)
		}
		if sar.Status.Allowed != a.want {
			t.Errorf("%s may %s %s/%s in %q: %v, want %v (%s)", in.serviceAccount, a.attrs.Verb, a.attrs.Resource, a.attrs.Subresource,
				a.attrs.Namespace, sar.Status.Allowed, a.want, sar.Status.Reason)
		}
	}

	runOperatorAs(t, c, cfg, user, in.namespace)
}

// checkPodSecurity creates (dry run) a pod from the installed Deployment's template in the
// operator's namespace, which enforces the restricted Pod Security profile: envtest has no
// kubelet, but Pod Security admission runs in the API server. A privileged twin must be
// refused, or the check proves nothing.
func checkPodSecurity(t *testing.T, c client.Client, in install) {
	t.Helper()
	ctx := context.Background()
	var ns corev1.Namespace
	if err := c.Get(ctx, client.ObjectKey{Name: in.namespace}, &ns); err != nil {
		t.Fatal(err)
	}
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Fatalf("namespace %s enforces Pod Security %q, want restricted", in.namespace, got)
	}
	var dep appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: in.namespace, Name: in.deployment}, &dep); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "pod-security-check-", Namespace: in.namespace, Labels: dep.Spec.Template.Labels},
		Spec:       *dep.Spec.Template.Spec.DeepCopy(),
	}
	if err := c.Create(ctx, pod.DeepCopy(), client.DryRunAll); err != nil {
		t.Errorf("the manager pod is refused in namespace %s: %v", in.namespace, err)
	}
	pod.Spec.Containers[0].SecurityContext.Privileged = ptr.To(true)
	pod.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
	if err := c.Create(ctx, pod, client.DryRunAll); err == nil {
		t.Errorf("a privileged pod was admitted in %s: Pod Security is not enforced, so the check above proves nothing", in.namespace)
	}
}

// runOperatorAs runs the operator's controllers with the installed ServiceAccount's
// identity (impersonated: envtest has no kubelet to run the Deployment), with leader election
// in the install's namespace as the Deployment's flags ask, and checks that the sample set is
// expanded: a missing RBAC rule shows up as a forbidden list, watch or write here.
func runOperatorAs(t *testing.T, c client.Client, cfg *rest.Config, user, namespace string) {
	t.Helper()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	asOperator := rest.CopyConfig(cfg)
	asOperator.Impersonate = rest.ImpersonationConfig{UserName: user}
	mgr, err := ctrl.NewManager(asOperator, ctrl.Options{
		Scheme: envtestutil.Scheme(),
		// Both install tests run the controllers in one process.
		Controller:              config.Controller{SkipNameValidation: ptr.To(true)},
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:  "0",
		LeaderElection:          true,
		LeaderElectionID:        "redpacket-operator.redpacket.dev",
		LeaderElectionNamespace: namespace,
	})
	if err != nil {
		t.Fatal(err)
	}
	// envtest runs no database: refuse at once rather than resolve the cells' Service names
	// through the machine's resolver, which a test must not send lookups to.
	noDatabase := func(_ context.Context, cell *rpv1.RedPacketCell, _ *corev1.Secret) (*sql.DB, error) {
		return nil, fmt.Errorf("dial %s: no database in envtest", cell.MySQLName())
	}
	if err := controllers.Setup(mgr, controllers.Options{OpenCellDB: noDatabase}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	samples := readYAMLFile(t, filepath.Join(configDir, "samples", "redpacket_v1alpha1_redpacketset.yaml"))
	sample := one(t, samples, "RedPacketSet")
	appNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments"}}
	if err := c.Create(ctx, appNS); err != nil {
		t.Fatal(err)
	}
	sample.SetNamespace(appNS.Name)
	if err := c.Create(ctx, sample); err != nil {
		t.Fatalf("create the sample RedPacketSet: %v", err)
	}
	wantCells := nested(t, sample, "spec", "cells")
	testenv.Eventually(t, 60*time.Second, "the operator running as "+user+" expands the sample set", func() error {
		var set rpv1.RedPacketSet
		if err := c.Get(ctx, client.ObjectKeyFromObject(sample), &set); err != nil {
			return err
		}
		if fmt.Sprint(set.Status.Cells) != fmt.Sprint(wantCells) || set.Status.ObservedGeneration != set.Generation {
			return fmt.Errorf("status cells %d of %v, observedGeneration %d of %d, conditions %v",
				set.Status.Cells, wantCells, set.Status.ObservedGeneration, set.Generation, set.Status.Conditions)
		}
		if cond := meta.FindStatusCondition(set.Status.Conditions, rpv1.SetAvailable); cond == nil {
			return fmt.Errorf("no Available condition yet")
		}
		var cells rpv1.RedPacketCellList
		if err := c.List(ctx, &cells, client.InNamespace(appNS.Name)); err != nil {
			return err
		}
		if fmt.Sprint(len(cells.Items)) != fmt.Sprint(wantCells) {
			return fmt.Errorf("%d cells, want %v", len(cells.Items), wantCells)
		}
		// The cell reconciler needs StatefulSets, Secrets, Deployments, Services and PDBs.
		for _, cell := range cells.Items {
			if cell.Status.ObservedGeneration != cell.Generation {
				return fmt.Errorf("cell %s not reconciled: %v", cell.Name, cell.Status.Conditions)
			}
		}
		return nil
	})
	testenv.Eventually(t, 60*time.Second, "the leader election lease in "+namespace, func() error {
		lease := &unstructured.Unstructured{}
		lease.SetAPIVersion("coordination.k8s.io/v1")
		lease.SetKind("Lease")
		return c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "redpacket-operator.redpacket.dev"}, lease)
	})
}

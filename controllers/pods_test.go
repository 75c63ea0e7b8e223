package controllers_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// podTemplates are the pod templates of every workload the operator made for set: the
// gateway, and per cell the servers and the database.
func podTemplates(ctx context.Context, c client.Client, set *rpv1.RedPacketSet) (map[string]corev1.PodTemplateSpec, error) {
	out := map[string]corev1.PodTemplateSpec{}
	deps := &appsv1.DeploymentList{}
	if err := c.List(ctx, deps, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
		return nil, err
	}
	for _, d := range deps.Items {
		out["Deployment/"+d.Name] = d.Spec.Template
	}
	stss := &appsv1.StatefulSetList{}
	if err := c.List(ctx, stss, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
		return nil, err
	}
	for _, s := range stss.Items {
		out["StatefulSet/"+s.Name] = s.Spec.Template
	}
	return out, nil
}

func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
}

// restrictedSet is a one-zone, 2-cell set in a namespace that enforces the restricted Pod
// Security profile, with nothing set that the operator must default (no resources).
func restrictedSet(t *testing.T, ctx context.Context, c client.Client) *rpv1.RedPacketSet {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "restricted", Labels: map[string]string{
		psaapi.EnforceLevelLabel: string(psaapi.LevelRestricted),
	}}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "pods", Namespace: ns.Name},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a"},
			Cells:    2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
		},
	}
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "gateway and both cells' workloads", func() error {
		tpls, err := podTemplates(ctx, c, set)
		if err != nil {
			return err
		}
		if len(tpls) != 5 {
			return fmt.Errorf("%d workloads, want a gateway and 2 servers and 2 databases", len(tpls))
		}
		return nil
	})
	return set
}

// TestChildPodsRunOnARealCluster checks the pod specs the operator writes against what a real
// kubelet and the Pod Security admission do with them (envtest runs neither).
func TestChildPodsRunOnARealCluster(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	startManager(t, env)
	set := restrictedSet(t, ctx, c)
	tpls, err := podTemplates(ctx, c, set)
	if err != nil {
		t.Fatal(err)
	}
	cells, err := listCells(ctx, c, set)
	if err != nil || len(cells) != 2 {
		t.Fatalf("cells %d: %v", len(cells), err)
	}

	t.Run("every pod is admitted under the namespace's enforced profile", func(t *testing.T) {
		ns := &corev1.Namespace{}
		if err := c.Get(ctx, types.NamespacedName{Name: set.Namespace}, ns); err != nil {
			t.Fatal(err)
		}
		level, err := psaapi.ParseLevel(ns.Labels[psaapi.EnforceLevelLabel])
		if err != nil || level != psaapi.LevelRestricted {
			t.Fatalf("namespace enforces %q (%v)", ns.Labels[psaapi.EnforceLevelLabel], err)
		}
		eval, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
		if err != nil {
			t.Fatal(err)
		}
		lv := psaapi.LevelVersion{Level: level, Version: psaapi.LatestVersion()}
		for name, tpl := range tpls {
			res := psapolicy.AggregateCheckResults(eval.EvaluatePod(lv, &tpl.ObjectMeta, &tpl.Spec))
			if !res.Allowed {
				t.Errorf("%s is forbidden under %s: %s: %s", name, level, res.ForbiddenReason(), res.ForbiddenDetail())
			}
		}
	})

	t.Run("no probe names a host and memcached is checked from inside the pod", func(t *testing.T) {
		for name, tpl := range tpls {
			for _, ctr := range allContainers(&tpl.Spec) {
				for kind, p := range map[string]*corev1.Probe{"readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe, "startup": ctr.StartupProbe} {
					if p == nil {
						continue
					}
					if (p.TCPSocket != nil && p.TCPSocket.Host != "") || (p.HTTPGet != nil && p.HTTPGet.Host != "") {
						t.Errorf("%s container %s: %s probe dials a host (the kubelet's, not the pod's)", name, ctr.Name, kind)
					}
				}
			}
		}
		for _, cell := range cells {
			spec := tpls["Deployment/"+cell.ServerName()].Spec
			var server, mc *corev1.Container
			for i := range spec.Containers {
				switch spec.Containers[i].Name {
				case "cellserver":
					server = &spec.Containers[i]
				case "memcached":
					mc = &spec.Containers[i]
				}
			}
			if server == nil || mc == nil {
				t.Fatalf("%s lacks the server or the memcached container", cell.ServerName())
			}
			// memcached listens on the pod's loopback only, which no kubelet probe reaches:
			// the server's /readyz asks it, so the pod is Ready only with a cache beside it.
			if !hasArg(server.Args, "-ready-memcached") {
				t.Errorf("%s: the server's readiness does not include memcached: %v", cell.ServerName(), server.Args)
			}
			if p := mc.ReadinessProbe; p != nil && p.Exec == nil {
				t.Errorf("%s: memcached has a network readiness probe the kubelet cannot reach: %+v", cell.ServerName(), p)
			}
		}
	})

	t.Run("the cell server starts behind a startup probe", func(t *testing.T) {
		// cmd/cellserver waits up to 2 min for its database, then up to 10 min creating its
		// schema, before it listens.
		const startBudget = 12 * time.Minute
		for _, cell := range cells {
			spec := tpls["Deployment/"+cell.ServerName()].Spec
			p := spec.Containers[0].StartupProbe
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
				t.Fatalf("%s: no /healthz startup probe: %+v", cell.ServerName(), p)
			}
			if got := probeBudget(p); got < startBudget {
				t.Errorf("%s: startup probe gives up after %s, the server may take %s", cell.ServerName(), got, startBudget)
			}
			if l := spec.Containers[0].LivenessProbe; l == nil || probeBudget(l) > time.Minute {
				t.Errorf("%s: liveness must stay quick once started: %+v", cell.ServerName(), l)
			}
		}
	})

	t.Run("the database starts behind a startup probe", func(t *testing.T) {
		for _, cell := range cells {
			spec := tpls["StatefulSet/"+cell.MySQLName()].Spec
			p := spec.Containers[0].StartupProbe
			if p == nil || p.Exec == nil || !strings.Contains(strings.Join(p.Exec.Command, " "), "--innodb_initialized") {
				t.Fatalf("%s: no startup probe waiting for InnoDB: %+v", cell.MySQLName(), p)
			}
			if got := probeBudget(p); got < 10*time.Minute {
				t.Errorf("%s: startup probe gives up after %s; a big volume's first start takes longer", cell.MySQLName(), got)
			}
		}
	})

	t.Run("credentials never reach a command line", func(t *testing.T) {
		for _, cell := range cells {
			sec := &corev1.Secret{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: cell.MySQLSecretName()}, sec); err != nil {
				t.Fatal(err)
			}
			for name, tpl := range tpls {
				for _, ctr := range allContainers(&tpl.Spec) {
					secretVars := map[string]bool{}
					for _, e := range ctr.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Key != "user" {
							secretVars[e.Name] = true
						}
					}
					argv := strings.Join(append(append([]string{}, ctr.Command...), ctr.Args...), " ")
					for _, key := range []string{"password", "root-password"} {
						if strings.Contains(argv, string(sec.Data[key])) {
							t.Errorf("%s container %s: the %s is spelled out in argv", name, ctr.Name, key)
						}
					}
					// $(VAR) is expanded by the kubelet into the process's argv.
					for _, m := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(argv, -1) {
						if secretVars[m[1]] {
							t.Errorf("%s container %s: secret variable %s is expanded into argv: %s", name, ctr.Name, m[1], argv)
						}
					}
				}
			}
		}
	})

	t.Run("every container requests resources", func(t *testing.T) {
		for name, tpl := range tpls {
			for _, ctr := range allContainers(&tpl.Spec) {
				for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					if _, ok := ctr.Resources.Requests[r]; !ok {
						t.Errorf("%s container %s requests no %s (BestEffort is evicted first)", name, ctr.Name, r)
					}
				}
			}
		}
	})

	t.Run("the gateway and the databases have disruption budgets", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "PDBs", func() error {
			want := map[string]metav1.Object{set.GatewayName(): set}
			for i := range cells {
				want[cells[i].MySQLName()] = &cells[i]
			}
			for name, owner := range want {
				pdb := &policyv1.PodDisruptionBudget{}
				if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: name}, pdb); err != nil {
					return err
				}
				kind := "RedPacketCell"
				if owner == metav1.Object(set) {
					kind = "RedPacketSet"
				}
				if err := ownedBy(pdb, owner, kind); err != nil {
					return err
				}
				sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
				if err != nil {
					return err
				}
				if owner == metav1.Object(set) {
					tpl := tpls["Deployment/"+name]
					if !sel.Matches(labels.Set(tpl.Labels)) || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
						return fmt.Errorf("gateway PDB %s (maxUnavailable %v) does not let one gateway of its pods go at a time", sel, pdb.Spec.MaxUnavailable)
					}
					continue
				}
				// The servers write to pod 0 only: that pod is the one a drain must not take.
				tpl := tpls["StatefulSet/"+name]
				pod := func(i int) labels.Set {
					l := labels.Set{appsv1.StatefulSetPodNameLabel: fmt.Sprintf("%s-%d", name, i)}
					for k, v := range tpl.Labels {
						l[k] = v
					}
					return l
				}
				if !sel.Matches(pod(0)) || sel.Matches(pod(1)) || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
					return fmt.Errorf("database PDB %s (minAvailable %v) does not hold the primary %s-0", sel, pdb.Spec.MinAvailable, name)
				}
			}
			return nil
		})
	})
}

func hasArg(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || a == flag+"=true" {
			return true
		}
	}
	return false
}

// probeBudget is how long a probe may fail before the kubelet acts on it.
func probeBudget(p *corev1.Probe) time.Duration {
	period, threshold := p.PeriodSeconds, p.FailureThreshold
	if period == 0 {
		period = 10
	}
	if threshold == 0 {
		threshold = 3
	}
	return time.Duration(p.InitialDelaySeconds+period*threshold) * time.Second
}

// TestManagerCachesOnlyItsOwnObjects: the manager's informers hold the objects it labelled,
// not every Secret (or ConfigMap, or Pod) in the cluster.
func TestManagerCachesOnlyItsOwnObjects(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	mgr, _ := startManagerWith(t, env, env.Config)
	foreign := []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-token", Namespace: "default"}, StringData: map[string]string{"token": "not-yours"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-config", Namespace: "default"}, Data: map[string]string{"k": "v"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-pod", Namespace: "default"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
	}
	for _, o := range foreign {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// Created after the foreign ones: once the cache shows these, it has seen the others.
	ours := []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ours", Namespace: "default", Labels: map[string]string{rpv1.LabelManagedBy: rpv1.ManagedByOperator}}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "ours", Namespace: "default", Labels: map[string]string{rpv1.LabelManagedBy: rpv1.ManagedByOperator}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ours", Namespace: "default", Labels: map[string]string{rpv1.LabelManagedBy: rpv1.ManagedByOperator}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
	}
	for _, o := range ours {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range ours {
		testenv.Eventually(t, 30*time.Second, "cache holds "+o.GetName(), func() error {
			return mgr.GetCache().Get(ctx, client.ObjectKeyFromObject(o), o.DeepCopyObject().(client.Object))
		})
	}
	for _, o := range foreign {
		err := mgr.GetCache().Get(ctx, client.ObjectKeyFromObject(o), o.DeepCopyObject().(client.Object))
		if !apierrors.IsNotFound(err) {
			t.Errorf("the manager's cache holds %T %s, which it does not own (err %v)", o, o.GetName(), err)
		}
	}
}

// TestOperatorRunsWithItsOwnRole runs the manager as a service account bound to exactly the
// generated ClusterRole (config/rbac/role.yaml, which the chart copies): a set still gets
// every child, and the role grants nothing beyond the objects the operator owns.
func TestOperatorRunsWithItsOwnRole(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join(envtestutil.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(raw, role); err != nil {
		t.Fatal(err)
	}
	const ns, sa = "default", "redpacket-operator"
	for _, o := range []client.Object{
		role,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}},
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "redpacket-operator"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
		},
	} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	user := "system:serviceaccount:" + ns + ":" + sa
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	startManagerWith(t, env, cfg)

	set := restrictedSet(t, ctx, c)
	cells, err := listCells(ctx, c, set)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cells {
		testenv.Eventually(t, 30*time.Second, "children of "+cells[i].Name, func() error { return checkCellChildren(ctx, c, &cells[i], set) })
	}
	testenv.Eventually(t, 30*time.Second, "status written", func() error {
		s := getSet(t, c, client.ObjectKeyFromObject(set))
		if s.Status.ObservedGeneration != s.Generation || len(s.Status.Conditions) == 0 {
			return fmt.Errorf("status not written: %+v", s.Status)
		}
		return nil
	})

	// Things the operator never does: it reads pods (to name those that cannot start) but
	// never changes or enters one, reads no nodes, changes no RBAC, deletes children only
	// through the garbage collector and writes them only by apply (patch).
	for _, a := range []authzv1.ResourceAttributes{
		{Verb: "delete", Resource: "pods"},
		{Verb: "patch", Resource: "pods"},
		{Verb: "create", Resource: "pods"},
		{Verb: "list", Resource: "nodes"},
		{Verb: "create", Resource: "pods", Subresource: "exec"},
		{Verb: "delete", Resource: "secrets"},
		{Verb: "update", Resource: "secrets"},
		{Verb: "delete", Resource: "deployments", Group: "apps"},
		{Verb: "update", Resource: "statefulsets", Group: "apps"},
		{Verb: "delete", Resource: "persistentvolumeclaims"},
		{Verb: "create", Resource: "clusterroles", Group: "rbac.authorization.k8s.io"},
		{Verb: "delete", Resource: "redpacketsets", Group: "redpacket.dev"},
		{Verb: "*", Resource: "*", Group: "*"},
	} {
		a.Namespace = set.Namespace
		rev := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{User: user, Groups: []string{"system:serviceaccounts"}, ResourceAttributes: &a}}
		if err := c.Create(ctx, rev); err != nil {
			t.Fatal(err)
		}
		if rev.Status.Allowed {
			t.Errorf("the operator's role allows %s %s/%s %s", a.Verb, a.Group, a.Resource, a.Subresource)
		}
	}
}

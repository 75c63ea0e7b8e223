package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/redpacketset/redpacket/internal/envtestutil"
)

const keepAnnotation = "helm.sh/resource-policy"

// The chart's CRDs must be config/crd/bases byte for byte in meaning, plus the keep
// annotation: a chart that drifted would install an older schema than kustomize does.
func TestChartCRDsAreTheGeneratedOnesWithKeep(t *testing.T) {
	objs, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	bases := crdBases(t)
	crds := byKind(objs, "CustomResourceDefinition")
	if len(crds) != len(bases) {
		t.Fatalf("chart renders %d CRDs, config/crd/bases holds %d", len(crds), len(bases))
	}
	for _, crd := range crds {
		base, ok := bases[crd.GetName()]
		if !ok {
			t.Errorf("chart CRD %s is not in config/crd/bases", crd.GetName())
			continue
		}
		ann := crd.GetAnnotations()
		if ann[keepAnnotation] != "keep" {
			t.Errorf("CRD %s: annotation %s = %q, want keep", crd.GetName(), keepAnnotation, ann[keepAnnotation])
		}
		got := crd.DeepCopy()
		delete(ann, keepAnnotation)
		got.SetAnnotations(ann)
		if !reflect.DeepEqual(got.Object, base.Object) {
			t.Errorf("CRD %s in the chart differs from config/crd/bases: run `make manifests`", crd.GetName())
		}
	}
}

func TestChartWithoutCRDsRendersNoCRD(t *testing.T) {
	objs, notes, err := renderChart("rp", "rp-system", map[string]any{"crds": map[string]any{"enabled": false}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(byKind(objs, "CustomResourceDefinition")); n != 0 {
		t.Fatalf("crds.enabled=false rendered %d CRDs", n)
	}
	one(t, objs, "Deployment")
	if !strings.Contains(notes, "install the CRDs yourself") {
		t.Errorf("NOTES.txt does not tell how to install the CRDs when the chart does not:\n%s", notes)
	}
}

func TestChartServiceMonitorToggle(t *testing.T) {
	objs, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(byKind(objs, "ServiceMonitor")); n != 0 {
		t.Fatalf("ServiceMonitor rendered by default (%d): installs would fail without the Prometheus Operator", n)
	}

	objs, _, err = renderChart("rp", "rp-system", map[string]any{"serviceMonitor": map[string]any{
		"enabled": true, "interval": "15s", "labels": map[string]any{"release": "prom"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	sm := one(t, objs, "ServiceMonitor")
	if sm.GetAPIVersion() != "monitoring.coreos.com/v1" || sm.GetNamespace() != "rp-system" {
		t.Errorf("ServiceMonitor is %s in %q, want monitoring.coreos.com/v1 in rp-system", sm.GetAPIVersion(), sm.GetNamespace())
	}
	if sm.GetLabels()["release"] != "prom" {
		t.Errorf("ServiceMonitor labels %v lack the extra label release=prom", sm.GetLabels())
	}
	svc := one(t, objs, "Service")
	selector := nested(t, sm, "spec", "selector", "matchLabels").(map[string]any)
	for k, v := range selector {
		if svc.GetLabels()[k] != v {
			t.Errorf("ServiceMonitor selects %s=%v, the metrics Service has %q", k, v, svc.GetLabels()[k])
		}
	}
	endpoints := nested(t, sm, "spec", "endpoints").([]any)
	if len(endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints: %v", endpoints)
	}
	ep := endpoints[0].(map[string]any)
	if ep["port"] != "metrics" || ep["interval"] != "15s" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v, want port metrics, path /metrics, interval 15s", ep)
	}
	ports := nested(t, svc, "spec", "ports").([]any)
	if ports[0].(map[string]any)["name"] != "metrics" {
		t.Errorf("metrics Service port is not named metrics: %v", ports)
	}

	_, _, err = renderChart("rp", "rp-system", map[string]any{
		"serviceMonitor": map[string]any{"enabled": true},
		"metrics":        map[string]any{"enabled": false},
	})
	if err == nil || !strings.Contains(err.Error(), "needs metrics.enabled") {
		t.Errorf("serviceMonitor without metrics rendered (err %v); want a clear failure", err)
	}
}

// The chart's ClusterRole is generated from config/rbac/role.yaml, so the chart's operator
// can do exactly what the kustomize one can: what the controllers' RBAC markers ask for.
func TestClusterRoleRulesAreTheGeneratedOnes(t *testing.T) {
	role := one(t, readYAMLFile(t, filepath.Join(configDir, "rbac", "role.yaml")), "ClusterRole")
	want := nested(t, role, "rules")

	chart, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := nested(t, one(t, chart, "ClusterRole"), "rules"); !reflect.DeepEqual(got, want) {
		t.Errorf("chart ClusterRole rules differ from config/rbac/role.yaml: run `make manifests`")
	}
	kust, err := renderKustomize(filepath.Join(configDir, "default"))
	if err != nil {
		t.Fatal(err)
	}
	cr := one(t, kust, "ClusterRole")
	if got := nested(t, cr, "rules"); !reflect.DeepEqual(got, want) {
		t.Errorf("kustomize ClusterRole rules differ from config/rbac/role.yaml")
	}
	if cr.GetName() != "redpacket-operator" {
		t.Errorf("kustomize ClusterRole is named %q, want redpacket-operator", cr.GetName())
	}
	if ref := nested(t, one(t, kust, "ClusterRoleBinding"), "roleRef", "name"); ref != cr.GetName() {
		t.Errorf("ClusterRoleBinding refers to %v, the ClusterRole is %s", ref, cr.GetName())
	}
}

func TestChartDeploymentFollowsValues(t *testing.T) {
	objs, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := one(t, objs, "Deployment")
	checkManagerPod(t, d, "ghcr.io/redpacketset/operator:v0.1.0", "rp-redpacket-operator")
	args := managerArgs(t, d)
	for _, want := range []string{"-leader-elect=true", "-metrics-bind-address=:8080", "-health-probe-bind-address=:8081"} {
		if !slices.Contains(args, any(want)) {
			t.Errorf("default args %v lack %s", args, want)
		}
	}
	one(t, objs, "ClusterRoleBinding")
	if n := len(byKind(objs, "Role")); n != 1 {
		t.Errorf("want the leader election Role, got %d Roles", n)
	}

	objs, _, err = renderChart("ops", "ops-system", map[string]any{
		"image":          map[string]any{"repository": "registry.example/rp/operator", "tag": "dev"},
		"replicas":       2,
		"leaderElection": map[string]any{"enabled": false},
		"metrics":        map[string]any{"enabled": false},
		"watchNamespace": "payments",
		"extraArgs":      []any{"-zap-log-level=debug"},
		"nodeSelector":   map[string]any{"kubernetes.io/os": "linux"},
	})
	if err != nil {
		t.Fatal(err)
	}
	d = one(t, objs, "Deployment")
	checkManagerPod(t, d, "registry.example/rp/operator:dev", "ops-redpacket-operator")
	if r := nested(t, d, "spec", "replicas"); fmt.Sprint(r) != "2" {
		t.Errorf("replicas %v, want 2", r)
	}
	args = managerArgs(t, d)
	for _, want := range []string{"-leader-elect=false", "-metrics-bind-address=0", "-namespace=payments", "-zap-log-level=debug"} {
		if !slices.Contains(args, any(want)) {
			t.Errorf("args %v lack %s", args, want)
		}
	}
	if n := len(byKind(objs, "Service")); n != 0 {
		t.Errorf("metrics.enabled=false still renders %d Services", n)
	}
	if n := len(byKind(objs, "Role")); n != 0 {
		t.Errorf("leaderElection.enabled=false still renders %d Roles", n)
	}
	if n := len(byKind(objs, "ClusterRoleBinding")); n != 0 {
		t.Errorf("watchNamespace set, yet the rules are granted cluster-wide by %d ClusterRoleBindings", n)
	}
	rb := one(t, objs, "RoleBinding")
	if rb.GetNamespace() != "payments" || nested(t, rb, "roleRef", "kind") != "ClusterRole" {
		t.Errorf("watchNamespace binding is %s in %q, want a RoleBinding to the ClusterRole in payments", rb.GetKind(), rb.GetNamespace())
	}
	if sel := nested(t, d, "spec", "template", "spec", "nodeSelector").(map[string]any); sel["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector %v not passed through", sel)
	}
}

func TestChartRejectsValuesOutsideTheSchema(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"replicas not a number": {"replicas": "two"},
		"zero replicas":         {"replicas": 0},
		"unknown top-level key": {"crd": map[string]any{"enabled": false}},
		"pull policy":           {"image": map[string]any{"pullPolicy": "Sometimes"}},
		// Issue 14: the operator would exit at start on `-sync-period=abc`.
		"sync period not a duration":       {"syncPeriod": "abc"},
		"sync period without a unit":       {"syncPeriod": "10"},
		"sync period negative":             {"syncPeriod": "-10m"},
		"sync period with spaces":          {"syncPeriod": "10 m"},
		"empty sync period":                {"syncPeriod": ""},
		"scrape interval not a duration":   {"serviceMonitor": map[string]any{"interval": "often"}},
		"pod monitor interval in Go units": {"podMonitor": map[string]any{"interval": "1.5m"}},
	} {
		if _, _, err := renderChart("rp", "rp-system", vals); err == nil {
			t.Errorf("%s: values %v rendered, want a schema error", name, vals)
		}
	}
	for _, v := range []string{"10m", "1h30m", "90s", "0.5h"} {
		objs, _, err := renderChart("rp", "rp-system", map[string]any{"syncPeriod": v})
		if err != nil {
			t.Errorf("syncPeriod %q refused: %v", v, err)
			continue
		}
		if args := fmt.Sprint(nested(t, one(t, objs, "Deployment"), "spec", "template", "spec", "containers")); !strings.Contains(args, "-sync-period="+v) {
			t.Errorf("syncPeriod %q not passed on: %s", v, args)
		}
	}
}

func TestKustomizeDefault(t *testing.T) {
	objs, err := renderKustomize(filepath.Join(configDir, "default"))
	if err != nil {
		t.Fatal(err)
	}
	ns := one(t, objs, "Namespace")
	if ns.GetName() != "redpacket-system" {
		t.Fatalf("namespace %s, want redpacket-system", ns.GetName())
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding":
			continue
		}
		if o.GetNamespace() != "redpacket-system" {
			t.Errorf("%s %s is in namespace %q, want redpacket-system", o.GetKind(), o.GetName(), o.GetNamespace())
		}
		if !strings.HasPrefix(o.GetName(), "redpacket-") {
			t.Errorf("%s %s lacks the redpacket- name prefix", o.GetKind(), o.GetName())
		}
	}
	if n := len(byKind(objs, "CustomResourceDefinition")); n != len(crdBases(t)) {
		t.Errorf("kustomize renders %d CRDs, config/crd/bases holds %d", n, len(crdBases(t)))
	}
	if n := len(byKind(objs, "ServiceMonitor")); n != 0 {
		t.Errorf("config/default renders a ServiceMonitor; it belongs in config/prometheus only")
	}
	d := one(t, objs, "Deployment")
	checkManagerPod(t, d, "ghcr.io/redpacketset/operator:v0.1.0", "redpacket-operator")
	if args := managerArgs(t, d); !slices.Contains(args, any("-leader-elect")) {
		t.Errorf("manager args %v do not enable leader election", args)
	}
	svc := one(t, objs, "Service")
	port := nested(t, svc, "spec", "ports").([]any)[0].(map[string]any)
	if fmt.Sprint(port["port"]) != "8080" || port["targetPort"] != "metrics" {
		t.Errorf("metrics Service port %v, want 8080 -> metrics", port)
	}
	podLabels := nested(t, d, "spec", "template", "metadata", "labels").(map[string]any)
	for k, v := range nested(t, svc, "spec", "selector").(map[string]any) {
		if podLabels[k] != v {
			t.Errorf("metrics Service selects %s=%v; the manager pods have %v", k, v, podLabels[k])
		}
	}

	prom, err := renderKustomize(filepath.Join(configDir, "prometheus"))
	if err != nil {
		t.Fatal(err)
	}
	if sm := one(t, prom, "ServiceMonitor"); sm.GetAPIVersion() != "monitoring.coreos.com/v1" {
		t.Errorf("config/prometheus ServiceMonitor is %s", sm.GetAPIVersion())
	}
}

// hack/sync-chart-crds.sh run on a copy of the inputs must reproduce the committed chart
// templates, twice over: the chart is current, and `make manifests` leaves git clean.
func TestSyncScriptReproducesTheChartIdempotently(t *testing.T) {
	root := envtestutil.RepoRoot()
	tmp := t.TempDir()
	for _, dir := range []string{"config/crd/bases", "config/rbac", "charts/redpacket-operator/templates", "hack"} {
		copyDir(t, filepath.Join(root, dir), filepath.Join(tmp, dir))
	}
	for run := 1; run <= 2; run++ {
		cmd := exec.Command("bash", filepath.Join(tmp, "hack", "sync-chart-crds.sh"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("run %d of sync-chart-crds.sh: %v\n%s", run, err, out)
		}
		entries, err := os.ReadDir(filepath.Join(tmp, "charts/redpacket-operator/templates"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			got, err := os.ReadFile(filepath.Join(tmp, "charts/redpacket-operator/templates", e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(chartDir, "templates", e.Name()))
			if err != nil {
				t.Errorf("run %d: sync-chart-crds.sh wrote %s, which the chart lacks: run `make manifests`", run, e.Name())
				continue
			}
			if string(got) != string(want) {
				t.Errorf("run %d: sync-chart-crds.sh rewrites %s differently: run `make manifests`", run, e.Name())
			}
		}
		if want, _ := os.ReadDir(filepath.Join(chartDir, "templates")); len(entries) != len(want) {
			t.Errorf("run %d: %d templates after sync, the chart has %d", run, len(entries), len(want))
		}
	}
}

// checkManagerPod asserts what both installs promise about the operator's pod.
func checkManagerPod(t *testing.T, d *unstructured.Unstructured, image, serviceAccount string) {
	t.Helper()
	pod := nested(t, d, "spec", "template", "spec").(map[string]any)
	if pod["serviceAccountName"] != serviceAccount {
		t.Errorf("pod runs as service account %v, want %s", pod["serviceAccountName"], serviceAccount)
	}
	psc, _ := pod["securityContext"].(map[string]any)
	if psc["runAsNonRoot"] != true || nestedString(psc, "seccompProfile", "type") != "RuntimeDefault" {
		t.Errorf("pod securityContext %v: want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
	c := managerContainer(t, d)
	if c["image"] != image {
		t.Errorf("image %v, want %s", c["image"], image)
	}
	sc, _ := c["securityContext"].(map[string]any)
	if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false || sc["runAsNonRoot"] != true {
		t.Errorf("container securityContext %v: want a read-only root, no privilege escalation, non-root", sc)
	}
	caps, _ := sc["capabilities"].(map[string]any)
	if drop, _ := caps["drop"].([]any); !slices.Contains(drop, any("ALL")) {
		t.Errorf("capabilities %v: want drop ALL", caps)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := nestedString(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %s", probe, got, path)
		}
	}
	if res, _ := c["resources"].(map[string]any); res["requests"] == nil {
		t.Errorf("manager has no resource requests")
	}
}

func managerContainer(t *testing.T, d *unstructured.Unstructured) map[string]any {
	t.Helper()
	for _, c := range nested(t, d, "spec", "template", "spec", "containers").([]any) {
		if c := c.(map[string]any); c["name"] == "manager" {
			return c
		}
	}
	t.Fatalf("Deployment %s has no manager container", d.GetName())
	return nil
}

func managerArgs(t *testing.T, d *unstructured.Unstructured) []any {
	t.Helper()
	args, _ := managerContainer(t, d)["args"].([]any)
	return args
}

func nestedString(m map[string]any, fields ...string) string {
	s, _, _ := unstructured.NestedString(m, fields...)
	return s
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy %s: %v", from, err)
	}
}

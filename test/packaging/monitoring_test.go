package packaging

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestChartMonitoringToggles: the PrometheusRule, the PodMonitor and the dashboard ConfigMap
// are off by default (the first two need the Prometheus Operator's CRDs), and when on carry
// the shipped rules and dashboard unchanged, with the labels Prometheus and Grafana select by.
func TestChartMonitoringToggles(t *testing.T) {
	objs, _, err := renderChart("rp", "rp-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"PrometheusRule", "PodMonitor"} {
		if n := len(byKind(objs, kind)); n != 0 {
			t.Errorf("%s rendered by default (%d)", kind, n)
		}
	}
	if n := len(byKind(objs, "ConfigMap")); n != 0 {
		t.Errorf("dashboard ConfigMap rendered by default (%d)", n)
	}

	objs, _, err = renderChart("rp", "rp-system", map[string]any{
		"prometheusRule":   map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
		"podMonitor":       map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true, "namespace": "grafana"},
		"watchNamespace":   "fest",
	})
	if err != nil {
		t.Fatal(err)
	}
	pr := one(t, objs, "PrometheusRule")
	if pr.GetLabels()["release"] != "prom" || pr.GetNamespace() != "rp-system" {
		t.Errorf("PrometheusRule labels %v namespace %q", pr.GetLabels(), pr.GetNamespace())
	}
	raw, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if got := nested(t, pr, "spec"); !reflect.DeepEqual(normalise(t, got), normalise(t, want)) {
		t.Errorf("PrometheusRule spec is not files/alerts.yaml:\n%v", got)
	}

	pm := one(t, objs, "PodMonitor")
	if ns := nested(t, pm, "spec", "namespaceSelector", "matchNames").([]any); len(ns) != 1 || ns[0] != "fest" {
		t.Errorf("PodMonitor watches %v, want the watched namespace fest", ns)
	}
	eps := nested(t, pm, "spec", "podMetricsEndpoints").([]any)
	if ep := eps[0].(map[string]any); ep["port"] != "http" || ep["path"] != "/metrics" {
		t.Errorf("PodMonitor endpoint %v", ep)
	}

	cm := one(t, objs, "ConfigMap")
	if cm.GetLabels()["grafana_dashboard"] != "1" || cm.GetNamespace() != "grafana" {
		t.Errorf("dashboard ConfigMap labels %v in %q, want grafana_dashboard=1 in grafana", cm.GetLabels(), cm.GetNamespace())
	}
	data := nested(t, cm, "data", "redpacket-set.json").(string)
	file, err := os.ReadFile(filepath.Join(chartDir, "files", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal([]byte(data), &a); err != nil {
		t.Fatalf("dashboard in the ConfigMap is not JSON: %v", err)
	}
	_ = json.Unmarshal(file, &b)
	if !reflect.DeepEqual(a, b) {
		t.Error("dashboard in the ConfigMap differs from files/dashboard.json")
	}

	sm := map[string]any{"serviceMonitor": map[string]any{"enabled": true}}
	objs, _, err = renderChart("rp", "rp-system", sm)
	if err != nil {
		t.Fatal(err)
	}
	ep := nested(t, one(t, objs, "ServiceMonitor"), "spec", "endpoints").([]any)[0].(map[string]any)
	if ep["honorLabels"] != true {
		t.Errorf("operator ServiceMonitor endpoint %v: honorLabels must keep the status gauges' namespace label", ep)
	}
}

// TestKustomizePrometheus: config/prometheus builds the ServiceMonitor, the PodMonitor and the
// PrometheusRule.
func TestKustomizePrometheus(t *testing.T) {
	objs, err := renderKustomize(filepath.Join(configDir, "prometheus"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"} {
		one(t, objs, kind)
	}
	ep := nested(t, one(t, objs, "ServiceMonitor"), "spec", "endpoints").([]any)[0].(map[string]any)
	if ep["honorLabels"] != true {
		t.Errorf("kustomize ServiceMonitor endpoint %v lacks honorLabels", ep)
	}
}

func normalise(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

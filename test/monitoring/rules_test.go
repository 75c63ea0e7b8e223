package monitoring

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/redpacketset/redpacket/internal/envtestutil"
)

var (
	root       = envtestutil.RepoRoot()
	alertsFile = filepath.Join(root, "charts", "redpacket-operator", "files", "alerts.yaml")
)

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return rf
}

// promtool builds (once per version, cached outside the repository) and returns promtool.
// A machine that cannot build it fails the test with the reason: CI must run these tests.
func promtool(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "build-promtool.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cannot build promtool with hack/build-promtool.sh (needs the Go module proxy or a filled module cache): %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestAlertRules runs `promtool check rules` and `promtool test rules` on the shipped alerts.
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", alertsFile},
		{"test", "rules", filepath.Join(root, "test", "monitoring", "alerts_test.yaml")},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = filepath.Join(root, "test", "monitoring")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// TestEveryAlertIsTestedAndHasARunbook: each alert has a severity, a runbook_url whose
// anchor is a heading of docs/operator.md, and at least one promtool test case.
func TestEveryAlertIsTestedAndHasARunbook(t *testing.T) {
	rf := readRules(t)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "operator.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, h := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(doc), -1) {
		anchors[githubAnchor(h[1])] = true
	}
	tests, err := os.ReadFile(filepath.Join(root, "test", "monitoring", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const base = "https://github.com/redpacketset/redpacket/blob/main/docs/operator.md#"
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if r.Labels["severity"] != "critical" && r.Labels["severity"] != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, r.Labels["severity"])
			}
			url := r.Annotations["runbook_url"]
			if !strings.HasPrefix(url, base) || !anchors[strings.TrimPrefix(url, base)] {
				t.Errorf("%s: runbook_url %q is not a heading of docs/operator.md", r.Alert, url)
			}
			if !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("%s has no promtool test in test/monitoring/alerts_test.yaml", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerts found")
	}
}

// TestKustomizeRulesAreTheChartRules: config/prometheus/prometheusrule.yaml is generated from
// the chart's rules (hack/sync-monitoring.sh) and must not drift from them.
func TestKustomizeRulesAreTheChartRules(t *testing.T) {
	want := readRules(t)
	data, err := os.ReadFile(filepath.Join(root, "config", "prometheus", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Spec       ruleFile `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &pr); err != nil {
		t.Fatal(err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Fatalf("config/prometheus/prometheusrule.yaml is %s %s", pr.APIVersion, pr.Kind)
	}
	a, _ := yaml.Marshal(want)
	b, _ := yaml.Marshal(pr.Spec)
	if string(a) != string(b) {
		t.Fatalf("config/prometheus/prometheusrule.yaml differs from the chart's files/alerts.yaml: run `make manifests`\nchart:\n%s\nkustomize:\n%s", a, b)
	}
}

// githubAnchor is the fragment GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	h := strings.ToLower(strings.TrimSpace(heading))
	h = regexp.MustCompile("[^a-z0-9 _-]").ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}

package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
)

func startEnv(t *testing.T) *envtestutil.Env { return envtestutil.Start(t) }

// checkTable asks the API server for the table view kubectl prints for `kubectl get rps`.
func checkTable(ctx context.Context, env *envtestutil.Env, set *rpv1.RedPacketSet) error {
	hc, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		return err
	}
	url := fmt.Sprintf("%s/apis/redpacket.dev/v1alpha1/namespaces/%s/redpacketsets/%s", strings.TrimRight(env.Config.Host, "/"), set.Namespace, set.Name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("table request: %s: %s", resp.Status, body)
	}
	var tbl metav1.Table
	if err := json.Unmarshal(body, &tbl); err != nil {
		return err
	}
	want := map[string]any{"Cells": float64(4), "Ready": float64(4), "Masked": float64(0), "Epoch": float64(1), "Available": "True"}
	if len(tbl.Rows) != 1 {
		return fmt.Errorf("%d rows", len(tbl.Rows))
	}
	seen := map[string]bool{}
	for i, col := range tbl.ColumnDefinitions {
		w, ok := want[col.Name]
		if !ok {
			continue
		}
		seen[col.Name] = true
		if got := tbl.Rows[0].Cells[i]; got != w {
			return fmt.Errorf("column %s shows %v, want %v", col.Name, got, w)
		}
	}
	for name := range want {
		if !seen[name] {
			return fmt.Errorf("no printer column %s", name)
		}
	}
	return nil
}

// versions maps every object of the set to its resourceVersion.
func versions(ctx context.Context, t *testing.T, c client.Client, set *rpv1.RedPacketSet) map[string]string {
	t.Helper()
	out := map[string]string{}
	add := func(kind string, list client.ObjectList) {
		if err := c.List(ctx, list, client.InNamespace(set.Namespace)); err != nil {
			t.Fatal(err)
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range items {
			o, err := meta.Accessor(item)
			if err != nil {
				t.Fatal(err)
			}
			out[kind+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	add("RedPacketSet", &rpv1.RedPacketSetList{})
	add("RedPacketCell", &rpv1.RedPacketCellList{})
	add("StatefulSet", &appsv1.StatefulSetList{})
	add("Deployment", &appsv1.DeploymentList{})
	add("Service", &corev1.ServiceList{})
	add("ConfigMap", &corev1.ConfigMapList{})
	add("Secret", &corev1.SecretList{})
	add("PodDisruptionBudget", &policyv1.PodDisruptionBudgetList{})
	return out
}

// waitReconciled waits until the controllers have reconciled at least once more and then no
// reconcile has run for two seconds, read from controller-runtime's own metrics. (The queue
// gauges cannot be used: a stopped manager's controllers share their labels and leave them set.)
func waitReconciled(t *testing.T, atLeast float64) {
	t.Helper()
	start := reconcileTotal(t) + atLeast - 1
	deadline := time.Now().Add(30 * time.Second)
	stableSince := time.Time{}
	last := -1.0
	for time.Now().Before(deadline) {
		total := reconcileTotal(t)
		switch {
		case total <= start && atLeast > 0:
			stableSince = time.Time{}
		case total != last:
			stableSince = time.Now()
		case time.Since(stableSince) > 2*time.Second:
			return
		}
		last = total
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("controllers did not settle: %v reconciles since start", reconcileTotal(t)-start)
}

func reconcileTotal(t *testing.T) float64 {
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

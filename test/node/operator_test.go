package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/loadgen"
)

// The images hack/node/images.sh builds for the cluster's databases and caches.
const (
	mariadbImage   = "localhost/redpacketset/mariadb:10.11-bookworm"
	memcachedImage = "localhost/redpacketset/memcached:1.6-bookworm"
)

const (
	operatorNamespace = "rp-system"
	releaseName       = "rp"
	setNamespace      = "rp-node"
	setName           = "node"
)

// enforceRestrictedOnSet holds the set's namespace to the restricted Pod Security profile:
// every child pod the operator creates must be admitted under it.
const enforceRestrictedOnSet = true

func restrictedLabels() map[string]string {
	return map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
		"pod-security.kubernetes.io/audit":   "restricted",
	}
}

func setNamespaceLabels() map[string]string {
	l := restrictedLabels()
	if !enforceRestrictedOnSet {
		delete(l, "pod-security.kubernetes.io/enforce")
	}
	return l
}

// TestOperatorOnRealPods installs the operator with its Helm chart from the images built from
// this checkout, applies a one-zone, 2-cell RedPacketSet and follows it on real pods. Each
// stage needs the one before, so the first failure stops the test.
func TestOperatorOnRealPods(t *testing.T) {
	cl := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	t.Run("helm install", func(t *testing.T) { helmInstall(t, ctx, cl) })
	if t.Failed() {
		return
	}
	set := nodeSet()
	t.Run("set Available on Ready pods", func(t *testing.T) { applyAndWaitAvailable(t, ctx, cl, set) })
	if t.Failed() {
		cl.dump(t, setNamespace)
		return
	}
	t.Run("festival load through the gateway, clean audit", func(t *testing.T) { festival(t, ctx, cl, set) })
	if t.Failed() {
		cl.dump(t, setNamespace)
		return
	}
	t.Run("kubectl scale rps --replicas=3 under load", func(t *testing.T) { scaleOut(t, ctx, cl, set) })
	if t.Failed() {
		cl.dump(t, setNamespace)
		return
	}
	t.Run("a server pod and a MySQL pod deleted under load, no acknowledged open lost", func(t *testing.T) { podDeletions(t, ctx, cl, set) })
	if t.Failed() {
		cl.dump(t, setNamespace)
		return
	}
	t.Run("a failing logical table masked, then lifted", func(t *testing.T) { maskAndLift(t, ctx, cl, set) })
	if t.Failed() {
		cl.dump(t, setNamespace)
	}
	t.Run("kubectl delete rps: the garbage collector removes every child", func(t *testing.T) { deleteSet(t, ctx, cl, set) })
	t.Run("a replicated cell's primary pod deleted under load: a replica takes over, no acknowledged open lost", func(t *testing.T) { primaryFailover(t, ctx, cl) })
	if t.Failed() {
		cl.dump(t, setNamespace)
	}
	t.Run("helm uninstall keeps the CRDs", func(t *testing.T) { helmUninstall(t, ctx, cl) })
}

// deleteSet deletes the set as a user would and waits for the controller-manager's garbage
// collector to remove what the set owns, through its cells. The database volumes' claims stay:
// a StatefulSet's claims outlive it unless told otherwise, so the data is never lost by a
// delete.
//
// The load left packets that still owe payouts or refunds, so the delete is first held by the
// settle finalizer, with the set saying why, and nothing is removed; an SRE who means to drop
// a test set's money then says so with the discard annotation, as docs/operator.md describes.
func deleteSet(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	cl.run(t, "delete", "rps", set.Name, "-n", set.Namespace, "--wait=false")
	poll(t, "the deletion held while packets are unsettled", 2*time.Minute, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		c := meta.FindStatusCondition(set.Status.Conditions, rpv1.SetDeletionHeld)
		if set.DeletionTimestamp == nil || c == nil || c.Status != metav1.ConditionTrue {
			return false, fmt.Errorf("deleting %v, DeletionHeld %v", set.DeletionTimestamp != nil, c)
		}
		return true, nil
	})
	var cells rpv1.RedPacketCellList
	if err := cl.c.List(ctx, &cells, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil || len(cells.Items) == 0 {
		t.Fatalf("cells while the deletion is held: %d (%v)", len(cells.Items), err)
	}
	t.Logf("deletion held: %s", meta.FindStatusCondition(set.Status.Conditions, rpv1.SetDeletionHeld).Message)
	cl.run(t, "annotate", "rps", set.Name, "-n", set.Namespace, rpv1.AnnotationDiscardUnsettled+"=true")
	cl.run(t, "wait", "--for=delete", "rps/"+set.Name, "-n", set.Namespace, "--timeout=5m")
	sel := client.MatchingLabels{rpv1.LabelSet: set.Name}
	lists := map[string]client.ObjectList{
		"cells": &rpv1.RedPacketCellList{}, "deployments": &appsv1.DeploymentList{}, "statefulsets": &appsv1.StatefulSetList{},
		"services": &corev1.ServiceList{}, "configmaps": &corev1.ConfigMapList{}, "secrets": &corev1.SecretList{},
		"pdbs": &policyv1.PodDisruptionBudgetList{}, "pods": &corev1.PodList{},
	}
	// What holds the ledger stays (docs/operator.md, deleting a set): each cell's database
	// volume and the credentials Secret that opens it. Everything else goes.
	kept := map[string]bool{}
	for _, c := range cells.Items {
		kept[c.MySQLSecretName()] = true
	}
	poll(t, "every child of the set gone but the volumes' credentials", 5*time.Minute, func() (bool, error) {
		for kind, l := range lists {
			if err := cl.c.List(ctx, l, client.InNamespace(set.Namespace), sel); err != nil {
				return false, err
			}
			n := meta.LenList(l)
			if sl, ok := l.(*corev1.SecretList); ok {
				n = 0
				for _, s := range sl.Items {
					if !kept[s.Name] {
						n++
					}
				}
			}
			if n > 0 {
				return false, fmt.Errorf("%d %s left", n, kind)
			}
		}
		return true, nil
	})
	for name := range kept {
		var s corev1.Secret
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: name}, &s); err != nil {
			t.Errorf("credentials Secret %s of a kept volume: %v", name, err)
		}
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := cl.c.List(ctx, &pvcs, client.InNamespace(set.Namespace)); err != nil || len(pvcs.Items) < len(cells.Items) {
		t.Errorf("database volumes after the delete: %d for %d cells (%v); they hold the ledger and must stay", len(pvcs.Items), len(cells.Items), err)
	}
}

func helmUninstall(t *testing.T, ctx context.Context, cl *cluster) {
	un := action.NewUninstall(helmConfig(t, cl))
	un.Wait, un.Timeout = true, 3*time.Minute
	if _, err := un.Run(releaseName); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	var dep appsv1.Deployment
	err := cl.c.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "rp-redpacket-operator"}, &dep)
	if !apierrors.IsNotFound(err) {
		t.Errorf("the operator's Deployment after uninstall: %v", err)
	}
	for _, name := range []string{"redpacketsets.redpacket.dev", "redpacketcells.redpacket.dev"} {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := cl.c.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
			t.Errorf("CRD %s after helm uninstall: %v", name, err)
		}
	}
}

// nodeSet is small enough for two shared cores: one server per cell, a 2×2 shard layout.
func nodeSet() *rpv1.RedPacketSet {
	return &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: setName, Namespace: setNamespace},
		Spec: rpv1.RedPacketSetSpec{
			Zones: []string{"zone-a"},
			Cells: 2,
			Capacity: rpv1.CapacitySpec{
				PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000, MinServersPerZone: 1,
			},
			Template: rpv1.CellTemplate{
				Server: rpv1.ServerSpec{Resources: requests("50m", "64Mi")},
				MySQL: rpv1.MySQLSpec{
					Image: mariadbImage, Replicas: 1, Storage: ptrQuantity("1Gi"),
					Resources: requests("100m", "256Mi"),
				},
				Memcached: rpv1.MemcachedSpec{Image: memcachedImage, MemoryMB: 16},
				Shards:    rpv1.ShardSpec{Databases: 2, TablesPerDatabase: 2},
				Queue:     rpv1.QueueSpec{Workers: 16},
			},
			Gateway: rpv1.GatewaySpec{Replicas: 1},
			// The masking stage fails one of a cell's 4 logical tables, a quarter of its slots:
			// past the default budget of 10%. A short cool-down keeps the lift within minutes.
			Masking: rpv1.MaskingPolicy{ErrorThreshold: 5, CoolDown: &rpv1.Duration{Duration: 30 * time.Second}, MaxMaskedPercent: 30},
			// RebalanceDelay stays at its default (2m): a new epoch must take effect only after
			// the kubelet has projected the routing ConfigMap into every pod. At 20s it does not
			// on a real node, and servers with the old table go on creating packets in slots the
			// new epoch gives another cell (docs/design.md §4.4), which the audit reports.
		},
	}
}

func requests(cpu, mem string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem),
	}}
}

func ptrQuantity(s string) *resource.Quantity { q := resource.MustParse(s); return &q }

// helmConfig is Helm's action configuration for the release's namespace, as `helm -n NS` has.
func helmConfig(t *testing.T, cl *cluster) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	kc, ns := cl.env["KUBECONFIG"], operatorNamespace
	flags.KubeConfig, flags.Namespace = &kc, &ns
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, operatorNamespace, "secret", func(format string, v ...any) { t.Logf("helm: "+format, v...) }); err != nil {
		t.Fatalf("helm init: %v", err)
	}
	return cfg
}

// helmInstall is `helm install rp charts/redpacket-operator -n rp-system --create-namespace
// --wait` with the chart's defaults: the image it names is the one images.sh built and the
// test imported, which the kubelet finds present (no registry is reachable to pull from).
func helmInstall(t *testing.T, ctx context.Context, cl *cluster) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace, Labels: restrictedLabels()}}
	if err := cl.c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ch, err := loader.Load(filepath.Join(cl.repo, "charts", "redpacket-operator"))
	if err != nil {
		t.Fatal(err)
	}
	in := action.NewInstall(helmConfig(t, cl))
	in.ReleaseName, in.Namespace = releaseName, operatorNamespace
	in.Wait, in.Timeout = true, 3*time.Minute
	rel, err := in.RunWithContext(ctx, ch, map[string]any{})
	if err != nil {
		cl.dump(t, operatorNamespace)
		t.Fatalf("helm install: %v", err)
	}
	t.Logf("release %s %s: %s", rel.Name, rel.Chart.Metadata.Version, rel.Info.Status)
	var dep appsv1.Deployment
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "rp-redpacket-operator"}, &dep); err != nil {
		t.Fatal(err)
	}
	if dep.Status.ReadyReplicas < 1 {
		t.Fatalf("operator deployment: %d ready replicas", dep.Status.ReadyReplicas)
	}
}

func applyAndWaitAvailable(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: setNamespace, Labels: setNamespaceLabels()}}
	if err := cl.c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := cl.c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll(t, "RedPacketSet Available=True", 8*time.Minute, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		c := meta.FindStatusCondition(set.Status.Conditions, rpv1.SetAvailable)
		if c == nil {
			return false, fmt.Errorf("no Available condition")
		}
		return c.Status == metav1.ConditionTrue, fmt.Errorf("Available=%s %s: %s", c.Status, c.Reason, c.Message)
	})
	t.Logf("set Available after %s", time.Since(start).Round(time.Second))

	// The kubelet, not the operator, says the pods are up: every pod of the set Running with
	// Ready=True, none restarted. The gateway is not part of Available (cells are), so its pod
	// may become Ready a moment later.
	want := map[string]int{rpv1.ComponentMySQL: 2, rpv1.ComponentServer: 2, rpv1.ComponentGateway: 1}
	got := map[string]int{}
	var pods corev1.PodList
	poll(t, "every pod of the set Ready", 3*time.Minute, func() (bool, error) {
		if err := cl.c.List(ctx, &pods, client.InNamespace(setNamespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
			return false, err
		}
		got = map[string]int{}
		var notReady []string
		for _, p := range pods.Items {
			got[p.Labels[rpv1.LabelComponent]]++
			if !podReady(&p) {
				notReady = append(notReady, p.Name)
			}
		}
		return len(notReady) == 0, fmt.Errorf("not Ready: %v", notReady)
	})
	for _, p := range pods.Items {
		if p.Spec.NodeName != "node1" {
			t.Errorf("pod %s on node %q", p.Name, p.Spec.NodeName)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.RestartCount != 0 {
				t.Errorf("pod %s container %s restarted %d times", p.Name, cs.Name, cs.RestartCount)
			}
		}
	}
	for comp, n := range want {
		if got[comp] != n {
			t.Errorf("%d %s pods, want %d (all: %v)", got[comp], comp, n, got)
		}
	}

	// Every condition true or false for the right reason on one zone.
	wantCond := map[string]struct {
		status metav1.ConditionStatus
		reason string
	}{
		rpv1.SetAvailable:           {metav1.ConditionTrue, rpv1.ReasonAllCellsAvailable},
		rpv1.SetDegraded:            {metav1.ConditionFalse, rpv1.ReasonAllCellsAvailable},
		rpv1.SetZoneFailureTolerant: {metav1.ConditionFalse, rpv1.ReasonSingleZone},
		rpv1.SetSlotsMasked:         {metav1.ConditionFalse, rpv1.ReasonNoMasks},
	}
	for typ, w := range wantCond {
		c := meta.FindStatusCondition(set.Status.Conditions, typ)
		if c == nil || c.Status != w.status || c.Reason != w.reason {
			t.Errorf("condition %s = %+v, want %s/%s", typ, c, w.status, w.reason)
		}
	}
	var cells rpv1.RedPacketCellList
	if err := cl.c.List(ctx, &cells, client.InNamespace(setNamespace)); err != nil {
		t.Fatal(err)
	}
	for _, c := range cells.Items {
		for _, typ := range []string{rpv1.CellAvailable, rpv1.CellDatabaseReady, rpv1.CellCacheReady, rpv1.CellServersReady} {
			if !meta.IsStatusConditionTrue(c.Status.Conditions, typ) {
				t.Errorf("cell %s: %s not True: %+v", c.Name, typ, meta.FindStatusCondition(c.Status.Conditions, typ))
			}
		}
	}
	// kubectl's columns come from the CRDs' printer columns: each must be filled (a blank
	// column leaves a row with fewer fields than its header).
	for _, kind := range []string{"rps", "rpc"} {
		out := cl.run(t, "get", kind, "-n", setNamespace)
		t.Logf("kubectl get %s:\n%s", kind, out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		header := strings.Fields(lines[0])
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) != len(header) || strings.Contains(line, "<none>") || strings.Contains(line, "<unknown>") {
				t.Errorf("kubectl get %s: an empty column in %q (columns %v)", kind, line, header)
			}
			if !strings.Contains(line, "True") {
				t.Errorf("kubectl get %s: not Available: %q", kind, line)
			}
		}
	}
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// gatewayURL is the gateway pod's address: the host reaches pod IPs over the node's bridge.
func gatewayURL(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) string {
	t.Helper()
	var pods corev1.PodList
	if err := cl.c.List(ctx, &pods, client.InNamespace(set.Namespace),
		client.MatchingLabels{rpv1.LabelSet: set.Name, rpv1.LabelComponent: rpv1.ComponentGateway}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return fmt.Sprintf("http://%s:%d", p.Status.PodIP, controllers.ServerPort)
		}
	}
	t.Fatalf("no gateway pod with an IP")
	return ""
}

func routingTable(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) *routing.Table {
	t.Helper()
	var cm corev1.ConfigMap
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: set.RoutingConfigMapName()}, &cm); err != nil {
		t.Fatal(err)
	}
	tab, err := routing.Parse([]byte(cm.Data[rpv1.RoutingFile]))
	if err != nil {
		t.Fatalf("routing ConfigMap: %v", err)
	}
	return tab
}

// cellDBs are every cell's databases as the audit reads them: the (primary) MySQL pod's IP, as root with
// the password from the operator's Secret.
func cellDBs(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) []loadgen.CellDB {
	t.Helper()
	var cells rpv1.RedPacketCellList
	if err := cl.c.List(ctx, &cells, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
		t.Fatal(err)
	}
	var out []loadgen.CellDB
	for _, c := range cells.Items {
		name := c.MySQLPodName(0)
		if c.Status.Database != nil && c.Status.Database.Primary != "" {
			name = c.Status.Database.Primary // a replicated cell: whichever pod is primary now
		}
		var pod corev1.Pod
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: name}, &pod); err != nil {
			t.Fatal(err)
		}
		var sec corev1.Secret
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.MySQLSecretName()}, &sec); err != nil {
			t.Fatal(err)
		}
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd = "root", string(sec.Data["root-password"])
		cfg.Net, cfg.Addr = "tcp", fmt.Sprintf("%s:%d", pod.Status.PodIP, controllers.MySQLPort)
		cfg.ParseTime, cfg.InterpolateParams, cfg.Loc, cfg.Timeout = true, true, time.UTC, 5*time.Second
		out = append(out, loadgen.CellDB{Name: c.Name, DSN: cfg.FormatDSN()})
	}
	return out
}

func festival(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	gw := gatewayURL(t, ctx, cl, set)
	tab := routingTable(t, ctx, cl, set)
	opens := int64(3000)
	if s := os.Getenv("NODE_TEST_OPENS"); s != "" {
		if _, err := fmt.Sscan(s, &opens); err != nil {
			t.Fatalf("NODE_TEST_OPENS=%q: %v", s, err)
		}
	}
	res, err := loadgen.Run(ctx, loadgen.Config{
		Gateway: gw, Concurrency: 16, Opens: opens, Duration: 4 * time.Minute,
		Groups: 40, Members: 30, HotPackets: 2, HotMembers: 200, HotShare: 0.3,
		MaxCount: int(set.Spec.Limits.MaxCount), MaxTotalCents: set.Spec.Limits.MaxTotalCents, Routing: tab,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range res.Verbs {
		t.Logf("%-8s %6d requests  p50 %-8s p99 %-8s  %v", v.Verb, v.Requests, v.P50.Round(10*time.Microsecond),
			v.P99.Round(10*time.Microsecond), v.SortedOutcomes())
	}
	t.Logf("%d opens in %s (%.0f/s), %d packets, %d throttled, %d errors", res.Opens, res.Elapsed.Round(time.Millisecond),
		res.OpensPerSec, len(res.Created), res.Throttled, res.Errors)
	if res.Opens < opens {
		t.Errorf("only %d opens within the time bound, want %d", res.Opens, opens)
	}
	if res.Errors != 0 {
		t.Errorf("%d unexpected errors, first: %v", res.Errors, res.ErrorSamples)
	}
	if len(res.Misrouted) != 0 {
		t.Errorf("answers from the wrong cell: %v", res.Misrouted)
	}
	perCell := map[string]int{}
	for _, p := range res.Created {
		perCell[p.Cell]++
	}
	if len(perCell) != 2 {
		t.Errorf("packets per answering cell %v: want both cells used", perCell)
	}
	audit(t, ctx, cl, set, res.Started, res)
}

func audit(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet, from time.Time, res *loadgen.Result) {
	t.Helper()
	rep, err := loadgen.Audit(ctx, loadgen.AuditConfig{
		Cells:   cellDBs(t, ctx, cl, set),
		Layout:  shard.Layout{Databases: int(set.Spec.Template.Shards.Databases), TablesPerDB: int(set.Spec.Template.Shards.TablesPerDatabase)},
		Routing: routingTable(t, ctx, cl, set),
		From:    from.Add(-2 * time.Second), To: time.Now().Add(time.Second),
		DrainTimeout: 2 * time.Minute,
		Created:      res.Created, Shares: res.Shares,
	})
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	for _, c := range rep.Cells {
		t.Logf("audit %s: %d packets, %d receipts, outbox drained in %s", c.Name, c.Packets, c.Receipts, c.DrainedIn.Round(time.Millisecond))
	}
	if rep.Checked.Created != len(res.Created) || rep.Checked.Shares != len(res.Shares) {
		t.Errorf("audit checked %d packets and %d shares of the client's %d and %d", rep.Checked.Created, rep.Checked.Shares, len(res.Created), len(res.Shares))
	}
	for _, v := range rep.Violations {
		t.Errorf("audit: %s", v)
	}
}

// scaleOut scales the set from 2 to 3 cells while the festival load runs: a new epoch is
// published and takes effect, the new cell becomes Available, packets created after the epoch
// land in the new cell, and the audit (every packet in the cell owning its slot at its creation
// second, docs/design.md §4.4) is clean over everything created before, during and after.
func scaleOut(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
		t.Fatal(err)
	}
	epoch0 := set.Status.Routing.CurrentEpoch
	gw := gatewayURL(t, ctx, cl, set)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	type outcome struct {
		res *loadgen.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		// No routing table for the client's own misroute check: it changes under the run; the
		// audit checks placement against the final table, which holds every epoch.
		res, err := loadgen.Run(loadCtx, loadgen.Config{
			Gateway: gw, Concurrency: 8, Duration: 5 * time.Minute,
			Groups: 40, Members: 30, HotPackets: 2, HotMembers: 200, HotShare: 0.3,
			MaxCount: int(set.Spec.Limits.MaxCount), MaxTotalCents: set.Spec.Limits.MaxTotalCents, RunID: "scale",
		})
		done <- outcome{res, err}
	}()
	cl.run(t, "scale", "rps", set.Name, "-n", set.Namespace, "--replicas=3")
	var effective time.Time
	poll(t, "a new epoch with 3 cells, in effect, every cell Available", 6*time.Minute, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		r := set.Status.Routing
		if r.CurrentEpoch <= epoch0 || len(r.Epochs) == 0 {
			return false, fmt.Errorf("epoch %d", r.CurrentEpoch)
		}
		effective = r.Epochs[len(r.Epochs)-1].EffectiveTime.Time
		if time.Now().Before(effective) {
			return false, fmt.Errorf("epoch %d takes effect at %s", r.CurrentEpoch, effective)
		}
		return set.Status.ReadyCells == 3 && meta.IsStatusConditionTrue(set.Status.Conditions, rpv1.SetAvailable),
			fmt.Errorf("%d ready cells", set.Status.ReadyCells)
	})
	// Some load under the new epoch before stopping it.
	newCell := set.CellName(2)
	select {
	case <-time.After(20 * time.Second):
	case o := <-done:
		t.Fatalf("the load ended before the new epoch had load: %v", o.err)
	}
	stopLoad()
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	res := o.res
	t.Logf("%d opens in %s (%.0f/s), %d packets, %d throttled, %d errors; epoch %d effective %s",
		res.Opens, res.Elapsed.Round(time.Millisecond), res.OpensPerSec, len(res.Created), res.Throttled, res.Errors,
		set.Status.Routing.CurrentEpoch, effective.Format(time.RFC3339))
	// While a wrap key's home moves to the new epoch's cell, docs/api.md has the gateway answer
	// 503 key_handover with Retry-After: a refusal that changes nothing. Any other failure is a
	// breach.
	handovers := int64(0)
	for _, v := range res.Verbs {
		for outcome, n := range v.Outcomes {
			switch {
			case strings.HasPrefix(outcome, "2"), outcome == "409 exhausted", strings.HasPrefix(outcome, "429 "):
			case outcome == "503 key_handover":
				handovers += n
			default:
				t.Errorf("%s: %d answers %q under the scale-out", v.Verb, n, outcome)
			}
		}
	}
	t.Logf("%d refusals during the key hand-over; first unexpected answers: %v", handovers, res.ErrorSamples)
	perCell := map[string]int{}
	for _, p := range res.Created {
		perCell[p.Cell]++
	}
	t.Logf("packets per cell: %v", perCell)
	if perCell[newCell] == 0 {
		t.Errorf("no packet landed in the new cell %s: %v", newCell, perCell)
	}
	audit(t, ctx, cl, set, res.Started, res)
}

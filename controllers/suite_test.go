package controllers_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// noDatabase is a cell database opener for cells whose MariaDB never came up. It is every test
// manager's default: the operator's own opener resolves the cells' Service names, and a test
// must neither send a lookup off the machine nor wait on a resolver.
func noDatabase(_ context.Context, cell *rpv1.RedPacketCell, _ *corev1.Secret) (*sql.DB, error) {
	return nil, fmt.Errorf("dial %s: connection refused", cell.MySQLName())
}

// testOptions gives the options a test manager runs with: opts, or none, with noDatabase unless
// the test brings its own databases.
func testOptions(opts []controllers.Options) controllers.Options {
	var o controllers.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.OpenCellDB == nil {
		o.OpenCellDB = noDatabase
	}
	return o
}

// startManager runs the operator's controllers against env until the returned stop is called.
func startManager(t *testing.T, env *envtestutil.Env, opts ...controllers.Options) (stop func()) {
	t.Helper()
	_, stop = startManagerWith(t, env, env.Config, opts...)
	return stop
}

// startManagerWith runs the controllers as the user of cfg, with the cache the operator's
// main configures.
func startManagerWith(t *testing.T, env *envtestutil.Env, cfg *rest.Config, opts ...controllers.Options) (manager.Manager, func()) {
	t.Helper()
	return runManager(t, env, cfg, nil, func(err error) { t.Errorf("manager: %v", err) }, opts...)
}

// runManager starts a manager as the user of cfg with the operator's cache and controllers;
// tune, when not nil, adjusts its options first (a watch error handler, a cache sync timeout);
// failed hears how the manager ended if not by its cancellation.
func runManager(t *testing.T, env *envtestutil.Env, cfg *rest.Config, tune func(*ctrl.Options), failed func(error), opts ...controllers.Options) (manager.Manager, func()) {
	t.Helper()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	mo := ctrl.Options{
		Scheme: env.Scheme,
		Cache:  cache.Options{ByObject: controllers.CacheByObject()},
		// A restarted manager in the same process registers the same controller names.
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	}
	if tune != nil {
		tune(&mo)
	}
	mgr, err := ctrl.NewManager(cfg, mo)
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.Setup(mgr, testOptions(opts)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil && !errors.Is(err, context.Canceled) {
			failed(err)
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return mgr, stop
}

func loadSample(t *testing.T) *rpv1.RedPacketSet {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(envtestutil.RepoRoot(), "config", "samples", "redpacket_v1alpha1_redpacketset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	set := &rpv1.RedPacketSet{}
	if err := yaml.UnmarshalStrict(data, set); err != nil {
		t.Fatal(err)
	}
	set.Namespace = "default"
	return set
}

func controllerOf(obj metav1.Object) *metav1.OwnerReference { return metav1.GetControllerOf(obj) }

func ownedBy(obj metav1.Object, owner metav1.Object, kind string) error {
	ref := controllerOf(obj)
	if ref == nil {
		return fmt.Errorf("%s has no controller reference", obj.GetName())
	}
	if ref.Kind != kind || ref.Name != owner.GetName() || ref.UID != owner.GetUID() || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		return fmt.Errorf("%s is controlled by %s/%s (uid %s), want %s/%s", obj.GetName(), ref.Kind, ref.Name, ref.UID, kind, owner.GetName())
	}
	return nil
}

func getSet(t *testing.T, c client.Client, key types.NamespacedName) *rpv1.RedPacketSet {
	t.Helper()
	set := &rpv1.RedPacketSet{}
	if err := c.Get(context.Background(), key, set); err != nil {
		t.Fatal(err)
	}
	return set
}

func condition(conds []metav1.Condition, typ string) (metav1.ConditionStatus, string) {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil {
		return "", ""
	}
	return c.Status, c.Reason
}

func routingTable(ctx context.Context, c client.Client, set *rpv1.RedPacketSet) (*routing.Table, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.RoutingConfigMapName()}, cm); err != nil {
		return nil, err
	}
	return routing.Parse([]byte(cm.Data[rpv1.RoutingFile]))
}

func listCells(ctx context.Context, c client.Client, set *rpv1.RedPacketSet) ([]rpv1.RedPacketCell, error) {
	l := &rpv1.RedPacketCellList{}
	err := c.List(ctx, l, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name})
	return l.Items, err
}

// markReady plays the kubelet and the built-in controllers, which envtest does not run.
func markReady(ctx context.Context, c client.Client, cell *rpv1.RedPacketCell, readyServers int32) error {
	sts := &appsv1.StatefulSet{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLName()}, sts); err != nil {
		return err
	}
	sts.Status.Replicas, sts.Status.ReadyReplicas, sts.Status.ObservedGeneration = 1, 1, sts.Generation
	if err := c.Status().Update(ctx, sts); err != nil {
		return err
	}
	dep := &appsv1.Deployment{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.ServerName()}, dep); err != nil {
		return err
	}
	dep.Status.Replicas, dep.Status.ReadyReplicas, dep.Status.ObservedGeneration = *dep.Spec.Replicas, readyServers, dep.Generation
	dep.Status.UpdatedReplicas, dep.Status.AvailableReplicas = *dep.Spec.Replicas, readyServers
	return c.Status().Update(ctx, dep)
}

func TestOperator(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	// The operator's clock runs ahead by skew, so a rebalance can take effect without waiting
	// out the delay's floor.
	var skew atomic.Int64
	clock := controllers.Options{Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }}
	stopFirst := startManager(t, env, clock)

	set := loadSample(t)
	set.Spec.RebalanceDelay = &rpv1.Duration{Duration: time.Minute}
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)

	t.Run("sample set yields its children", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "four cells owned by the set", func() error {
			cells, err := listCells(ctx, c, set)
			if err != nil {
				return err
			}
			if len(cells) != 4 {
				return fmt.Errorf("%d cells", len(cells))
			}
			for _, cell := range cells {
				if err := ownedBy(&cell, set, "RedPacketSet"); err != nil {
					return err
				}
			}
			return nil
		})
		cells, _ := listCells(ctx, c, set)
		// 40,000 opens/s over 4 cells is 10,000 per cell; a third in reserve makes 15,000,
		// or 5,000 per zone: 2 servers of 2,500 in each of 3 zones.
		for _, cell := range cells {
			cell := cell
			if cell.Spec.Servers != 6 {
				t.Errorf("cell %s plans %d servers, want 6", cell.Name, cell.Spec.Servers)
			}
			for _, z := range cell.Spec.ServersPerZone {
				if z.Servers != 2 {
					t.Errorf("cell %s zone %s: %d servers, want 2", cell.Name, z.Zone, z.Servers)
				}
			}
			n := 0
			for _, r := range cell.Spec.Slots {
				n += int(r.End-r.Start) + 1
			}
			if n != 250 {
				t.Errorf("cell %s owns %d slots, want 250", cell.Name, n)
			}
			testenv.Eventually(t, 30*time.Second, "children of "+cell.Name, func() error { return checkCellChildren(ctx, c, &cell, set) })
		}
		testenv.Eventually(t, 30*time.Second, "routing configmap and gateway", func() error {
			tbl, err := routingTable(ctx, c, set)
			if err != nil {
				return err
			}
			if len(tbl.Epochs) != 1 || len(tbl.Epochs[0].Cells()) != 4 {
				return fmt.Errorf("routing table %+v", tbl.Epochs)
			}
			dep := &appsv1.Deployment{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.GatewayName()}, dep); err != nil {
				return err
			}
			if err := ownedBy(dep, set, "RedPacketSet"); err != nil {
				return err
			}
			svc := &corev1.Service{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.GatewayName()}, svc); err != nil {
				return err
			}
			sec := &corev1.Secret{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.SigningSecretName()}, sec); err != nil {
				return err
			}
			if len(sec.Data["key"]) < 32 {
				return fmt.Errorf("signing key too short")
			}
			return ownedBy(sec, set, "RedPacketSet")
		})
	})

	t.Run("every condition is set and unready children degrade the set", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "every condition with a reason", func() error {
			s := getSet(t, c, key)
			for _, typ := range []string{rpv1.SetAvailable, rpv1.SetProgressing, rpv1.SetDegraded, rpv1.SetZoneFailureTolerant, rpv1.SetRebalancing, rpv1.SetSlotsMasked, rpv1.SetCellsServing} {
				cond := meta.FindStatusCondition(s.Status.Conditions, typ)
				if cond == nil || cond.Reason == "" {
					return fmt.Errorf("condition %s missing or without reason", typ)
				}
				if cond.ObservedGeneration != s.Generation {
					return fmt.Errorf("condition %s at generation %d, set at %d", typ, cond.ObservedGeneration, s.Generation)
				}
			}
			if st, r := condition(s.Status.Conditions, rpv1.SetDegraded); st != metav1.ConditionTrue || r != rpv1.ReasonCellsUnavailable {
				return fmt.Errorf("Degraded %s/%s, want True/CellsUnavailable", st, r)
			}
			if st, _ := condition(s.Status.Conditions, rpv1.SetAvailable); st != metav1.ConditionFalse {
				return fmt.Errorf("Available %s with no ready child", st)
			}
			if st, r := condition(s.Status.Conditions, rpv1.SetZoneFailureTolerant); st != metav1.ConditionTrue || r != rpv1.ReasonHeadroomSufficient {
				return fmt.Errorf("ZoneFailureTolerant %s/%s", st, r)
			}
			if st, r := condition(s.Status.Conditions, rpv1.SetSlotsMasked); st != metav1.ConditionFalse || r != rpv1.ReasonNoMasks {
				return fmt.Errorf("SlotsMasked %s/%s", st, r)
			}
			if s.Status.ObservedGeneration != s.Generation {
				return fmt.Errorf("observedGeneration %d, generation %d", s.Status.ObservedGeneration, s.Generation)
			}
			return nil
		})
	})

	t.Run("ready children make the set available", func(t *testing.T) {
		cells, _ := listCells(ctx, c, set)
		for i := range cells {
			if err := markReady(ctx, c, &cells[i], cells[i].Spec.Servers); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, 30*time.Second, "set available", func() error {
			s := getSet(t, c, key)
			if st, r := condition(s.Status.Conditions, rpv1.SetAvailable); st != metav1.ConditionTrue || r != rpv1.ReasonAllCellsAvailable {
				return fmt.Errorf("Available %s/%s", st, r)
			}
			if st, _ := condition(s.Status.Conditions, rpv1.SetDegraded); st != metav1.ConditionFalse {
				return fmt.Errorf("Degraded %s", st)
			}
			if s.Status.ReadyCells != 4 {
				return fmt.Errorf("readyCells %d", s.Status.ReadyCells)
			}
			return nil
		})
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(0)}, cell); err != nil {
			t.Fatal(err)
		}
		for _, typ := range []string{rpv1.CellAvailable, rpv1.CellDatabaseReady, rpv1.CellCacheReady, rpv1.CellServersReady} {
			if st, _ := condition(cell.Status.Conditions, typ); st != metav1.ConditionTrue {
				t.Errorf("cell condition %s is %s", typ, st)
			}
		}
	})

	t.Run("printer columns are filled", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "table view", func() error { return checkTable(ctx, env, set) })
	})

	t.Run("a server outage degrades the set with a reason", func(t *testing.T) {
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(2)}, cell); err != nil {
			t.Fatal(err)
		}
		if err := markReady(ctx, c, cell, 3); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, "degraded naming the cell", func() error {
			s := getSet(t, c, key)
			cond := meta.FindStatusCondition(s.Status.Conditions, rpv1.SetDegraded)
			if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != rpv1.ReasonCellsUnavailable {
				return fmt.Errorf("Degraded %+v", cond)
			}
			if !strings.Contains(cond.Message, cell.Name) || !strings.Contains(cond.Message, rpv1.ReasonServersNotReady) {
				return fmt.Errorf("message %q does not name %s and its reason", cond.Message, cell.Name)
			}
			return nil
		})
		if err := markReady(ctx, c, cell, cell.Spec.Servers); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a cell that cannot serve is named in CellsServing", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "every cell serving", func() error {
			s := getSet(t, c, key)
			if st, r := condition(s.Status.Conditions, rpv1.SetCellsServing); st != metav1.ConditionTrue || r != rpv1.ReasonAllCellsServing {
				return fmt.Errorf("CellsServing %s/%s", st, r)
			}
			return nil
		})
		cell := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.CellName(1)}, cell); err != nil {
			t.Fatal(err)
		}
		if err := markReady(ctx, c, cell, 0); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, "CellsServing names the down cell only", func() error {
			s := getSet(t, c, key)
			cond := meta.FindStatusCondition(s.Status.Conditions, rpv1.SetCellsServing)
			if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != rpv1.ReasonCellsNotServing {
				return fmt.Errorf("CellsServing %+v", cond)
			}
			if !strings.Contains(cond.Message, cell.Name+" (no ready server)") || strings.Contains(cond.Message, set.CellName(0)) {
				return fmt.Errorf("message %q should name %s alone", cond.Message, cell.Name)
			}
			return nil
		})
		if err := markReady(ctx, c, cell, cell.Spec.Servers); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("scaling 4 to 6 cells schedules a minimal rebalance", func(t *testing.T) {
		scale := &autoscalingv1.Scale{}
		if err := c.SubResource("scale").Get(ctx, set, scale); err != nil {
			t.Fatal(err)
		}
		scale.Spec.Replicas = 6
		if err := c.SubResource("scale").Update(ctx, set, client.WithSubResourceBody(scale)); err != nil {
			t.Fatal(err)
		}
		var before *routing.Epoch
		testenv.Eventually(t, 30*time.Second, "epoch 2 scheduled", func() error {
			tbl, err := routingTable(ctx, c, set)
			if err != nil {
				return err
			}
			if len(tbl.Epochs) != 2 {
				return fmt.Errorf("%d epochs", len(tbl.Epochs))
			}
			before = &tbl.Epochs[0]
			next := tbl.Epochs[1]
			if len(next.Cells()) != 6 || !next.EffectiveTime.After(before.EffectiveTime) {
				return fmt.Errorf("epoch 2 %+v", next)
			}
			moved := 0
			for s := 0; s < tbl.SlotCount; s++ {
				if before.Owner(s) != next.Owner(s) {
					moved++
					if o := next.Owner(s); o != set.CellName(4) && o != set.CellName(5) {
						return fmt.Errorf("slot %d moved to old cell %s", s, o)
					}
				}
			}
			// 1000 slots over 6 cells: the four old cells keep 167 each (the remainder stays
			// where it already is), the two new cells take 166 each, nothing else moves.
			if moved != 332 {
				return fmt.Errorf("moved %d slots, want the new cells' share only", moved)
			}
			cells, err := listCells(ctx, c, set)
			if err != nil {
				return err
			}
			if len(cells) != 6 {
				return fmt.Errorf("%d cells", len(cells))
			}
			return nil
		})
		testenv.Eventually(t, 30*time.Second, "rebalance reported as pending", func() error {
			s := getSet(t, c, key)
			if st, r := condition(s.Status.Conditions, rpv1.SetRebalancing); st != metav1.ConditionTrue || r == rpv1.ReasonStable {
				return fmt.Errorf("Rebalancing %s/%s", st, r)
			}
			return nil
		})
		skew.Store(int64(2 * time.Minute))
		touch(t, ctx, c, set.CellName(0))
		testenv.Eventually(t, 30*time.Second, "rebalance reported then settled", func() error {
			s := getSet(t, c, key)
			st, r := condition(s.Status.Conditions, rpv1.SetRebalancing)
			if s.Status.Routing.CurrentEpoch != 2 {
				return fmt.Errorf("status epoch %d", s.Status.Routing.CurrentEpoch)
			}
			// The epoch takes effect a minute after the scale; the clock moved past it.
			if st == metav1.ConditionTrue && r == rpv1.ReasonEpochPending {
				return fmt.Errorf("still pending")
			}
			if st != metav1.ConditionFalse || r != rpv1.ReasonStable {
				return fmt.Errorf("Rebalancing %s/%s", st, r)
			}
			return nil
		})
	})

	t.Run("a restarted operator converges with no writes", func(t *testing.T) {
		cells, _ := listCells(ctx, c, set)
		for i := range cells {
			if err := markReady(ctx, c, &cells[i], cells[i].Spec.Servers); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, 30*time.Second, "six cells available", func() error {
			if s := getSet(t, c, key); s.Status.ReadyCells != 6 {
				return fmt.Errorf("readyCells %d", s.Status.ReadyCells)
			}
			return nil
		})
		waitReconciled(t, 0)
		before := versions(ctx, t, c, set)
		stopFirst()
		stopRestart := startManager(t, env, clock)
		defer stopRestart()
		// A new manager reconciles everything once on start (one set, six cells); wait for
		// that, then compare.
		waitReconciled(t, 7)
		after := versions(ctx, t, c, set)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s rewritten by the restarted operator: resourceVersion %s -> %s", k, v, after[k])
			}
		}
		if len(after) != len(before) {
			t.Errorf("objects %d before restart, %d after", len(before), len(after))
		}
	})
}

func checkCellChildren(ctx context.Context, c client.Client, cell *rpv1.RedPacketCell, set *rpv1.RedPacketSet) error {
	ns := cell.Namespace
	sts := &appsv1.StatefulSet{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: cell.MySQLName()}, sts); err != nil {
		return err
	}
	if err := ownedBy(sts, cell, "RedPacketCell"); err != nil {
		return err
	}
	args := strings.Join(sts.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--innodb-flush-log-at-trx-commit=1") || !strings.Contains(args, "--sync-binlog=1") {
		return fmt.Errorf("mysql args not durable: %s", args)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.Template.Spec.Containers[0].ReadinessProbe == nil {
		return fmt.Errorf("mysql without PVC or readiness probe")
	}
	dep := &appsv1.Deployment{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: cell.ServerName()}, dep); err != nil {
		return err
	}
	if err := ownedBy(dep, cell, "RedPacketCell"); err != nil {
		return err
	}
	if *dep.Spec.Replicas != cell.Spec.Servers {
		return fmt.Errorf("deployment replicas %d, cell plans %d", *dep.Spec.Replicas, cell.Spec.Servers)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 2 || pod.Containers[1].Name != "memcached" {
		return fmt.Errorf("server pod lacks the memcached sidecar")
	}
	if p := pod.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		return fmt.Errorf("server readiness probe is not /readyz")
	}
	if len(pod.TopologySpreadConstraints) != 1 || pod.TopologySpreadConstraints[0].TopologyKey != rpv1.ZoneTopologyKey || pod.TopologySpreadConstraints[0].MaxSkew != 1 {
		return fmt.Errorf("server pods do not spread over zones: %+v", pod.TopologySpreadConstraints)
	}
	zones := pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Values
	if strings.Join(zones, ",") != strings.Join(set.Spec.Zones, ",") {
		return fmt.Errorf("server pods allowed in zones %v, want %v", zones, set.Spec.Zones)
	}
	for _, a := range pod.Containers[0].Args {
		if strings.Contains(a, "RP_DB_PASSWORD") {
			return fmt.Errorf("the database password is expanded into the server args: %s", a)
		}
	}
	for _, name := range []string{cell.MySQLName(), cell.ServerName()} {
		svc := &corev1.Service{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, svc); err != nil {
			return err
		}
		if err := ownedBy(svc, cell, "RedPacketCell"); err != nil {
			return err
		}
	}
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: cell.ConfigMapName()}, cm); err != nil {
		return err
	}
	if err := ownedBy(cm, cell, "RedPacketCell"); err != nil {
		return err
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: cell.MySQLSecretName()}, sec); err != nil {
		return err
	}
	// The credentials live as long as the database volume, which outlives the cell.
	if len(sec.OwnerReferences) != 0 {
		return fmt.Errorf("credentials %s have owners %+v: deleting the cell would lose its volume's credentials", sec.Name, sec.OwnerReferences)
	}
	if len(sec.Data["password"]) < 32 || len(sec.Data["root-password"]) < 32 {
		return fmt.Errorf("generated passwords too short")
	}
	pdb := &policyv1.PodDisruptionBudget{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: cell.ServerName()}, pdb); err != nil {
		return err
	}
	if err := ownedBy(pdb, cell, "RedPacketCell"); err != nil {
		return err
	}
	for k, v := range map[string]string{rpv1.LabelSet: set.Name, rpv1.LabelCell: cell.Name} {
		if dep.Labels[k] != v || sts.Labels[k] != v {
			return fmt.Errorf("label %s missing on children", k)
		}
	}
	return nil
}

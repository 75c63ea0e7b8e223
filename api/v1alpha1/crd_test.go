package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
)

// The API's validation lives in the CRD (OpenAPI markers and CEL rules), so it is tested
// against a real kube-apiserver: every rule a wrong manifest could hit has a case here.

func minimalSet(name string) *rpv1.RedPacketSet {
	return &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a", "zone-b", "zone-c"},
			Cells:    4,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 40000, PerServerOpensPerSecond: 2500},
		},
	}
}

func TestCRDs(t *testing.T) {
	env := envtestutil.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := env.Client

	t.Run("samples are accepted", func(t *testing.T) {
		dir := filepath.Join(envtestutil.RepoRoot(), "config", "samples")
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "redpacket_") {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			var set rpv1.RedPacketSet
			if err := yaml.UnmarshalStrict(data, &set); err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			set.Namespace = "default"
			if err := c.Create(ctx, &set); err != nil {
				t.Fatalf("%s rejected: %v", e.Name(), err)
			}
			n++
		}
		if n == 0 {
			t.Fatal("no samples found in config/samples")
		}
	})

	t.Run("defaults are applied", func(t *testing.T) {
		set := &rpv1.RedPacketSet{
			ObjectMeta: metav1.ObjectMeta{Name: "defaults", Namespace: "default"},
			Spec: rpv1.RedPacketSetSpec{
				Zones:    []string{"zone-a", "zone-b"},
				Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 500},
			},
		}
		if err := c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		got := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		s := got.Spec
		checks := []struct {
			field     string
			got, want any
		}{
			{"cells", s.Cells, int32(1)},
			{"slotCount", s.SlotCount, int32(1000)},
			{"region", s.Region, int32(0)},
			{"capacity.minServersPerZone", s.Capacity.MinServersPerZone, int32(1)},
			{"template.server.image", s.Template.Server.Image, "ghcr.io/redpacketset/cellserver:v0.1.0"},
			{"template.mysql.image", s.Template.MySQL.Image, "mariadb:10.11"},
			{"template.mysql.replicas", s.Template.MySQL.Replicas, int32(1)},
			{"template.mysql.storage", qtyOf(s.Template.MySQL.Storage), "10Gi"},
			{"template.memcached.memoryMB", s.Template.Memcached.MemoryMB, int32(64)},
			{"template.queue.workers", s.Template.Queue.Workers, int32(64)},
			{"template.queue.depth", s.Template.Queue.Depth, int32(1024)},
			{"template.queue.batchMax", s.Template.Queue.BatchMax, int32(128)},
			{"template.guard.limit", s.Template.Guard.Limit, int32(4)},
			{"template.shards.databases", s.Template.Shards.Databases, int32(100)},
			{"template.shards.tablesPerDatabase", s.Template.Shards.TablesPerDatabase, int32(10)},
			{"gateway.replicas", s.Gateway.Replicas, int32(2)},
			{"masking.errorThreshold", s.Masking.ErrorThreshold, int32(50)},
			{"masking.window", durOf(s.Masking.Window), time.Minute},
			{"masking.coolDown", durOf(s.Masking.CoolDown), 5 * time.Minute},
			{"masking.maxMaskedPercent", s.Masking.MaxMaskedPercent, int32(10)},
			{"limits.maxTotalCents", s.Limits.MaxTotalCents, int64(20000)},
			{"limits.maxCount", s.Limits.MaxCount, int32(100)},
			{"limits.expiry", durOf(s.Limits.Expiry), 24 * time.Hour},
			{"rebalanceDelay", durOf(s.RebalanceDelay), 2 * time.Minute},
		}
		for _, ch := range checks {
			if ch.got != ch.want {
				t.Errorf("spec.%s defaulted to %v, want %v", ch.field, ch.got, ch.want)
			}
		}
		if s.Headroom != nil {
			t.Errorf("spec.headroom defaulted to %v; it must stay unset so it follows the zones", *s.Headroom)
		}
		if h := got.HeadroomOrDefault(); h != 0.5 {
			t.Errorf("headroom in force with 2 zones = %v, want 0.5", h)
		}
	})

	t.Run("invalid sets are rejected naming the field", func(t *testing.T) {
		cases := []struct {
			name   string
			mutate func(*rpv1.RedPacketSet)
			want   string
		}{
			{"no zones", func(s *rpv1.RedPacketSet) { s.Spec.Zones = nil }, "spec.zones"},
			{"empty zone list", func(s *rpv1.RedPacketSet) { s.Spec.Zones = []string{} }, "spec.zones"},
			{"duplicate zones", func(s *rpv1.RedPacketSet) { s.Spec.Zones = []string{"a", "a"} }, "spec.zones[1]"},
			{"empty zone name", func(s *rpv1.RedPacketSet) { s.Spec.Zones = []string{""} }, "spec.zones[0]"},
			{"zone not a label value", func(s *rpv1.RedPacketSet) { s.Spec.Zones = []string{"zone a"} }, "spec.zones[0]"},
			{"zero cells", func(s *rpv1.RedPacketSet) { s.Spec.Cells = -1 }, "spec.cells"},
			{"more cells than slots", func(s *rpv1.RedPacketSet) { s.Spec.SlotCount = 10; s.Spec.Cells = 11 }, "spec.cells must not exceed spec.slotCount"},
			{"headroom one", func(s *rpv1.RedPacketSet) { s.Spec.Headroom = ptr.To(1.0) }, "spec.headroom"},
			{"negative headroom", func(s *rpv1.RedPacketSet) { s.Spec.Headroom = ptr.To(-0.1) }, "spec.headroom"},
			{"slot count above 1000", func(s *rpv1.RedPacketSet) { s.Spec.SlotCount = 1001 }, "spec.slotCount"},
			{"negative slot count", func(s *rpv1.RedPacketSet) { s.Spec.SlotCount = -5 }, "spec.slotCount"},
			{"region above 3", func(s *rpv1.RedPacketSet) { s.Spec.Region = 4 }, "spec.region"},
			{"zero peak", func(s *rpv1.RedPacketSet) { s.Spec.Capacity.PeakOpensPerSecond = 0 }, "spec.capacity.peakOpensPerSecond"},
			{"zero per-server capacity", func(s *rpv1.RedPacketSet) { s.Spec.Capacity.PerServerOpensPerSecond = 0 }, "spec.capacity.perServerOpensPerSecond"},
			{"negative min servers", func(s *rpv1.RedPacketSet) { s.Spec.Capacity.MinServersPerZone = -1 }, "spec.capacity.minServersPerZone"},
			{"negative max total", func(s *rpv1.RedPacketSet) { s.Spec.Limits.MaxTotalCents = -1 }, "spec.limits.maxTotalCents"},
			{"negative max count", func(s *rpv1.RedPacketSet) { s.Spec.Limits.MaxCount = -1 }, "spec.limits.maxCount"},
			{"max count too large", func(s *rpv1.RedPacketSet) { s.Spec.Limits.MaxCount = 10001 }, "spec.limits.maxCount"},
			{"total below count", func(s *rpv1.RedPacketSet) { s.Spec.Limits.MaxTotalCents = 50; s.Spec.Limits.MaxCount = 100 }, "spec.limits.maxTotalCents must be at least spec.limits.maxCount"},
			{"zero expiry", func(s *rpv1.RedPacketSet) { s.Spec.Limits.Expiry = &rpv1.Duration{Duration: -time.Hour} }, "spec.limits.expiry must be a positive duration"},
			{"zero masking window", func(s *rpv1.RedPacketSet) { s.Spec.Masking.Window = &rpv1.Duration{Duration: -time.Second} }, "spec.masking.window must be a positive duration"},
			{"negative cool-down", func(s *rpv1.RedPacketSet) { s.Spec.Masking.CoolDown = &rpv1.Duration{Duration: -time.Second} }, "spec.masking.coolDown must not be negative"},
			{"mask budget above 100", func(s *rpv1.RedPacketSet) { s.Spec.Masking.MaxMaskedPercent = 101 }, "spec.masking.maxMaskedPercent"},
			{"negative error threshold", func(s *rpv1.RedPacketSet) { s.Spec.Masking.ErrorThreshold = -1 }, "spec.masking.errorThreshold"},
			{"zero queue workers", func(s *rpv1.RedPacketSet) { s.Spec.Template.Queue.Workers = -1 }, "spec.template.queue.workers"},
			{"batch too large", func(s *rpv1.RedPacketSet) { s.Spec.Template.Queue.BatchMax = 5000 }, "spec.template.queue.batchMax"},
			{"negative guard limit", func(s *rpv1.RedPacketSet) { s.Spec.Template.Guard.Limit = -1 }, "spec.template.guard.limit"},
			{"too many shard databases", func(s *rpv1.RedPacketSet) { s.Spec.Template.Shards.Databases = 101 }, "spec.template.shards.databases"},
			{"too many shard tables", func(s *rpv1.RedPacketSet) { s.Spec.Template.Shards.TablesPerDatabase = 11 }, "spec.template.shards.tablesPerDatabase"},
			{"mysql replicas above 5", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Replicas = 6 }, "spec.template.mysql.replicas"},
			{"memcached too small", func(s *rpv1.RedPacketSet) { s.Spec.Template.Memcached.MemoryMB = 4 }, "spec.template.memcached.memoryMB"},
			{"zero gateway replicas", func(s *rpv1.RedPacketSet) { s.Spec.Gateway.Replicas = -1 }, "spec.gateway.replicas"},
			// Finding 11 §1: −10m put the epoch in the past, 0s one second ahead.
			{"negative rebalance delay", func(s *rpv1.RedPacketSet) { s.Spec.RebalanceDelay = &rpv1.Duration{Duration: -10 * time.Minute} }, "spec.rebalanceDelay must be at least 1m"},
			{"zero rebalance delay", func(s *rpv1.RedPacketSet) { s.Spec.RebalanceDelay = &rpv1.Duration{} }, "spec.rebalanceDelay must be at least 1m"},
			{"rebalance delay below the floor", func(s *rpv1.RedPacketSet) { s.Spec.RebalanceDelay = &rpv1.Duration{Duration: 59 * time.Second} }, "spec.rebalanceDelay must be at least 1m"},
			// Issue 14 §1: each of these was stored and failed later.
			{"zero storage", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Storage = ptr.To(resource.MustParse("0")) }, "spec.template.mysql.storage must be a positive quantity"},
			{"negative storage", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Storage = ptr.To(resource.MustParse("-10Gi")) }, "spec.template.mysql.storage must be a positive quantity"},
			{"server requests above limits", func(s *rpv1.RedPacketSet) { s.Spec.Template.Server.Resources = overLimit() }, "spec.template.server.resources: a cpu, memory or ephemeral-storage request must not exceed its limit"},
			{"mysql requests above limits", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Resources = overLimit() }, "spec.template.mysql.resources: a cpu, memory or ephemeral-storage request must not exceed its limit"},
			{"memcached requests above limits", func(s *rpv1.RedPacketSet) { s.Spec.Template.Memcached.Resources = overLimit() }, "spec.template.memcached.resources: a cpu, memory or ephemeral-storage request must not exceed its limit"},
			{"gateway requests above limits", func(s *rpv1.RedPacketSet) { s.Spec.Gateway.Resources = overLimit() }, "spec.gateway.resources: a cpu, memory or ephemeral-storage request must not exceed its limit"},
			{"server image with surrounding spaces", func(s *rpv1.RedPacketSet) { s.Spec.Template.Server.Image = " ghcr.io/redpacketset/cellserver:v0.1.0 " }, "spec.template.server.image"},
			{"mysql image with a space inside", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Image = "mariadb: 10.11" }, "spec.template.mysql.image"},
			{"memcached image with a tab", func(s *rpv1.RedPacketSet) { s.Spec.Template.Memcached.Image = "memcached:1.6\t" }, "spec.template.memcached.image"},
			{"gateway image with a newline", func(s *rpv1.RedPacketSet) { s.Spec.Gateway.Image = "ghcr.io/redpacketset/gateway:v0.1.0\n" }, "spec.gateway.image"},
			{"peak that wraps the server count", func(s *rpv1.RedPacketSet) {
				s.Spec.Capacity.PeakOpensPerSecond, s.Spec.Capacity.PerServerOpensPerSecond = 9e18, 1
			}, "spec.capacity.peakOpensPerSecond is more than 10000 servers per cell"},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				set := minimalSet("bad-" + strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"))
				_ = i
				tc.mutate(set)
				err := c.Create(ctx, set)
				if err == nil {
					t.Fatalf("accepted; want an error naming %q", tc.want)
				}
				if !apierrors.IsInvalid(err) {
					t.Fatalf("want Invalid, got %v", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error does not name %q: %v", tc.want, err)
				}
			})
		}
	})

	t.Run("durations that are not durations are refused naming the field", func(t *testing.T) {
		for i, tc := range []struct {
			path  []string
			value any
			want  string
		}{
			{[]string{"spec", "rebalanceDelay"}, "abc", "spec.rebalanceDelay"},
			{[]string{"spec", "rebalanceDelay"}, "5 minutes", "spec.rebalanceDelay"},
			{[]string{"spec", "rebalanceDelay"}, "", "spec.rebalanceDelay"},
			{[]string{"spec", "masking", "window"}, "1d", "spec.masking.window"},
			{[]string{"spec", "masking", "coolDown"}, "soon", "spec.masking.coolDown"},
			{[]string{"spec", "limits", "expiry"}, "24", "spec.limits.expiry"},
		} {
			u := unstructuredSet(t, minimalSet(fmt.Sprintf("bad-duration-%d", i)))
			if err := unstructured.SetNestedField(u.Object, tc.value, tc.path...); err != nil {
				t.Fatal(err)
			}
			err := c.Create(ctx, u)
			if err == nil {
				t.Errorf("%s=%q accepted", strings.Join(tc.path, "."), tc.value)
				continue
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s=%q: %v, want Invalid naming %s", strings.Join(tc.path, "."), tc.value, err, tc.want)
			}
		}
		// Go's own forms are still accepted.
		for i, v := range []string{"90s", "1h30m", "2m0.5s", "1.5h"} {
			u := unstructuredSet(t, minimalSet(fmt.Sprintf("good-duration-%d", i)))
			if err := unstructured.SetNestedField(u.Object, v, "spec", "rebalanceDelay"); err != nil {
				t.Fatal(err)
			}
			if err := c.Create(ctx, u); err != nil {
				t.Errorf("rebalanceDelay %q refused: %v", v, err)
			}
		}
		// A storage written as a bare integer is a quantity too.
		u := unstructuredSet(t, minimalSet("int-storage"))
		if err := unstructured.SetNestedField(u.Object, int64(0), "spec", "template", "mysql", "storage"); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, u); err == nil || !strings.Contains(err.Error(), "spec.template.mysql.storage must be a positive quantity") {
			t.Errorf("storage: 0 (an integer) gave %v", err)
		}
		// Requests at their limits, and requests of resources without limits, are fine.
		ok := minimalSet("requests-at-limits")
		ok.Spec.Template.Server.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1000m")},
		}
		if err := c.Create(ctx, ok); err != nil {
			t.Errorf("requests at their limits refused: %v", err)
		}
	})

	t.Run("immutable fields refuse updates", func(t *testing.T) {
		set := minimalSet("immutable")
		set.Spec.Template.Shards = rpv1.ShardSpec{Databases: 4, TablesPerDatabase: 2}
		if err := c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			mutate func(*rpv1.RedPacketSet)
			want   string
		}{
			{"slot count", func(s *rpv1.RedPacketSet) { s.Spec.SlotCount = 500 }, "spec.slotCount is immutable"},
			{"region", func(s *rpv1.RedPacketSet) { s.Spec.Region = 1 }, "spec.region is immutable"},
			{"shard databases", func(s *rpv1.RedPacketSet) { s.Spec.Template.Shards.Databases = 50 }, "spec.template.shards is immutable"},
			{"shard tables", func(s *rpv1.RedPacketSet) { s.Spec.Template.Shards.TablesPerDatabase = 5 }, "spec.template.shards is immutable"},
			{"shards dropped back to the defaults", func(s *rpv1.RedPacketSet) { s.Spec.Template.Shards = rpv1.ShardSpec{} }, "spec.template.shards is immutable"},
			{"one database instance to three", func(s *rpv1.RedPacketSet) { s.Spec.Template.MySQL.Replicas = 3 }, "spec.template.mysql.replicas cannot change between 1 and more than 1"},
		} {
			got := &rpv1.RedPacketSet{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
				t.Fatal(err)
			}
			tc.mutate(got)
			err := c.Update(ctx, got)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: update gave %v, want an error containing %q", tc.name, err, tc.want)
			}
		}
		// The rest of the template stays mutable.
		got := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		got.Spec.Template.Server.Image = "example.invalid/cellserver:v2"
		if err := c.Update(ctx, got); err != nil {
			t.Errorf("changing the server image beside unchanged shards: %v", err)
		}

		// A replicated set may change its number of replicas, never down to one.
		repl := minimalSet("replicated")
		repl.Spec.Template.MySQL.Replicas = 3
		if err := c.Create(ctx, repl); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			replicas int32
			want     string // "" accepted
		}{{5, ""}, {2, ""}, {1, "spec.template.mysql.replicas cannot change between 1 and more than 1"}} {
			got := &rpv1.RedPacketSet{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(repl), got); err != nil {
				t.Fatal(err)
			}
			got.Spec.Template.MySQL.Replicas = tc.replicas
			err := c.Update(ctx, got)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("replicas 3 -> %d: update gave %v, want %q", tc.replicas, err, tc.want)
			}
		}
	})

	t.Run("invalid cells are rejected naming the field", func(t *testing.T) {
		base := func() *rpv1.RedPacketCell {
			return &rpv1.RedPacketCell{
				ObjectMeta: metav1.ObjectMeta{Name: "cell-x", Namespace: "default"},
				Spec: rpv1.RedPacketCellSpec{SetName: "s", Index: 0, SlotCount: 1000, Zones: []string{"a"}, Servers: 1,
					Slots: []rpv1.SlotRange{{Start: 0, End: 999}}},
			}
		}
		for _, tc := range []struct {
			name   string
			mutate func(*rpv1.RedPacketCell)
			want   string
		}{
			{"no set name", func(c *rpv1.RedPacketCell) { c.Spec.SetName = "" }, "spec.setName"},
			{"no zones", func(c *rpv1.RedPacketCell) { c.Spec.Zones = nil }, "spec.zones"},
			{"slot above 999", func(c *rpv1.RedPacketCell) { c.Spec.Slots[0].End = 1000 }, "spec.slots[0].end"},
			{"negative servers", func(c *rpv1.RedPacketCell) { c.Spec.Servers = -1 }, "spec.servers"},
		} {
			cell := base()
			tc.mutate(cell)
			err := c.Create(ctx, cell)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: create gave %v, want an error naming %q", tc.name, err, tc.want)
			}
		}
		cell := base()
		if err := c.Create(ctx, cell); err != nil {
			t.Fatalf("valid cell rejected: %v", err)
		}
		// kubectl's Draining column reads spec.draining: a cell stored without it shows a
		// blank column instead of false.
		stored := &unstructured.Unstructured{}
		stored.SetGroupVersionKind(rpv1.GroupVersion.WithKind("RedPacketCell"))
		if err := c.Get(ctx, client.ObjectKeyFromObject(cell), stored); err != nil {
			t.Fatal(err)
		}
		if v, found, err := unstructured.NestedBool(stored.Object, "spec", "draining"); err != nil || !found || v {
			t.Errorf("stored spec.draining = %v (found %v, %v), want false present", v, found, err)
		}
		cell.Spec.Index = 3
		if err := c.Update(ctx, cell); err == nil || !strings.Contains(err.Error(), "spec.index is immutable") {
			t.Errorf("changing spec.index gave %v", err)
		}
		cell = &rpv1.RedPacketCell{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(base()), cell); err != nil {
			t.Fatal(err)
		}
		cell.Spec.Template.Shards.Databases = 7
		if err := c.Update(ctx, cell); err == nil || !strings.Contains(err.Error(), "spec.template.shards is immutable") {
			t.Errorf("changing a cell's spec.template.shards gave %v", err)
		}
	})

	t.Run("status subresource", func(t *testing.T) {
		set := minimalSet("status")
		if err := c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		meta.SetStatusCondition(&set.Status.Conditions, metav1.Condition{
			Type: rpv1.SetAvailable, Status: metav1.ConditionTrue, Reason: rpv1.ReasonAllCellsAvailable, Message: "4/4 cells available",
		})
		set.Status.ReadyCells = 4
		set.Status.Cells = 4
		if err := c.Status().Update(ctx, set); err != nil {
			t.Fatalf("status update: %v", err)
		}
		// A spec update must not be able to write status, and vice versa.
		got := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		got.Status.ReadyCells = 0
		got.Spec.Cells = 5
		if err := c.Update(ctx, got); err != nil {
			t.Fatal(err)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.ReadyCells != 4 || got.Spec.Cells != 5 {
			t.Fatalf("spec update leaked into status (readyCells %d) or was lost (cells %d)", got.Status.ReadyCells, got.Spec.Cells)
		}
		if !meta.IsStatusConditionTrue(got.Status.Conditions, rpv1.SetAvailable) {
			t.Fatal("Available condition lost")
		}
	})

	t.Run("scale subresource", func(t *testing.T) {
		set := minimalSet("scaled")
		if err := c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		scale := &autoscalingv1.Scale{}
		if err := c.SubResource("scale").Get(ctx, set, scale); err != nil {
			t.Fatalf("get scale: %v", err)
		}
		if scale.Spec.Replicas != 4 {
			t.Fatalf("scale replicas %d, want the set's 4 cells", scale.Spec.Replicas)
		}
		scale.Spec.Replicas = 6
		if err := c.SubResource("scale").Update(ctx, set, client.WithSubResourceBody(scale)); err != nil {
			t.Fatalf("update scale: %v", err)
		}
		got := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Cells != 6 {
			t.Fatalf("scaling to 6 left spec.cells at %d", got.Spec.Cells)
		}
		scale.Spec.Replicas = 2000
		if err := c.SubResource("scale").Update(ctx, set, client.WithSubResourceBody(scale)); err == nil {
			t.Fatal("scaling beyond the slot count was accepted")
		}
	})
}

// durOf tells an unset duration (-1) apart from any value the API server could default to.
func durOf(d *rpv1.Duration) time.Duration {
	if d == nil {
		return -1
	}
	return d.Duration
}

// overLimit asks for more memory than it allows.
func overLimit() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
	}
}

// unstructuredSet is set as the API sees it, so a test can write values the Go type cannot.
func unstructuredSet(t *testing.T, set *rpv1.RedPacketSet) *unstructured.Unstructured {
	t.Helper()
	set.APIVersion, set.Kind = rpv1.GroupVersion.String(), "RedPacketSet"
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(set)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u
}

func qtyOf(q *resource.Quantity) string {
	if q == nil {
		return "<unset>"
	}
	return q.String()
}

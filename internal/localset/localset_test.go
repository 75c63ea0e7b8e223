package localset

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
)

func TestSampleManifestPlansFourCellsOverThreeZones(t *testing.T) {
	set, err := LoadManifest(filepath.Join("..", "..", DefaultManifest))
	if err != nil {
		t.Fatal(err)
	}
	if set.Name != "festival" || set.Spec.Cells != 4 || len(set.Spec.Zones) != 3 {
		t.Fatalf("sample: %s, %d cells, zones %v", set.Name, set.Spec.Cells, set.Spec.Zones)
	}
	// Fields the sample leaves out take the CRD's defaults.
	if set.Spec.Template.MySQL.Replicas != 1 || set.Spec.Gateway.Replicas != 2 || set.RebalanceDelayOrDefault() != 2*time.Minute {
		t.Errorf("defaults not applied: mysql replicas %d, gateway replicas %d, rebalance %s",
			set.Spec.Template.MySQL.Replicas, set.Spec.Gateway.Replicas, set.RebalanceDelayOrDefault())
	}
}

func TestParseManifest(t *testing.T) {
	minimal := "apiVersion: redpacket.dev/v1alpha1\nkind: RedPacketSet\nmetadata: {name: tiny}\nspec:\n  zones: [a]\n  capacity: {peakOpensPerSecond: 10, perServerOpensPerSecond: 10}\n"
	set, err := ParseManifest([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	s := set.Spec
	if s.Cells != 1 || s.SlotCount != 1000 || s.Template.Shards.Databases != 100 || s.Template.Shards.TablesPerDatabase != 10 ||
		s.Template.Queue.Workers != 64 || s.Template.Queue.BatchMax != 128 || s.Template.Guard.Limit != 4 ||
		s.Limits.MaxCount != 100 || s.Limits.MaxTotalCents != 20000 || s.Limits.ExpiryOrDefault() != 24*time.Hour ||
		s.Template.Memcached.MemoryMB != 64 || s.Capacity.MinServersPerZone != 1 {
		t.Errorf("defaults: %+v", s)
	}
	for name, bad := range map[string]string{
		"typo is refused":       strings.Replace(minimal, "zones:", "zone:", 1),
		"wrong kind":            strings.Replace(minimal, "kind: RedPacketSet", "kind: Deployment", 1),
		"no capacity":           strings.Replace(minimal, "  capacity: {peakOpensPerSecond: 10, perServerOpensPerSecond: 10}\n", "", 1),
		"more cells than slots": minimal + "  cells: 5\n  slotCount: 4\n",
		"total below count":     minimal + "  limits: {maxCount: 50, maxTotalCents: 10}\n",
		"shards beyond 100x10":  minimal + "  template: {shards: {databases: 101}}\n",
		"not yaml":              "{{{",
		"delay not a duration":  minimal + "  rebalanceDelay: abc\n",
		"expiry not a duration": minimal + "  limits: {expiry: 1d}\n",
	} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func fakeFree(start int) func() (int, error) {
	n := start
	return func() (int, error) { n++; return n, nil }
}

func TestAssignPortsKeepsPortsAcrossRuns(t *testing.T) {
	first, err := AssignPorts(nil, []CellNeed{{"c0", 2}, {"c1", 2}}, fakeFree(40000))
	if err != nil {
		t.Fatal(err)
	}
	ports := map[int]bool{first.GatewayPort: true}
	for _, c := range first.Cells {
		for _, p := range append([]int{c.MySQLPort, c.MemcachedPort}, c.ServerPorts...) {
			if ports[p] {
				t.Fatalf("port %d assigned twice", p)
			}
			ports[p] = true
		}
	}
	if len(ports) != 1+2*4 {
		t.Fatalf("%d ports, want 9", len(ports))
	}

	// A second run with the same needs changes nothing, whatever free would offer.
	again, err := AssignPorts(first, []CellNeed{{"c0", 2}, {"c1", 2}}, fakeFree(50000))
	if err != nil {
		t.Fatal(err)
	}
	if again.GatewayPort != first.GatewayPort || !slices.EqualFunc(again.Cells, first.Cells, cellEqual) {
		t.Fatalf("ports moved between runs:\n%+v\n%+v", first, again)
	}

	// Growing: a new cell and a third server get fresh ports that collide with nothing
	// recorded, even when free offers recorded ones first.
	grown, err := AssignPorts(first, []CellNeed{{"c0", 3}, {"c1", 2}, {"c2", 1}}, fakeFree(40000))
	if err != nil {
		t.Fatal(err)
	}
	c0, _ := grown.Cell("c0")
	c2, ok := grown.Cell("c2")
	if !ok || len(c0.ServerPorts) != 3 || len(c2.ServerPorts) != 1 {
		t.Fatalf("grown: %+v", grown.Cells)
	}
	if !slices.Equal(c0.ServerPorts[:2], first.Cells[0].ServerPorts) {
		t.Errorf("existing servers moved: %v then %v", first.Cells[0].ServerPorts, c0.ServerPorts)
	}
	for _, p := range append([]int{c0.ServerPorts[2], c2.MySQLPort, c2.MemcachedPort}, c2.ServerPorts...) {
		if ports[p] {
			t.Errorf("new port %d collides with a recorded one", p)
		}
	}

	// Shrinking keeps the dropped cell's ports: its datadir still holds data.
	shrunk, err := AssignPorts(grown, []CellNeed{{"c0", 1}}, fakeFree(60000))
	if err != nil {
		t.Fatal(err)
	}
	if len(shrunk.Cells) != 3 || shrunk.Cells[0].Name != "c0" || len(shrunk.Cells[0].ServerPorts) != 3 {
		t.Errorf("shrunk: %+v", shrunk.Cells)
	}
	if _, err := AssignPorts(nil, []CellNeed{{"c0", 1}}, func() (int, error) { return 0, errors.New("no ports") }); err == nil {
		t.Error("a failing port source must fail the assignment")
	}
}

func cellEqual(a, b CellState) bool {
	return a.Name == b.Name && a.MySQLPort == b.MySQLPort && a.MemcachedPort == b.MemcachedPort && slices.Equal(a.ServerPorts, b.ServerPorts)
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadState(dir); !errors.Is(err, ErrNoState) {
		t.Fatalf("empty dir: %v, want ErrNoState", err)
	}
	st, err := AssignPorts(nil, []CellNeed{{"x-cell-0", 1}}, fakeFree(41000))
	if err != nil {
		t.Fatal(err)
	}
	st.Set, st.SlotCount, st.Layout = "x", 1000, LayoutState{2, 2, "db_"}
	if err := st.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.GatewayURL() != st.GatewayURL() || got.Layout.Shard().Databases != 2 || got.RoutingPath() != filepath.Join(dir, RoutingFile) {
		t.Errorf("round trip: %+v", got)
	}
	c, _ := got.Cell("x-cell-0")
	if !strings.Contains(c.DSN(), "tcp(127.0.0.1:") || len(c.ServerURLs()) != 1 {
		t.Errorf("cell: dsn %s urls %v", c.DSN(), c.ServerURLs())
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"version": 99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadState(dir); err == nil {
		t.Error("an unknown state version must be refused")
	}
}

func TestNextRouting(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 500, time.UTC)
	cells := []string{"s-cell-0", "s-cell-1"}
	first, run, err := NextRouting(nil, "s", 1000, cells, now, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Epochs) != 1 || !first.Epochs[0].EffectiveTime.Equal(ids.Epoch) || !slices.Equal(run, cells) {
		t.Fatalf("first: %+v run %v", first.Epochs, run)
	}
	if err := first.Validate(); err != nil {
		t.Fatal(err)
	}

	same, _, err := NextRouting(first, "s", 1000, cells, now, 2*time.Minute)
	if err != nil || len(same.Epochs) != 1 {
		t.Fatalf("unchanged cells must keep the table: %+v %v", same, err)
	}

	grown := append(slices.Clone(cells), "s-cell-2")
	next, run, err := NextRouting(first, "s", 1000, grown, now, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Epochs) != 2 || !slices.Equal(run, grown) {
		t.Fatalf("grown: %d epochs, run %v", len(next.Epochs), run)
	}
	e2 := next.Epochs[1]
	if e2.Number != 2 || !e2.EffectiveTime.After(now.Add(2*time.Minute)) || e2.EffectiveTime.Nanosecond() != 0 {
		t.Errorf("epoch 2: %+v", e2)
	}
	// Old packets keep their owner; new ones after the effective time may move.
	if owner, _, _ := next.OwnerAt(0, now); owner != "s-cell-0" {
		t.Errorf("slot 0 before the new epoch: %s", owner)
	}
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}

	// Shrinking back: the removed cell stays running, because epochs still route to it.
	later := e2.EffectiveTime.Add(time.Hour)
	shrunk, run, err := NextRouting(next, "s", 1000, cells, later, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(shrunk.Epochs) != 3 || !slices.Equal(run, grown) {
		t.Errorf("shrunk: %d epochs, run %v (the drained cell must keep running)", len(shrunk.Epochs), run)
	}

	if _, _, err := NextRouting(first, "s", 500, cells, now, time.Minute); err == nil {
		t.Error("changing the slot count must be refused")
	}
}

// TestNextRoutingNeverReusesNumbers is finding 11 §1 for the local SET, which now shares the
// operator's rule (plan.NextTable): a pending epoch re-planned far from its effective time
// gets a new number, and one re-planned within the hand-over margin is kept and stacked on.
func TestNextRoutingNeverReusesNumbers(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	four := []string{"s-cell-0", "s-cell-1", "s-cell-2", "s-cell-3"}
	six := append(slices.Clone(four), "s-cell-4", "s-cell-5")
	five := six[:5]
	first, _, _ := NextRouting(nil, "s", 1000, four, now, 2*time.Minute)
	grown, _, _ := NextRouting(first, "s", 1000, six, now, 2*time.Minute)
	e2 := grown.Epochs[1]
	far, _, err := NextRouting(grown, "s", 1000, five, now.Add(time.Minute), 2*time.Minute)
	if err != nil || len(far.Epochs) != 2 || far.Epochs[1].Number != 3 {
		t.Fatalf("re-plan far ahead: %+v %v, want epoch 2 replaced by epoch 3", far.Epochs, err)
	}
	late, _, err := NextRouting(grown, "s", 1000, five, e2.EffectiveTime.Add(-time.Second), 2*time.Minute)
	if err != nil || len(late.Epochs) != 3 || late.Epochs[1].Number != 2 || !late.Epochs[1].EffectiveTime.Equal(e2.EffectiveTime) || late.Epochs[2].Number != 3 {
		t.Fatalf("one second before epoch 2: %+v %v, want epoch 2 kept and epoch 3 stacked", late.Epochs, err)
	}
	// Slot 167 is the one the issue names: epoch 2 as published keeps its owner.
	if late.Epochs[1].Owner(167) != e2.Owner(167) {
		t.Fatalf("slot 167 changed owner in the published epoch 2")
	}
}

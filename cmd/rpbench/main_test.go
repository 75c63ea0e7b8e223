package main

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/localset"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// With no SET running, rpbench must say to start one at once, not load a dead gateway for
// the whole run and then fail the audit.
func TestFestivalWithoutGatewaySaysStartTheSet(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st := &localset.State{Set: "festival", SlotCount: 1000, GatewayPort: port,
		Layout: localset.LayoutState{Databases: 1, TablesPerDB: 1, Prefix: "db_"}, CellSchema: "rp_cell", WalletSchema: "rp_wallet",
		MaxCount: 100, MaxTotalCents: 20000, Cells: []localset.CellState{{Name: "c0", MySQLPort: port, MemcachedPort: port, ServerPorts: []int{port}}}}
	if err := st.Save(dir); err != nil {
		t.Fatal(err)
	}
	table, _, err := localset.NextRouting(nil, "festival", 1000, []string{"c0"}, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := table.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(st.RoutingPath(), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = festival([]string{"-localset", dir, "-duration", "20s", "-audit-drain-timeout", "1s"})
	if err == nil || !strings.Contains(err.Error(), "make up") {
		t.Fatalf("rpbench against a closed gateway port: %v, want an error saying to start `make up`", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("rpbench took %s to notice there is no gateway", took)
	}

	err = festival([]string{"-localset", t.TempDir()})
	if !errors.Is(err, localset.ErrNoState) || !strings.Contains(err.Error(), "make up") {
		t.Fatalf("rpbench on an empty data dir: %v, want ErrNoState naming `make up`", err)
	}
}

// Every level of a sweep is a run of its own: its wrap keys (built from the run ID) must not
// repeat the previous level's, or its wraps return old packets and its pays conflict.
func TestSweepLevelsAreSeparateRuns(t *testing.T) {
	base := loadgen.Config{Gateway: "http://127.0.0.1:1"}.WithDefaults()
	seen := map[string]bool{}
	for _, c := range []int{16, 64, 256} {
		lc := levelConfig(base, c)
		if lc.Concurrency != c || lc.Pool != 2*c {
			t.Errorf("level %d: concurrency %d, pool %d; want %d and %d", c, lc.Concurrency, lc.Pool, c, 2*c)
		}
		if seen[lc.RunID] || lc.RunID == base.RunID {
			t.Errorf("level %d reuses run ID %q", c, lc.RunID)
		}
		seen[lc.RunID] = true
	}
}

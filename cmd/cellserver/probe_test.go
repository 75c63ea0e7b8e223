package main

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMaskedTables(t *testing.T) {
	l := shard.Layout{Databases: 2, TablesPerDB: 2}
	for _, tc := range []struct {
		name  string
		masks []control.Mask
		want  []string
	}{
		{"none", nil, nil},
		{"one slot", []control.Mask{{Start: 11, End: 11}}, []string{"db_01.t_1"}},
		{"a range over both databases, each table once", []control.Mask{{Start: 0, End: 11}, {Start: 1, End: 1}}, []string{"db_00.t_0", "db_00.t_1", "db_01.t_0", "db_01.t_1"}},
	} {
		var got []string
		for _, tbl := range maskedTables(l, tc.masks) {
			got = append(got, l.Name(tbl))
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestMaskedTableIsProbed: a real server whose cell has a table masked (and no traffic at
// all) publishes successful calls on that table, the evidence the operator's lift needs, and
// none on a table that is not masked.
func TestMaskedTableIsProbed(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	old := maskProbeEvery
	maskProbeEvery = 100 * time.Millisecond
	t.Cleanup(func() { maskProbeEvery = old })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := startServer(t, ctx, cfg)
	db, err := sql.Open("mysql", m.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Slot 1 is db_00.t_1 in the 2x2 layout.
	if err := control.WriteSourceMasks(ctx, db, cfg.ControlSchema, control.SourceOperator, []control.Mask{{Start: 1, End: 1, Reason: "test", Source: control.SourceOperator, Since: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	layout := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: cfg.ShardDBPrefix}
	masked, other := layout.Name(shard.Table{DB: 0, Table: 1}), layout.Name(shard.Table{DB: 1, Table: 0})
	testenv.Eventually(t, 30*time.Second, "calls published on the masked table", func() error {
		counts, err := control.ReadRecentErrorCounts(ctx, db, cfg.ControlSchema, time.Minute)
		if err != nil {
			return err
		}
		for _, c := range counts {
			if c.Table == other && c.Calls > 0 {
				t.Fatalf("calls on %s, which is not masked and had no traffic: %+v", other, c)
			}
			if c.Table == masked && c.Calls > 0 && c.Errors == 0 {
				return nil
			}
		}
		return fmt.Errorf("counts %+v", counts)
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("server: %v", err)
	}
}

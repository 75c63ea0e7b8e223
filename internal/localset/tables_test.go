package localset

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The count behind a first start's progress reads the real database: none of a layout no
// server created, all of one a server did, and one fewer once a table is gone.
func TestCountShardTables(t *testing.T) {
	now := time.Now()
	env := storetest.New(t, storetest.Options{Now: now})
	l := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: env.Prefix + "_db_"}
	names := store.ShardTables(l, now)
	ctx := context.Background()
	dsn := env.MariaDB.Process.DSN("")

	none := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: env.Prefix + "_other_"}
	if n, err := countShardTables(ctx, dsn, none, store.ShardTables(none, now)); err != nil || n != 0 {
		t.Fatalf("a layout nobody created: %d tables (%v), want 0", n, err)
	}
	if n, err := countShardTables(ctx, dsn, l, names); err != nil || n != len(names) {
		t.Fatalf("after EnsureSchema: %d of %d tables (%v)", n, len(names), err)
	}
	if _, err := env.DB.Exec("DROP TABLE " + names[len(names)-1]); err != nil {
		t.Fatal(err)
	}
	if n, err := countShardTables(ctx, dsn, l, names); err != nil || n != len(names)-1 {
		t.Fatalf("one table dropped: %d of %d tables (%v), want %d", n, len(names), err, len(names)-1)
	}
	// A day table of another day is not one of today's and tomorrow's.
	other := l.Physical("t", shard.Table{}, now.Add(-5*24*time.Hour))
	if _, err := env.DB.Exec("CREATE TABLE " + other + " (id BIGINT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if n, err := countShardTables(ctx, dsn, l, names); err != nil || n != len(names)-1 {
		t.Fatalf("with an older day table: %d (%v), want %d", n, err, len(names)-1)
	}
}

// A restart with every table in place must not claim to create any; a first start says so
// and names the new cells.
func TestStartMessage(t *testing.T) {
	l := LayoutState{Databases: 100, TablesPerDB: 10}
	msg, attrs := startMessage([]shardTables{{"c0", 6000, 6000}, {"c1", 6000, 6000}}, l)
	if msg != "starting cell servers" || attrs != nil {
		t.Errorf("restart: %q %v", msg, attrs)
	}
	msg, attrs = startMessage(nil, l)
	if strings.Contains(msg, "shard tables") {
		t.Errorf("no count: %q %v", msg, attrs)
	}
	msg, attrs = startMessage([]shardTables{{"c0", 0, 6000}, {"c1", 0, 6000}}, l)
	if !strings.Contains(msg, "the first start of a cell creates its shard tables") || !strings.Contains(fmtAttrs(attrs), "newCells=c0,c1") {
		t.Errorf("first start: %q %v", msg, attrs)
	}
	msg, attrs = startMessage([]shardTables{{"c0", 6000, 6000}, {"c1", 4000, 6000}}, l)
	if strings.Contains(msg, "the first start of a cell") || !strings.Contains(fmtAttrs(attrs), "c1 4000/6000") {
		t.Errorf("a new day or an interrupted first start: %q %v", msg, attrs)
	}
	msg, attrs = startMessage([]shardTables{{"c0", 6000, 6000}, {"c1", 0, 6000}, {"c2", 10, 6000}}, l)
	if !strings.Contains(msg, "first start") || !strings.Contains(fmtAttrs(attrs), "newCells=c1") || !strings.Contains(fmtAttrs(attrs), "c2 10/6000") {
		t.Errorf("a new cell beside an incomplete one: %q %v", msg, attrs)
	}
}

func fmtAttrs(attrs []any) string {
	var b strings.Builder
	for i := 0; i+1 < len(attrs); i += 2 {
		fmt.Fprintf(&b, " %v=%v", attrs[i], attrs[i+1])
	}
	return b.String()
}

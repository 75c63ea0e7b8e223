package localset

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// shardTables is how many of the shard tables a server creates on start exist in a cell's
// database. The servers create them (store.EnsureSchema); localset only counts, so a first
// start that spends a minute on thousands of CREATE TABLEs says how far it has got, and a
// restart that creates nothing says nothing about it.
type shardTables struct {
	cell      string
	have, all int
}

func (t shardTables) complete() bool { return t.have >= t.all }

// countShardTables counts, in the database at dsn, the shard tables of names that exist.
func countShardTables(ctx context.Context, dsn string, l shard.Layout, names []string) (int, error) {
	want := make(map[string]bool, len(names))
	suffixes := map[string]bool{}
	for _, n := range names {
		want[n] = true
		suffixes[n[strings.LastIndexByte(n, '_'):]] = true
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	// Only the suffixes asked about (_cold, today's and tomorrow's day): a data directory a
	// month old holds a day table for every day of the month.
	var args []any
	var cond []string
	for i := range l.Databases {
		args = append(args, l.DBName(i))
	}
	for s := range suffixes {
		cond = append(cond, `TABLE_NAME LIKE ?`)
		args = append(args, "%"+strings.ReplaceAll(s, "_", `\_`))
	}
	q := fmt.Sprintf(`SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA IN (%s) AND (%s)`,
		strings.TrimSuffix(strings.Repeat("?,", l.Databases), ","), strings.Join(cond, " OR "))
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("count shard tables: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var schema, table string
		if err := rows.Scan(&schema, &table); err != nil {
			return 0, fmt.Errorf("count shard tables: %w", err)
		}
		if want[schema+"."+table] {
			n++
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("count shard tables: %w", err)
	}
	return n, nil
}

// countAll counts every cell's shard tables as a server starting now creates them.
func (s *SET) countAll(ctx context.Context, cells []string, now time.Time) ([]shardTables, error) {
	l := s.state.Layout.Shard()
	names := store.ShardTables(l, now)
	out := make([]shardTables, len(cells))
	err := parallel(cells, func(c string) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		n, err := countShardTables(ctx, s.cellState(c).DSN(), l, names)
		if err != nil {
			return fmt.Errorf("cell %s: %w", c, err)
		}
		for i := range cells {
			if cells[i] == c {
				out[i] = shardTables{cell: c, have: n, all: len(names)}
			}
		}
		return nil
	})
	return out, err
}

// startMessage is what localset says before it starts the servers: a first start creates
// every shard table, a later one at most a new day's, and a restart with every table in
// place creates none and must not say it does.
func startMessage(counts []shardTables, l LayoutState) (string, []any) {
	var first, rest []string
	all := 0
	for _, c := range counts {
		all = c.all
		switch {
		case c.have == 0:
			first = append(first, c.cell)
		case !c.complete():
			rest = append(rest, fmt.Sprintf("%s %d/%d", c.cell, c.have, c.all))
		}
	}
	shards := fmt.Sprintf("%dx%d", l.Databases, l.TablesPerDB)
	switch {
	case len(first) > 0 && len(rest) > 0:
		return "starting cell servers; the first start of a cell creates its shard tables, others create the ones they lack",
			[]any{"newCells", strings.Join(first, ","), "tablesEach", all, "shards", shards, "incomplete", strings.Join(rest, ",")}
	case len(first) > 0:
		return "starting cell servers; the first start of a cell creates its shard tables (about a minute for 100x10 on one machine)",
			[]any{"newCells", strings.Join(first, ","), "tablesEach", all, "shards", shards}
	case len(rest) > 0:
		return "starting cell servers; they create the shard tables their cells lack (a new day's tables, or the rest of a first start that was cut short)",
			[]any{"incomplete", strings.Join(rest, ",")}
	default:
		return "starting cell servers", nil
	}
}

// logTableProgress logs each cell still creating shard tables as "k of N" and returns the
// cells that are not done yet.
func (s *SET) logTableProgress(ctx context.Context, log *slog.Logger, cells []string, now time.Time) []string {
	counts, err := s.countAll(ctx, cells, now)
	if err != nil {
		log.Info("creating shard tables (count failed)", "err", err)
		return cells
	}
	var left []string
	for _, c := range counts {
		if !c.complete() {
			log.Info("creating shard tables", "cell", c.cell, "done", c.have, "of", c.all)
			left = append(left, c.cell)
		}
	}
	return left
}

// Package exactid keeps identifier columns byte-exact in schemas created before they were.
//
// User, sender, request, payment and account IDs are byte strings: "Alice" and "alice" are
// two users (docs/api.md). Go compares them byte for byte, so the database must too, or a
// unique key merges two users, a lookup returns another user's row, and Go code that
// compares what it asked for with what it got sees neither (docs/design.md §4.2, §4.3).
//
// The columns are VARBINARY rather than VARCHAR … COLLATE ascii_bin: a binary string
// compares every byte, trailing spaces included (ascii_bin is a PAD SPACE collation, and the
// only NO PAD ASCII collation, ascii_nopad_bin, does not exist in MySQL 8, which cells may
// run), and no later change of a server, schema or table default can attach a collation to
// it. What ascii gave besides, refusing non-ASCII bytes, is the validator's job and stays
// there (packet.validateID). Either choice needs a table copy to migrate, so neither is
// cheaper to reach.
package exactid

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Family is a kind of table and the byte-exact definitions of its identifier columns, as
// the current DDL declares them (the migration rewrites a column to exactly this).
type Family struct {
	Schemas []string
	Tables  *regexp.Regexp
	Columns map[string]string // column name → definition, e.g. "VARBINARY(64) NOT NULL"
}

// Altered is one table the migration rewrote, and the columns it changed.
type Altered struct {
	Table   string // schema.table
	Columns []string
}

// Migrate finds, in one information_schema query, the identifier columns of the families'
// tables that still compare by a collation, and rewrites each such table with one ALTER
// TABLE (on up to workers connections at once). Nothing else is touched, so it is
// idempotent and, when every column is binary already, costs that one query. Widening a
// comparison from case-insensitive to exact never makes two existing keys equal, so an
// ALTER cannot fail on a duplicate key; rows are kept as they are. The ALTER copies the table
// and blocks writes to it meanwhile: that happens once per table, on the first start after
// an upgrade.
func Migrate(ctx context.Context, db *sql.DB, families []Family, workers int) ([]Altered, error) {
	schemas := map[string]bool{}
	columns := map[string]bool{}
	for _, f := range families {
		for _, s := range f.Schemas {
			schemas[s] = true
		}
		for c := range f.Columns {
			columns[c] = true
		}
	}
	if len(schemas) == 0 || len(columns) == 0 {
		return nil, nil
	}
	args := make([]any, 0, len(schemas)+len(columns))
	for _, s := range sortedKeys(schemas) {
		args = append(args, s)
	}
	for _, c := range sortedKeys(columns) {
		args = append(args, c)
	}
	// COLLATION_NAME is NULL for binary strings and for every non-string type.
	q := "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS" +
		" WHERE TABLE_SCHEMA IN (?" + strings.Repeat(",?", len(schemas)-1) + ")" +
		" AND COLUMN_NAME IN (?" + strings.Repeat(",?", len(columns)-1) + ")" +
		" AND COLLATION_NAME IS NOT NULL ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("find case-insensitive identifier columns: %w", err)
	}
	type todo struct {
		altered Altered
		stmt    strings.Builder
	}
	var work []*todo
	byTable := map[string]*todo{}
	for rows.Next() {
		var schema, table, column string
		if err := rows.Scan(&schema, &table, &column); err != nil {
			rows.Close()
			return nil, fmt.Errorf("find case-insensitive identifier columns: %w", err)
		}
		def, ok := definition(families, schema, table, column)
		if !ok {
			continue
		}
		name := schema + "." + table
		w := byTable[name]
		if w == nil {
			w = &todo{altered: Altered{Table: name}}
			fmt.Fprintf(&w.stmt, "ALTER TABLE `%s`.`%s` ", schema, table)
			byTable[name] = w
			work = append(work, w)
		} else {
			w.stmt.WriteString(", ")
		}
		fmt.Fprintf(&w.stmt, "MODIFY `%s` %s", column, def)
		w.altered.Columns = append(w.altered.Columns, column)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find case-insensitive identifier columns: %w", err)
	}
	if len(work) == 0 {
		return nil, nil
	}
	jobs := make(chan *todo)
	var mu sync.Mutex
	var done []Altered
	var firstErr error
	var wg sync.WaitGroup
	for i := 0; i < max(1, min(workers, len(work))); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range jobs {
				_, err := db.ExecContext(ctx, w.stmt.String())
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("make %s byte-exact (%s): %w", w.altered.Table, strings.Join(w.altered.Columns, ", "), err)
				}
				if err == nil {
					done = append(done, w.altered)
				}
				mu.Unlock()
			}
		}()
	}
	for _, w := range work {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		jobs <- w
	}
	close(jobs)
	wg.Wait()
	sort.Slice(done, func(i, j int) bool { return done[i].Table < done[j].Table })
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("make identifier columns byte-exact: %w", ctx.Err())
	}
	return done, firstErr
}

func definition(families []Family, schema, table, column string) (string, bool) {
	for _, f := range families {
		def, ok := f.Columns[column]
		if !ok || !f.Tables.MatchString(table) {
			continue
		}
		for _, s := range f.Schemas {
			if s == schema {
				return def, true
			}
		}
	}
	return "", false
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

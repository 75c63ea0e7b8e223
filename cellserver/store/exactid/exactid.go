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
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Family is a kind of table and the byte-exact definitions of its identifier columns, as
// the current DDL declares them (the migration rewrites a column to exactly this).
type Family struct {
	Schemas []string
	Tables  *regexp.Regexp
	Columns map[string]string // column name → definition, e.g. "VARBINARY(64) NOT NULL"
}

// Table is one table with identifier columns that still compare by a collation.
type Table struct {
	Schema, Name string
	Columns      []string
	defs         []string
}

// String is schema.table.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Find lists, in one information_schema query, the families' tables whose identifier
// columns still compare by a collation. Nothing else is read, so it is cheap when every
// column is binary already.
func Find(ctx context.Context, db *sql.DB, families []Family) ([]Table, error) {
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
	defer rows.Close()
	var out []Table
	for rows.Next() {
		var schema, table, column string
		if err := rows.Scan(&schema, &table, &column); err != nil {
			return nil, fmt.Errorf("find case-insensitive identifier columns: %w", err)
		}
		def, ok := definition(families, schema, table, column)
		if !ok {
			continue
		}
		if n := len(out); n == 0 || out[n-1].Schema != schema || out[n-1].Name != table {
			out = append(out, Table{Schema: schema, Name: table})
		}
		t := &out[len(out)-1]
		t.Columns = append(t.Columns, column)
		t.defs = append(t.defs, def)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find case-insensitive identifier columns: %w", err)
	}
	return out, nil
}

// Apply rewrites each table's listed columns to their byte-exact definitions, one ALTER
// TABLE per table, on up to workers connections at once. It returns the tables it rewrote,
// also when it stops on the first error. Widening a comparison from case-insensitive to
// exact never makes two existing keys equal, so an ALTER cannot fail on a duplicate key, and
// rows are kept as they are. The ALTER copies the table and blocks writes to it meanwhile:
// that happens once per table, on the first start after an upgrade. Rewriting a column that
// is binary already (another server got there first) changes nothing.
func Apply(ctx context.Context, db *sql.DB, tables []Table, workers int) ([]Table, error) {
	if len(tables) == 0 {
		return nil, nil
	}
	jobs := make(chan Table)
	var mu sync.Mutex
	var done []Table
	var firstErr error
	var wg sync.WaitGroup
	for i := 0; i < max(1, min(workers, len(tables))); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range jobs {
				mods := make([]string, len(t.Columns))
				for i, c := range t.Columns {
					mods[i] = fmt.Sprintf("MODIFY `%s` %s", c, t.defs[i])
				}
				_, err := db.ExecContext(ctx, fmt.Sprintf("ALTER TABLE `%s`.`%s` %s", t.Schema, t.Name, strings.Join(mods, ", ")))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("make %s byte-exact (%s): %w", t, strings.Join(t.Columns, ", "), err)
				}
				if err == nil {
					done = append(done, t)
				}
				mu.Unlock()
			}
		}()
	}
	for _, t := range tables {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		jobs <- t
	}
	close(jobs)
	wg.Wait()
	sort.Slice(done, func(i, j int) bool { return done[i].String() < done[j].String() })
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("make identifier columns byte-exact: %w", ctx.Err())
	}
	return done, firstErr
}

// Migrate makes the families' identifier columns byte-exact. When Find has nothing to do it
// costs that one query. Otherwise it holds the lock named after lockScope (see Locked) while
// it finds again and applies, so servers starting together do not copy every table twice.
func Migrate(ctx context.Context, db *sql.DB, lockScope string, families []Family, workers int) ([]Table, error) {
	tables, err := Find(ctx, db, families)
	if err != nil || len(tables) == 0 {
		return nil, err
	}
	var done []Table
	err = Locked(ctx, db, lockScope, func() error {
		if tables, err = Find(ctx, db, families); err != nil {
			return err
		}
		done, err = Apply(ctx, db, tables, workers)
		return err
	})
	return done, err
}

// Locked runs fn while holding a MySQL user lock (GET_LOCK) named after scope, on a
// connection of its own that holds nothing else. Servers of one cell that start together
// then migrate one after another: an ALTER that copies a table while another server's
// transaction reads and writes it ends in a metadata-lock deadlock, and two servers copying
// the same tables double the work.
func Locked(ctx context.Context, db *sql.DB, scope string, fn func() error) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migration lock for %s: %w", scope, err)
	}
	defer conn.Close()
	// Lock names are limited to 64 characters; schema names alone may use them all.
	sum := sha256.Sum256([]byte(scope))
	name := "rp_exactid_" + hex.EncodeToString(sum[:12])
	wait := 600
	if dl, ok := ctx.Deadline(); ok {
		wait = max(1, int(time.Until(dl).Seconds()))
	}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?)", name, wait).Scan(&got); err != nil {
		return fmt.Errorf("migration lock for %s: %w", scope, err)
	}
	if got.Int64 != 1 {
		return fmt.Errorf("migration lock for %s: not granted within %ds", scope, wait)
	}
	defer func() {
		// A fresh context: the lock must go even when ctx ended; closing the connection
		// would release it too.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(rctx, "DO RELEASE_LOCK(?)", name)
	}()
	return fn()
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

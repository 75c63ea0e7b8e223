package control

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/shard"
)

// WindowCount is what one server saw for one logical table in one window.
type WindowCount struct {
	Table       string    // logical table name, shard.Layout.Name, e.g. "db_07.t_3"
	WindowStart time.Time // start of the window, stored to the second
	Errors      int64
	Calls       int64 // all calls, failed or not
}

// TableErrors is the sum over servers and windows for one logical table.
type TableErrors struct {
	Table       string    `json:"table"`
	Errors      int64     `json:"errors"`
	Calls       int64     `json:"calls"`
	Servers     int       `json:"servers"`     // distinct servers that reported
	FirstWindow time.Time `json:"firstWindow"` // earliest window counted
	LastWindow  time.Time `json:"lastWindow"`  // latest window counted
}

// ErrorRatio is Errors/Calls, 0 without calls.
func (t TableErrors) ErrorRatio() float64 {
	if t.Calls == 0 {
		return 0
	}
	return float64(t.Errors) / float64(t.Calls)
}

// RecordErrors adds a server's counts to the table: a row per (table, window, server) that
// accumulates, so a server may publish a window in several pieces and a retry after a lost
// answer over-counts at most one batch (errors only ever make the policy more careful).
func RecordErrors(ctx context.Context, db *sql.DB, schema, server string, counts []WindowCount) error {
	tbl, err := qualify(schema, "table_errors")
	if err != nil {
		return err
	}
	if len(counts) == 0 {
		return nil
	}
	var b strings.Builder
	args := make([]any, 0, 5*len(counts))
	b.WriteString("INSERT INTO " + tbl + " (logical_table, window_start, server, errors, calls, updated_at) VALUES ")
	for i, c := range counts {
		if c.Errors < 0 || c.Calls < 0 {
			return fmt.Errorf("record errors for %s: negative count for %s", server, c.Table)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?, ?, ?, ?, ?, NOW(6))")
		args = append(args, c.Table, c.WindowStart.UTC().Truncate(time.Second), server, c.Errors, c.Calls)
	}
	b.WriteString(" ON DUPLICATE KEY UPDATE errors = errors + VALUES(errors), calls = calls + VALUES(calls), updated_at = VALUES(updated_at)")
	if _, err := db.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("record errors for %s: %w", server, err)
	}
	return nil
}

// ReadErrorCounts sums, per logical table, every window starting at or after since, over
// all servers. Tables nobody reported are absent.
func ReadErrorCounts(ctx context.Context, db *sql.DB, schema string, since time.Time) ([]TableErrors, error) {
	tbl, err := qualify(schema, "table_errors")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx,
		"SELECT logical_table, SUM(errors), SUM(calls), COUNT(DISTINCT server), MIN(window_start), MAX(window_start)"+
			" FROM "+tbl+" WHERE window_start >= ? GROUP BY logical_table ORDER BY logical_table",
		since.UTC().Truncate(time.Second))
	if err != nil {
		return nil, fmt.Errorf("read error counts: %w", err)
	}
	defer rows.Close()
	out := []TableErrors{}
	for rows.Next() {
		var t TableErrors
		if err := rows.Scan(&t.Table, &t.Errors, &t.Calls, &t.Servers, &t.FirstWindow, &t.LastWindow); err != nil {
			return nil, fmt.Errorf("read error counts: %w", err)
		}
		t.FirstWindow, t.LastWindow = t.FirstWindow.UTC(), t.LastWindow.UTC()
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read error counts: %w", err)
	}
	return out, nil
}

// ReadRecentErrorCounts sums, per logical table, every row published within span of now, both
// read off the database's clock: updated_at is stamped by the database at every publish. The
// servers' window starts come from their own clocks, so comparing them with the reader's clock
// would hide the errors of a server whose clock is behind by more than span. A row updated
// within span may hold errors up to one window older; that over-counts, never under-counts.
func ReadRecentErrorCounts(ctx context.Context, db *sql.DB, schema string, span time.Duration) ([]TableErrors, error) {
	tbl, err := qualify(schema, "table_errors")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx,
		"SELECT logical_table, SUM(errors), SUM(calls), COUNT(DISTINCT server), MIN(window_start), MAX(window_start)"+
			" FROM "+tbl+" WHERE updated_at >= NOW(6) - INTERVAL ? MICROSECOND GROUP BY logical_table ORDER BY logical_table",
		span.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("read recent error counts: %w", err)
	}
	defer rows.Close()
	out := []TableErrors{}
	for rows.Next() {
		var t TableErrors
		if err := rows.Scan(&t.Table, &t.Errors, &t.Calls, &t.Servers, &t.FirstWindow, &t.LastWindow); err != nil {
			return nil, fmt.Errorf("read recent error counts: %w", err)
		}
		t.FirstWindow, t.LastWindow = t.FirstWindow.UTC(), t.LastWindow.UTC()
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read recent error counts: %w", err)
	}
	return out, nil
}

// PruneStaleErrorCounts deletes rows not published within span of now by the database's clock
// (see ReadRecentErrorCounts for why not the servers' window starts).
func PruneStaleErrorCounts(ctx context.Context, db *sql.DB, schema string, span time.Duration) (int64, error) {
	tbl, err := qualify(schema, "table_errors")
	if err != nil {
		return 0, err
	}
	res, err := db.ExecContext(ctx, "DELETE FROM "+tbl+" WHERE updated_at < NOW(6) - INTERVAL ? MICROSECOND", span.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("prune stale error counts: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// PruneErrorCounts deletes windows that started before before, so the table stays small.
func PruneErrorCounts(ctx context.Context, db *sql.DB, schema string, before time.Time) (int64, error) {
	tbl, err := qualify(schema, "table_errors")
	if err != nil {
		return 0, err
	}
	res, err := db.ExecContext(ctx, "DELETE FROM "+tbl+" WHERE window_start < ?", before.UTC().Truncate(time.Second))
	if err != nil {
		return 0, fmt.Errorf("prune error counts: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// ParseTable turns a logical table name ("db_07.t_3") back into the shard.Table it names
// under layout, so the operator can map an error count to the slots it serves
// (layout.Slots). It is the inverse of layout.Name.
func ParseTable(layout shard.Layout, name string) (shard.Table, error) {
	dbPart, tPart, ok := strings.Cut(name, ".")
	if !ok {
		return shard.Table{}, fmt.Errorf("logical table %q: want <db>.t_<n>", name)
	}
	prefix := layout.DatabasePrefix
	if prefix == "" {
		prefix = "db_"
	}
	dbNum, ok := strings.CutPrefix(dbPart, prefix)
	if !ok {
		return shard.Table{}, fmt.Errorf("logical table %q: database does not start with %q", name, prefix)
	}
	tNum, ok := strings.CutPrefix(tPart, "t_")
	if !ok {
		return shard.Table{}, fmt.Errorf("logical table %q: table does not start with t_", name)
	}
	db, err1 := strconv.Atoi(dbNum)
	t, err2 := strconv.Atoi(tNum)
	if err1 != nil || err2 != nil || db < 0 || t < 0 || db >= layout.Databases || t >= layout.TablesPerDB {
		return shard.Table{}, fmt.Errorf("logical table %q: outside layout %d×%d", name, layout.Databases, layout.TablesPerDB)
	}
	out := shard.Table{DB: db, Table: t}
	if layout.Name(out) != name {
		return shard.Table{}, fmt.Errorf("logical table %q: not the canonical name %q", name, layout.Name(out))
	}
	return out, nil
}

package control

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/redpacketset/redpacket/cellserver/shard"
)

// ErrLayoutMismatch: a server is configured with a shard layout other than the one the cell
// recorded at its first start.
var ErrLayoutMismatch = errors.New("shard layout differs from the one this cell was created with")

// RecordedLayout is the layout a cell recorded, and when and by which server.
type RecordedLayout struct {
	Layout     shard.Layout
	RecordedAt time.Time
	RecordedBy string
}

// CheckLayout records want as the cell's shard layout if none is recorded yet, and otherwise
// refuses a different one with ErrLayoutMismatch. A packet's table follows from its ID and
// the layout alone, so a server with another layout would look for the cell's packets in
// other, empty tables: opens would answer not-found and refunds would wait on tables that do
// not hold them. The first server to start records the layout; concurrent first starts
// with different layouts agree on one, and the others are refused.
func CheckLayout(ctx context.Context, db *sql.DB, schema string, want shard.Layout, server string) (RecordedLayout, error) {
	table, err := qualify(schema, "shard_layout")
	if err != nil {
		return RecordedLayout{}, err
	}
	if _, err := db.ExecContext(ctx, "INSERT IGNORE INTO "+table+" (id, db_count, tables_per_db, db_prefix, recorded_at, recorded_by) VALUES (1, ?, ?, ?, NOW(6), ?)",
		want.Databases, want.TablesPerDB, want.DatabasePrefix, server); err != nil {
		return RecordedLayout{}, fmt.Errorf("record shard layout in %s: %w", table, err)
	}
	var got RecordedLayout
	var at float64 // the servers' DSNs do not set parseTime
	if err := db.QueryRowContext(ctx, "SELECT db_count, tables_per_db, db_prefix, UNIX_TIMESTAMP(recorded_at), recorded_by FROM "+table+" WHERE id = 1").
		Scan(&got.Layout.Databases, &got.Layout.TablesPerDB, &got.Layout.DatabasePrefix, &at, &got.RecordedBy); err != nil {
		return RecordedLayout{}, fmt.Errorf("read shard layout from %s: %w", table, err)
	}
	got.RecordedAt = time.UnixMicro(int64(at * 1e6)).UTC()
	if got.Layout != want {
		return got, fmt.Errorf("%s records %s, recorded %s by %s; this server is configured with %s; spec.template.shards must never change on a live set: %w",
			table, describe(got.Layout), got.RecordedAt.UTC().Format(time.RFC3339), got.RecordedBy, describe(want), ErrLayoutMismatch)
	}
	return got, nil
}

func describe(l shard.Layout) string {
	return fmt.Sprintf("%d databases × %d tables (prefix %q)", l.Databases, l.TablesPerDB, l.DatabasePrefix)
}

package control

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ReportReader records that server now holds a routing table whose newest epoch is epoch,
// effective at effective. It is written on every load, so the row always says what the
// server routes and issues by.
func ReportReader(ctx context.Context, db *sql.DB, schema, server string, epoch int64, effective time.Time) error {
	tbl, err := qualify(schema, "routing_readers")
	if err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx,
		"INSERT INTO "+tbl+" (server, epoch, effective_time, loaded_at) VALUES (?, ?, ?, NOW(6))"+
			" ON DUPLICATE KEY UPDATE epoch = VALUES(epoch), effective_time = VALUES(effective_time), loaded_at = VALUES(loaded_at)",
		server, epoch, effective.UTC()); err != nil {
		return fmt.Errorf("report routing epoch %d of %s: %w", epoch, server, err)
	}
	return nil
}

// IssuingReaders maps every server holding a live worker lease, i.e. every server that may be
// issuing IDs in this cell now, to the newest epoch it reported holding (0 when it reported
// none). Servers without a lease cannot issue, so their reports do not matter.
func IssuingReaders(ctx context.Context, db *sql.DB, schema string) (map[string]int64, error) {
	workers, err := qualify(schema, "id_workers")
	if err != nil {
		return nil, err
	}
	readers, err := qualify(schema, "routing_readers")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx,
		"SELECT w.holder, COALESCE(r.epoch, 0) FROM "+workers+" w LEFT JOIN "+readers+" r ON r.server = w.holder"+
			" WHERE w.holder <> '' AND w.lease_expires > NOW(6)")
	if err != nil {
		return nil, fmt.Errorf("read routing readers: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var server string
		var epoch int64
		if err := rows.Scan(&server, &epoch); err != nil {
			return nil, fmt.Errorf("read routing readers: %w", err)
		}
		// One server may hold several workers; it holds one table.
		out[server] = epoch
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read routing readers: %w", err)
	}
	return out, nil
}

// MaxReportedEpoch is the highest epoch any server of the cell ever reported: a number that
// must never be issued again, even if the table it came from is lost.
func MaxReportedEpoch(ctx context.Context, db *sql.DB, schema string) (int64, error) {
	readers, err := qualify(schema, "routing_readers")
	if err != nil {
		return 0, err
	}
	announce, err := qualify(schema, "routing_announce")
	if err != nil {
		return 0, err
	}
	var n int64
	if err := db.QueryRowContext(ctx, "SELECT GREATEST(COALESCE((SELECT MAX(epoch) FROM "+readers+"), 0),"+
		" COALESCE((SELECT MAX(epoch) FROM "+announce+"), 0))").Scan(&n); err != nil {
		return 0, fmt.Errorf("read highest routing epoch: %w", err)
	}
	return n, nil
}

// Announce records epoch (effective at effective) as the newest the operator publishes. The
// number never goes down: an older operator's late write cannot hide a newer epoch.
func Announce(ctx context.Context, db *sql.DB, schema string, epoch int64, effective time.Time) error {
	tbl, err := qualify(schema, "routing_announce")
	if err != nil {
		return err
	}
	// effective_time is assigned first: it compares against the old epoch.
	if _, err := db.ExecContext(ctx,
		"INSERT INTO "+tbl+" (id, epoch, effective_time, updated_at) VALUES (1, ?, ?, NOW(6))"+
			" ON DUPLICATE KEY UPDATE effective_time = IF(VALUES(epoch) >= epoch, VALUES(effective_time), effective_time),"+
			" updated_at = NOW(6), epoch = GREATEST(epoch, VALUES(epoch))",
		epoch, effective.UTC()); err != nil {
		return fmt.Errorf("announce routing epoch %d: %w", epoch, err)
	}
	return nil
}

// ReadAnnouncement returns the newest announced epoch; number 0 when none was announced.
func ReadAnnouncement(ctx context.Context, db *sql.DB, schema string) (epoch int64, effective time.Time, err error) {
	tbl, err := qualify(schema, "routing_announce")
	if err != nil {
		return 0, time.Time{}, err
	}
	err = db.QueryRowContext(ctx, "SELECT epoch, effective_time FROM "+tbl+" WHERE id = 1").Scan(&epoch, &effective)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read routing announcement: %w", err)
	}
	return epoch, effective.UTC(), nil
}

// PublishTable records body, an encoded routing table whose newest epoch is epoch, as the
// cell's published table. Like the announcement it never goes back: a late write of an older
// table by an earlier operator leaves the newer one in place. The operator calls it only once
// the table is in the set's status, so a server never loads an epoch the operator could
// forget and plan differently.
func PublishTable(ctx context.Context, db *sql.DB, schema string, epoch int64, body []byte) error {
	tbl, err := qualify(schema, "routing_published")
	if err != nil {
		return err
	}
	// body is assigned first: it compares against the old epoch.
	if _, err := db.ExecContext(ctx,
		"INSERT INTO "+tbl+" (id, epoch, body, updated_at) VALUES (1, ?, ?, NOW(6))"+
			" ON DUPLICATE KEY UPDATE body = IF(VALUES(epoch) > epoch, VALUES(body), body),"+
			" updated_at = IF(VALUES(epoch) > epoch, NOW(6), updated_at), epoch = GREATEST(epoch, VALUES(epoch))",
		epoch, body); err != nil {
		return fmt.Errorf("publish routing table of epoch %d: %w", epoch, err)
	}
	return nil
}

// ReadPublishedTable returns the cell's published table when its newest epoch is above
// after, and nil otherwise, so the poll that finds nothing new moves no table bytes.
func ReadPublishedTable(ctx context.Context, db *sql.DB, schema string, after int64) (body []byte, epoch int64, err error) {
	tbl, err := qualify(schema, "routing_published")
	if err != nil {
		return nil, 0, err
	}
	err = db.QueryRowContext(ctx, "SELECT epoch, body FROM "+tbl+" WHERE id = 1 AND epoch > ?", after).Scan(&epoch, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read published routing table: %w", err)
	}
	return body, epoch, nil
}

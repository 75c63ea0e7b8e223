package control

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// ServerEpoch is a server's last report of the routing table it holds.
type ServerEpoch struct {
	Server string `json:"server"`
	// Epoch is the newest epoch in the server's loaded table; the table holds every older
	// epoch still kept, so the server holds every epoch up to this one.
	Epoch int64 `json:"epoch"`
	// ReportedAt is the database's clock at the report; a server that stopped reporting is
	// gone or cannot reach the database.
	ReportedAt time.Time `json:"reportedAt"`
}

// ReportRoutingEpoch records that server holds epochs up to epoch now. Each server reports
// for itself, so there is no read-modify-write to race on.
func ReportRoutingEpoch(ctx context.Context, db *sql.DB, schema, server string, epoch int64) error {
	tbl, err := qualify(schema, "routing_epochs")
	if err != nil {
		return err
	}
	if server == "" {
		return fmt.Errorf("report routing epoch: empty server name")
	}
	if _, err := db.ExecContext(ctx,
		"INSERT INTO "+tbl+" (server, epoch, reported_at) VALUES (?, ?, NOW(6))"+
			" ON DUPLICATE KEY UPDATE epoch = VALUES(epoch), reported_at = VALUES(reported_at)",
		server, epoch); err != nil {
		return fmt.Errorf("report routing epoch %d of %s: %w", epoch, server, err)
	}
	return nil
}

// ReadRoutingEpochs returns every server's last report that is no older than since (zero:
// all), by server name.
func ReadRoutingEpochs(ctx context.Context, db *sql.DB, schema string, since time.Time) ([]ServerEpoch, error) {
	tbl, err := qualify(schema, "routing_epochs")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, "SELECT server, epoch, reported_at FROM "+tbl+" WHERE reported_at >= ? ORDER BY server", since.UTC())
	if err != nil {
		return nil, fmt.Errorf("read routing epochs: %w", err)
	}
	defer rows.Close()
	out := []ServerEpoch{}
	for rows.Next() {
		var e ServerEpoch
		if err := rows.Scan(&e.Server, &e.Epoch, &e.ReportedAt); err != nil {
			return nil, fmt.Errorf("read routing epochs: %w", err)
		}
		e.ReportedAt = e.ReportedAt.UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read routing epochs: %w", err)
	}
	return out, nil
}

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

// ReportRoutingEpoch refreshes server's row in routing_readers (see ReportReader, the one
// writer of what a server holds): the same epoch again only moves loaded_at, so a quiet
// server still shows as reporting.
func ReportRoutingEpoch(ctx context.Context, db *sql.DB, schema, server string, epoch int64, effective time.Time) error {
	if server == "" {
		return fmt.Errorf("report routing epoch: empty server name")
	}
	return ReportReader(ctx, db, schema, server, epoch, effective)
}

// ReadRoutingEpochs returns every server's last report that is no older than since (zero:
// all), by server name.
func ReadRoutingEpochs(ctx context.Context, db *sql.DB, schema string, since time.Time) ([]ServerEpoch, error) {
	tbl, err := qualify(schema, "routing_readers")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, "SELECT server, epoch, loaded_at FROM "+tbl+" WHERE loaded_at >= ? ORDER BY server", since.UTC())
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

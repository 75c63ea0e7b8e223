package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/go-sql-driver/mysql"
)

// DefaultCellSchema is the per-cell schema's name unless a cell server is told otherwise
// (its -cell-schema flag): the operator, the local SET and the audits read it by this name.
const DefaultCellSchema = "rp_cell"

// What a cell still owes, read from outside the cell server (the operator decides from it
// whether a cell may be deleted and whether an old routing epoch may be pruned). The expiry
// index holds every packet not yet settled and the outbox every effect not yet delivered, so
// each answer is one indexed count. A cell whose schema or tables do not exist yet never
// stored a packet, and owes nothing.

// Owed counts the packets the expiry sweeper has not settled and the outbox rows (wallet
// credits, refunds) not yet delivered in the cell schema on db.
func Owed(ctx context.Context, db *sql.DB, cellSchema string) (packets, effects int64, err error) {
	if !identRe.MatchString(cellSchema) {
		return 0, 0, fmt.Errorf("cell schema %q: must be letters, digits and '_'", cellSchema)
	}
	if packets, err = countOwed(ctx, db, "SELECT COUNT(*) FROM "+cellSchema+".expiry"); err != nil {
		return 0, 0, fmt.Errorf("count unsettled packets: %w", err)
	}
	if effects, err = countOwed(ctx, db, "SELECT COUNT(*) FROM "+cellSchema+".outbox WHERE delivered = 0"); err != nil {
		return 0, 0, fmt.Errorf("count undelivered outbox rows: %w", err)
	}
	return packets, effects, nil
}

// UnsettledBefore counts unsettled packets whose ID is below boundary: IDs are time-ordered,
// so these are the packets created before boundary's second.
func UnsettledBefore(ctx context.Context, db *sql.DB, cellSchema string, boundary int64) (int64, error) {
	if !identRe.MatchString(cellSchema) {
		return 0, fmt.Errorf("cell schema %q: must be letters, digits and '_'", cellSchema)
	}
	n, err := countOwed(ctx, db, "SELECT COUNT(*) FROM "+cellSchema+".expiry WHERE packet_id < ?", boundary)
	if err != nil {
		return 0, fmt.Errorf("count unsettled packets before %d: %w", boundary, err)
	}
	return n, nil
}

func countOwed(ctx context.Context, db *sql.DB, q string, args ...any) (int64, error) {
	var n int64
	err := db.QueryRowContext(ctx, q, args...).Scan(&n)
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1049 || me.Number == 1146) {
		return 0, nil // unknown schema or table: the cell never stored a packet
	}
	return n, err
}

package control

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ErrNoFreeWorker means every worker number is leased: the cell runs more allocators than the
// ID layout has worker bits for, or crashed holders' leases have not expired yet.
var ErrNoFreeWorker = errors.New("no free worker number")

// ErrLeaseLost means the lease expired or was taken over: the holder must stop issuing IDs.
var ErrLeaseLost = errors.New("worker lease lost")

// Lease is one acquisition of a worker number. Expiry is kept by the database clock; the
// holder fences itself with its own monotonic clock, measured from before each request.
type Lease struct {
	Worker int
	Holder string
	Token  int64
	// PreviousHighWater is the high-water second (Unix) the worker had when acquired: the
	// latest second any earlier holder may have issued an ID in. The new holder must issue
	// only in later seconds.
	PreviousHighWater int64
}

// WorkerState is a row of id_workers, for inspection.
type WorkerState struct {
	Worker        int
	Holder        string
	LeaseExpires  *time.Time // nil when free
	HighWaterUnix int64
	Renewals      int64
}

// AcquireWorker leases the lowest free worker number (never leased, released, or expired) for
// ttl. reserveUnix is the latest second the holder may issue IDs in before its next renewal;
// it is recorded as the worker's high-water mark before the lease is granted, so that even
// if the holder crashes its successor starts after it.
//
// Two callers never get the same worker: the row is taken with a locking read inside a
// transaction, and rows another acquirer has locked are skipped rather than waited for.
func AcquireWorker(ctx context.Context, db *sql.DB, schema, holder string, ttl time.Duration, reserveUnix int64) (Lease, error) {
	tbl, err := qualify(schema, "id_workers")
	if err != nil {
		return Lease{}, err
	}
	if ttl <= 0 {
		return Lease{}, fmt.Errorf("acquire worker: ttl %v must be positive", ttl)
	}
	token, err := newToken()
	if err != nil {
		return Lease{}, err
	}
	// READ COMMITTED: rows scanned but not chosen are not kept locked, so a busy table never
	// makes a concurrent acquirer skip a free worker for long.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return Lease{}, fmt.Errorf("acquire worker: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit this is a no-op

	var worker int
	var prev int64
	err = tx.QueryRowContext(ctx,
		"SELECT worker, high_water_unix FROM "+tbl+
			" WHERE lease_expires IS NULL OR lease_expires < NOW(6)"+
			" ORDER BY worker LIMIT 1 FOR UPDATE SKIP LOCKED").Scan(&worker, &prev)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("acquire worker for %s: %w", holder, ErrNoFreeWorker)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("acquire worker for %s: %w", holder, err)
	}
	if _, err := tx.ExecContext(ctx,
		"UPDATE "+tbl+" SET holder = ?, lease_token = ?, lease_expires = NOW(6) + INTERVAL ? MICROSECOND,"+
			" acquired_at = NOW(6), renewals = 0, high_water_unix = GREATEST(high_water_unix, ?) WHERE worker = ?",
		holder, token, ttl.Microseconds(), reserveUnix, worker); err != nil {
		return Lease{}, fmt.Errorf("acquire worker %d for %s: %w", worker, holder, err)
	}
	if err := tx.Commit(); err != nil {
		return Lease{}, fmt.Errorf("acquire worker %d for %s: commit: %w", worker, holder, err)
	}
	return Lease{Worker: worker, Holder: holder, Token: token, PreviousHighWater: prev}, nil
}

// RenewWorker extends the lease by ttl from now and raises the high-water mark to
// reserveUnix. It returns ErrLeaseLost when the lease already expired or changed hands: a
// lapsed lease is never revived, because a successor may already hold it.
func RenewWorker(ctx context.Context, db *sql.DB, schema string, l Lease, ttl time.Duration, reserveUnix int64) error {
	tbl, err := qualify(schema, "id_workers")
	if err != nil {
		return err
	}
	// renewals always changes, so RowsAffected is 1 exactly when the lease matched.
	res, err := db.ExecContext(ctx,
		"UPDATE "+tbl+" SET lease_expires = NOW(6) + INTERVAL ? MICROSECOND, renewals = renewals + 1,"+
			" high_water_unix = GREATEST(high_water_unix, ?)"+
			" WHERE worker = ? AND lease_token = ? AND lease_expires > NOW(6)",
		ttl.Microseconds(), reserveUnix, l.Worker, l.Token)
	if err != nil {
		return fmt.Errorf("renew worker %d: %w", l.Worker, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("renew worker %d: %w", l.Worker, err)
	}
	if n != 1 {
		return fmt.Errorf("renew worker %d: %w", l.Worker, ErrLeaseLost)
	}
	return nil
}

// ReleaseWorker frees the worker and records lastIssuedUnix, the latest second the holder
// actually issued an ID in (it must have stopped issuing), so a successor — often the same
// server restarting — continues right after it instead of after the whole reservation.
// Releasing a lease that was already taken over changes nothing and returns ErrLeaseLost.
func ReleaseWorker(ctx context.Context, db *sql.DB, schema string, l Lease, lastIssuedUnix int64) error {
	tbl, err := qualify(schema, "id_workers")
	if err != nil {
		return err
	}
	// Never below what the lease started from: that mark protects an earlier holder's IDs.
	hw := max(lastIssuedUnix, l.PreviousHighWater)
	res, err := db.ExecContext(ctx,
		"UPDATE "+tbl+" SET holder = '', lease_token = 0, lease_expires = NULL, high_water_unix = ?"+
			" WHERE worker = ? AND lease_token = ?",
		hw, l.Worker, l.Token)
	if err != nil {
		return fmt.Errorf("release worker %d: %w", l.Worker, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("release worker %d: %w", l.Worker, err)
	}
	if n != 1 {
		return fmt.Errorf("release worker %d: %w", l.Worker, ErrLeaseLost)
	}
	return nil
}

// ListWorkers returns every worker row, leased or not, by worker number.
func ListWorkers(ctx context.Context, db *sql.DB, schema string) ([]WorkerState, error) {
	tbl, err := qualify(schema, "id_workers")
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx,
		"SELECT worker, holder, IF(lease_expires > NOW(6), lease_expires, NULL), high_water_unix, renewals FROM "+tbl+" ORDER BY worker")
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	defer rows.Close()
	var out []WorkerState
	for rows.Next() {
		var w WorkerState
		var exp sql.NullTime
		if err := rows.Scan(&w.Worker, &w.Holder, &exp, &w.HighWaterUnix, &w.Renewals); err != nil {
			return nil, fmt.Errorf("list workers: %w", err)
		}
		if exp.Valid {
			t := exp.Time
			w.LeaseExpires = &t
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return out, nil
}

func newToken() (int64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("lease token: %w", err)
	}
	// Positive and non-zero: 0 marks a free row.
	return int64(binary.LittleEndian.Uint64(b[:])>>1) | 1, nil
}

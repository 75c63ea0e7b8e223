package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"time"
)

// connTx is a transaction run by hand on one pooled connection rather than through
// database/sql's Tx, whose BEGIN and COMMIT are each a round trip of their own: here START
// TRANSACTION rides in front of the first statement and COMMIT behind the last (OpenDB
// enables multi-statements), so a group-commit batch costs two round trips (lock and read;
// write and commit) however many statements it runs, and so does an outbox claim.
//
// database/sql does not know a transaction is open on the connection, so connTx must never
// hand one back to the pool mid-transaction: done rolls back whatever may still be open, and
// a connection whose state it cannot make certain is discarded, not pooled.
type connTx struct {
	conn *sql.Conn
	// open: START TRANSACTION may have run and no COMMIT or ROLLBACK is known to have ended
	// it.
	open bool
}

func (s *Store) connTx(ctx context.Context) (*connTx, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return &connTx{conn: conn}, nil
}

// queryRow starts the transaction and runs query (one row expected) in the same round trip.
func (t *connTx) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	t.open = true
	return t.conn.QueryRowContext(ctx, "START TRANSACTION;\n"+query, args...)
}

// query starts the transaction and runs query in the same round trip.
func (t *connTx) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	t.open = true
	return t.conn.QueryContext(ctx, "START TRANSACTION;\n"+query, args...)
}

// execCommit runs stmts and, only if every one succeeded, COMMIT, in one round trip. The
// server stops at the first failing statement, so a failure leaves the transaction open (and
// done rolls it back) or the outcome unknown (a lost connection: the caller must not report
// success, and done discards the connection).
func (t *connTx) execCommit(ctx context.Context, stmts string, args ...any) error {
	if _, err := t.conn.ExecContext(ctx, stmts+";\nCOMMIT", args...); err != nil {
		return err
	}
	t.open = false
	return nil
}

// execTx runs stmts as one transaction in one round trip (START TRANSACTION, stmts, COMMIT)
// on a connection of its own.
func (s *Store) execTx(ctx context.Context, stmts string, args ...any) error {
	tx, err := s.connTx(ctx)
	if err != nil {
		return err
	}
	defer tx.done()
	tx.open = true
	return tx.execCommit(ctx, "START TRANSACTION;\n"+stmts, args...)
}

// done ends what may still be open and returns the connection to the pool.
func (t *connTx) done() {
	if t.open {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := t.conn.ExecContext(ctx, "ROLLBACK")
		cancel()
		if err != nil {
			// Returning driver.ErrBadConn from Raw makes database/sql close the connection.
			_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		t.open = false
	}
	_ = t.conn.Close()
}

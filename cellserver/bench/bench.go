// Package bench measures the money path on a hot packet: naive row locking, optimistic
// version checks, the per-packet FIFO queue, and the queue with group commit, on the same
// MariaDB in the same run (see hotopens_test.go and docs/benchmarks.md). The non-test code
// here is the optimistic baseline, which the server itself never uses: it exists only so the
// benchmark compares the design against what it replaced.
package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// ErrConflict is an optimistic open that lost its version race on every attempt.
var ErrConflict = errors.New("optimistic open: version changed on every attempt")

// OpenOptimistic opens a packet the optimistic way: read without a lock, compute the share,
// then write under a version check, retrying up to attempts times. It writes what the real
// path writes (receive record, its outbox row, the packet update), so only the concurrency
// control differs.
func OpenOptimistic(ctx context.Context, st *store.Store, cellSchema string, id int64, user string, attempts int) (int64, error) {
	packets, receipts := st.Tables(id)
	db := st.DB()
	for try := 0; try < attempts; try++ {
		var kind, status int
		var remaining, version int64
		var count, total int
		var expires int64
		err := db.QueryRowContext(ctx, "SELECT kind, status, remaining_cents, remaining_count, share_count, version, expires_ms FROM "+packets+" WHERE id = ?", id).
			Scan(&kind, &status, &remaining, &count, &total, &version, &expires)
		if err != nil {
			return 0, fmt.Errorf("read packet %d: %w", id, err)
		}
		if status != int(store.StatusActive) || time.Now().UnixMilli() >= expires {
			return 0, store.ErrExpired
		}
		if count == 0 {
			return 0, store.ErrExhausted
		}
		k := packet.KindRandom
		if kind == 2 {
			k = packet.KindFixed
		}
		amt, err := packet.Share(k, remaining, count, packet.DefaultRand)
		if err != nil {
			return 0, err
		}
		ok, err := writeOptimistic(ctx, db, packets, receipts, cellSchema, id, user, amt, remaining, count, total, version)
		if err != nil {
			return 0, err
		}
		if ok {
			return amt, nil
		}
	}
	return 0, ErrConflict
}

func writeOptimistic(ctx context.Context, db *sql.DB, packets, receipts, cell string, id int64, user string, amt, remaining int64, count, total int, version int64) (bool, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, "UPDATE "+packets+" SET remaining_cents = ?, remaining_count = ?, version = version + 1 WHERE id = ? AND version = ?",
		remaining-amt, count-1, id, version)
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return false, nil
	}
	now := time.Now().UnixMilli()
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+receipts+" (packet_id, seq, user_id, amount_cents, opened_ms) VALUES (?, ?, ?, ?, ?)",
		id, total-count+1, user, amt, now); err != nil {
		return false, err
	}
	pid := strconv.FormatInt(id, 10)
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+cell+".outbox (kind, idem_key, packet_id, account, amount_cents, at_ms) VALUES (?, ?, ?, ?, ?, ?)",
		int(store.OutboxCredit), "credit:"+pid+":"+user, id, user, amt, now); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

// Package baseline holds the designs the cell server replaced, kept only so the benchmarks
// compare the money path against them on the same MariaDB in the same run: naive row locking
// with no queue (Naive), optimistic version checks (OpenOptimistic), the per-packet queue
// without group commit (Ungrouped) and group commit over bare SQL (BareQueue). Its benchmarks
// (hotopens_test.go, http_test.go; `make bench`, docs/benchmarks.md) and the lock-strategy
// sweep (internal/lockbench) use them.
//
// Nothing in the cell server may import it: these are the designs docs/design.md rejects.
package baseline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// Naive runs every request straight in its own transaction, with no queue and no guard: the
// naive server (SELECT … FOR UPDATE per open), behind the same HTTP API as the real queue.
type Naive struct{ Opener queue.Opener }

// Open validates and opens in one transaction of its own.
func (n Naive) Open(ctx context.Context, id int64, user string) (store.OpenOutcome, error) {
	if err := n.Opener.ValidateOpen(id, user); err != nil {
		return store.OpenOutcome{}, err
	}
	out, err := n.Opener.OpenBatch(ctx, id, []string{user})
	if err != nil {
		return store.OpenOutcome{}, err
	}
	return out[0], out[0].Err
}

// Do runs fn at once.
func (Naive) Do(ctx context.Context, _ int64, fn func(ctx context.Context) error) error {
	return fn(ctx)
}

// RetryAfter is never advised: nothing overflows without a queue.
func (Naive) RetryAfter() time.Duration { return time.Second }

// Ungrouped commits each open of a queue worker's run in its own transaction, in order: the
// per-packet FIFO queue without group commit (strategy (c)) when a queue.Queue opens through it.
type Ungrouped struct{ queue.Opener }

// OpenBatch opens users one transaction each.
func (u Ungrouped) OpenBatch(ctx context.Context, id int64, users []string) ([]store.OpenOutcome, error) {
	out := make([]store.OpenOutcome, len(users))
	for i, user := range users {
		o, err := u.Opener.OpenBatch(ctx, id, []string{user})
		if err != nil {
			out[i] = store.OpenOutcome{Err: err}
			continue
		}
		out[i] = o[0]
	}
	return out, nil
}

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
		amt, err := packet.Share(store.KindOfColumn(kind), remaining, count, packet.DefaultRand)
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

// BareQueue is the ceiling the group-commit path is measured against: a per-packet FIFO in
// front of bare SQL, with the same batch bound, writing what the real path writes (receive
// records, their outbox rows, the packet update) in one transaction per batch, but with
// nothing else — no repeat check, no validation, no metrics, one statement each. The
// project's queue should stay within a small factor of it (docs/benchmarks.md).
type BareQueue struct {
	st       *store.Store
	outbox   string
	batchMax int

	mu    sync.Mutex
	lanes map[int64]chan bareReq
	wg    sync.WaitGroup
}

type bareReq struct {
	user string
	done chan error
}

// NewBareQueue opens bare batches of at most batchMax on st's tables.
func NewBareQueue(st *store.Store, cellSchema string, batchMax int) *BareQueue {
	return &BareQueue{st: st, outbox: cellSchema + ".outbox", batchMax: batchMax, lanes: map[int64]chan bareReq{}}
}

// Open queues one open of packet id and waits for its batch to commit.
func (q *BareQueue) Open(ctx context.Context, id int64, user string) error {
	q.mu.Lock()
	lane, ok := q.lanes[id]
	if !ok {
		lane = make(chan bareReq, 4096)
		q.lanes[id] = lane
		q.wg.Add(1)
		go q.run(id, lane)
	}
	q.mu.Unlock()
	r := bareReq{user: user, done: make(chan error, 1)}
	select {
	case lane <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the lanes after they answer what is queued.
func (q *BareQueue) Close() {
	q.mu.Lock()
	for id, lane := range q.lanes {
		close(lane)
		delete(q.lanes, id)
	}
	q.mu.Unlock()
	q.wg.Wait()
}

func (q *BareQueue) run(id int64, lane chan bareReq) {
	defer q.wg.Done()
	batch := make([]bareReq, 0, q.batchMax)
	for first := range lane {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < q.batchMax {
			select {
			case r, ok := <-lane:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		err := q.commit(id, batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (q *BareQueue) commit(id int64, batch []bareReq) error {
	ctx := context.Background()
	packets, receipts := q.st.Tables(id)
	tx, err := q.st.DB().BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var remaining int64
	var count, total int
	if err := tx.QueryRowContext(ctx, "SELECT remaining_cents, remaining_count, share_count FROM "+packets+" WHERE id = ? FOR UPDATE", id).
		Scan(&remaining, &count, &total); err != nil {
		return fmt.Errorf("lock packet %d: %w", id, err)
	}
	if count < len(batch) {
		return store.ErrExhausted
	}
	now := time.Now().UnixMilli()
	pid := strconv.FormatInt(id, 10)
	var rb, ob strings.Builder
	rb.WriteString("INSERT INTO " + receipts + " (packet_id, seq, user_id, amount_cents, opened_ms) VALUES ")
	ob.WriteString("INSERT INTO " + q.outbox + " (kind, idem_key, packet_id, account, amount_cents, share_count, grp, at_ms) VALUES ")
	rargs := make([]any, 0, 5*len(batch))
	oargs := make([]any, 0, 8*len(batch))
	left, n := remaining, count
	for i, r := range batch {
		amt := left / int64(n)
		left -= amt
		n--
		if i > 0 {
			rb.WriteByte(',')
			ob.WriteByte(',')
		}
		rb.WriteString("(?,?,?,?,?)")
		ob.WriteString("(?,?,?,?,?,?,?,?)")
		rargs = append(rargs, id, total-n, r.user, amt, now)
		oargs = append(oargs, int(store.OutboxCredit), "credit:"+pid+":"+r.user, id, r.user, amt, 0, "", now)
	}
	if _, err := tx.ExecContext(ctx, rb.String(), rargs...); err != nil {
		return fmt.Errorf("insert receipts: %w", err)
	}
	if _, err := tx.ExecContext(ctx, ob.String(), oargs...); err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE "+packets+" SET remaining_cents = ?, remaining_count = ?, version = version + 1 WHERE id = ?", left, n, id); err != nil {
		return fmt.Errorf("update packet: %w", err)
	}
	return tx.Commit()
}

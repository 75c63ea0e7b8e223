package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Settlement retries back off per packet, doubling from the first delay up to the cap, so a
// packet whose settlement keeps failing is retried for ever but never again stands in front
// of packets that can be settled (the sweep takes the earliest due index rows first).
const (
	SettleRetryFirst = 5 * time.Second
	SettleRetryMax   = 5 * time.Minute
)

// settleBackoff is the wait after a packet's attempts-th consecutive failure (0-based).
func settleBackoff(attempts int) time.Duration {
	d := SettleRetryFirst << min(max(attempts, 0), 16)
	return min(d, SettleRetryMax)
}

type sweepMetrics struct {
	failures *prometheus.CounterVec
	orphans  prometheus.Counter
}

func newSweepMetrics() sweepMetrics {
	return sweepMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_sweeper_settle_failures_total",
			Help: "Packets whose settlement failed and was put off to a later sweep, by logical table and reason (table_missing: its day or cold table could not be found; error: anything else).",
		}, []string{"table", "reason"}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_sweeper_orphans_dropped_total",
			Help: "Expiry index rows dropped because their packet exists neither in its (existing) day table nor in the cold table.",
		}),
	}
}

func (m sweepMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.failures, m.orphans}
}

// ensureSweepColumns adds the expiry index's retry counter to a cell schema created before
// it existed. The column is added apart from the table's DDL so an existing cell migrates in
// place; MariaDB adds a column with a default instantly.
func (s *Store) ensureSweepColumns(ctx context.Context) error {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = 'expiry' AND column_name = 'attempts'",
		s.cell).Scan(&n)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", s.cellTable("expiry"), err)
	}
	if n > 0 {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, "ALTER TABLE "+s.cellTable("expiry")+" ADD COLUMN IF NOT EXISTS attempts INT NOT NULL DEFAULT 0"); err != nil {
		return fmt.Errorf("add retry counter to %s: %w", s.cellTable("expiry"), err)
	}
	return nil
}

// SweepResult is what one sweep did.
type SweepResult struct {
	Settled []Settlement
	// Due is how many index rows the sweep took (at most its limit).
	Due int
	// Failed packets could not be settled; each was put off by its backoff, unless it is
	// also counted in Stuck (the backoff itself could not be written).
	Failed, Stuck int
	// Orphans are packet IDs whose index row was dropped: no such packet exists.
	Orphans []int64
}

// ExpireDue settles up to limit due packets; see Sweep.
func (s *Store) ExpireDue(ctx context.Context, now time.Time, limit int) ([]Settlement, error) {
	r, err := s.Sweep(ctx, now, limit)
	return r.Settled, err
}

// Sweep settles up to limit packets whose deadline passed by now: an active packet's exact
// remainder is refunded once (with an outbox refund row), a wrapped one is cancelled. Each
// packet is settled in its own transaction that locks the packet row, so a late open either
// commits before (and the refund sees its share gone) or is refused after.
//
// A packet that cannot be settled now (its table unreadable, a lock timeout, anything) keeps
// its index row and is put off by a backoff, so it never blocks the packets behind it; the
// errors are returned joined. An index row is dropped only once its packet is settled, or
// when its day table answers that it has no such row and the cold table does not hold it
// either (docs/design.md §4.1: a refund may be late, never lost).
func (s *Store) Sweep(ctx context.Context, now time.Time, limit int) (SweepResult, error) {
	var r SweepResult
	rows, err := s.db.QueryContext(ctx, "SELECT packet_id, attempts FROM "+s.cellTable("expiry")+" WHERE expires_ms <= ? ORDER BY expires_ms, packet_id LIMIT ?", ms(now), limit)
	if err != nil {
		return r, fmt.Errorf("list due packets: %w", err)
	}
	type due struct {
		id       int64
		attempts int
	}
	var list []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.attempts); err != nil {
			rows.Close()
			return r, fmt.Errorf("list due packets: %w", err)
		}
		list = append(list, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("list due packets: %w", err)
	}
	r.Due = len(list)
	var errs []error
	for _, d := range list {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		st, orphan, err := s.settle(ctx, d.id, now)
		t := s.TableOf(d.id)
		s.observe(t, err)
		switch {
		case err != nil && ctx.Err() != nil:
			errs = append(errs, fmt.Errorf("settle packet %d: %w", d.id, err))
		case err != nil:
			r.Failed++
			reason := "error"
			if isMissingTable(err) {
				reason = "table_missing"
			}
			s.sweep.failures.WithLabelValues(s.layout.Name(t), reason).Inc()
			next := now.Add(settleBackoff(d.attempts))
			if berr := s.backOff(ctx, d.id, next); berr != nil {
				r.Stuck++
				err = errors.Join(err, berr)
			}
			errs = append(errs, fmt.Errorf("settle packet %d (attempt %d, next at %s): %w", d.id, d.attempts+1, next.UTC().Format(time.RFC3339), err))
		case orphan:
			s.sweep.orphans.Inc()
			r.Orphans = append(r.Orphans, d.id)
		case st != nil:
			r.Settled = append(r.Settled, *st)
		}
	}
	return r, errors.Join(errs...)
}

// backOff puts a packet's next settlement attempt off to next.
func (s *Store) backOff(ctx context.Context, id int64, next time.Time) error {
	_, err := s.db.ExecContext(ctx, "UPDATE "+s.cellTable("expiry")+" SET expires_ms = ?, attempts = attempts + 1 WHERE packet_id = ?", ms(next), id)
	if err != nil {
		return fmt.Errorf("back off settlement of packet %d: %w", id, err)
	}
	return nil
}

// settle settles one packet; orphan reports an index row dropped for a packet that does not
// exist.
func (s *Store) settle(ctx context.Context, id int64, now time.Time) (st *Settlement, orphan bool, err error) {
	packets, _ := s.Tables(id)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, err
	}
	defer rollback(tx)
	p, err := scanPacket(tx.QueryRowContext(ctx, "SELECT "+packetCols+" FROM "+packets+" WHERE id = ? FOR UPDATE", id))
	if errors.Is(err, sql.ErrNoRows) {
		archived, err := s.archivedSettled(ctx, tx, id)
		if err != nil {
			return nil, false, err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+s.cellTable("expiry")+" WHERE packet_id = ?", id); err != nil {
			return nil, false, err
		}
		return nil, !archived, tx.Commit()
	}
	if err != nil {
		// A missing or unreadable day table says nothing about whether the packet exists.
		return nil, false, fmt.Errorf("read %s: %w", packets, err)
	}
	if now.Before(p.ExpiresAt) && (p.Status == StatusWrapped || p.Status == StatusActive) {
		// Paid since the index row was read: keep the index in step and wait.
		_, err = tx.ExecContext(ctx, "UPDATE "+s.cellTable("expiry")+" SET expires_ms = ?, attempts = 0 WHERE packet_id = ?", ms(p.ExpiresAt), id)
		if err != nil {
			return nil, false, err
		}
		return nil, false, tx.Commit()
	}
	st = &Settlement{PacketID: id, Sender: p.Sender}
	switch p.Status {
	case StatusWrapped:
		st.Status = StatusCancelled
		_, err = tx.ExecContext(ctx, "UPDATE "+packets+" SET status = ?, settled_ms = ?, version = version + 1 WHERE id = ? AND status = ?",
			int(StatusCancelled), ms(now), id, int(StatusWrapped))
	case StatusActive:
		st.Status, st.RefundedCents = StatusExpired, p.RemainingCents
		_, err = tx.ExecContext(ctx, "UPDATE "+packets+" SET status = ?, refunded_cents = refunded_cents + remaining_cents, remaining_cents = 0, remaining_count = 0, settled_ms = ?, version = version + 1 WHERE id = ? AND status = ? AND remaining_cents = ?",
			int(StatusExpired), ms(now), id, int(StatusActive), p.RemainingCents)
		if err == nil && p.RemainingCents > 0 {
			err = s.insertOutbox(ctx, tx, []OutboxRow{{Kind: OutboxRefund, Key: "refund:" + strconv.FormatInt(id, 10),
				PacketID: id, Account: p.Sender, AmountCents: p.RemainingCents, At: now}})
		}
	default:
		st = nil // settled before: the refund happened once already
	}
	if err != nil {
		return nil, false, err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+s.cellTable("expiry")+" WHERE packet_id = ?", id); err != nil {
		return nil, false, err
	}
	return st, false, tx.Commit()
}

// archivedSettled reports whether the cold table holds packet id, settled. Archive moves only
// settled packets, so a cold row that is not settled is corruption, not something to drop.
func (s *Store) archivedSettled(ctx context.Context, q querier, id int64) (bool, error) {
	cold, _ := s.coldTables(s.TableOf(id))
	var status int
	err := q.QueryRowContext(ctx, "SELECT status FROM "+cold+" WHERE id = ?", id).Scan(&status)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read %s: %w", cold, err)
	case Status(status) != StatusExpired && Status(status) != StatusCancelled:
		return false, fmt.Errorf("packet %d is %s in %s: only settled packets are archived", id, Status(status), cold)
	}
	return true, nil
}

// querier is what *sql.DB and *sql.Tx share for reads.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

package store

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// ClaimOutbox claims up to limit undelivered outbox rows whose next attempt is due, oldest
// first, for claimFor: their next attempt moves to now+claimFor, so the other servers of the
// cell (every server runs a relay) skip them, and a relay that dies mid-delivery only delays
// them. SKIP LOCKED lets concurrent relays claim disjoint rows without waiting on each other.
//
// A claim is two round trips: START TRANSACTION with the locking read, then the UPDATE with
// COMMIT (connTx); an idle pass rolls back after the first.
func (s *Store) ClaimOutbox(ctx context.Context, now time.Time, limit int, claimFor time.Duration) ([]OutboxRow, error) {
	tx, err := s.connTx(ctx)
	if err != nil {
		return nil, fmt.Errorf("claim outbox: %w", err)
	}
	defer tx.done()
	rows, err := tx.query(ctx, "SELECT id, kind, idem_key, packet_id, account, amount_cents, share_count, grp, at_ms, attempts FROM "+
		s.cellTable("outbox")+" WHERE delivered = 0 AND next_ms <= ? ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", ms(now), limit)
	if err != nil {
		return nil, fmt.Errorf("claim outbox: %w", err)
	}
	var out []OutboxRow
	for rows.Next() {
		var r OutboxRow
		var kind int
		var at int64
		if err := rows.Scan(&r.ID, &kind, &r.Key, &r.PacketID, &r.Account, &r.AmountCents, &r.Count, &r.Group, &at, &r.Attempts); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim outbox: %w", err)
		}
		r.Kind, r.At = OutboxKind(kind), fromMS(at)
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(out) == 0 {
		return nil, err
	}
	args := make([]any, 0, len(out)+1)
	args = append(args, ms(now.Add(claimFor)))
	for _, r := range out {
		args = append(args, r.ID)
	}
	if err := tx.execCommit(ctx, "UPDATE "+s.cellTable("outbox")+" SET next_ms = ? WHERE id IN (?"+strings.Repeat(",?", len(out)-1)+")", args...); err != nil {
		return nil, fmt.Errorf("claim outbox: %w", err)
	}
	return out, nil
}

// MarkDelivered records that the consumer acknowledged these rows.
func (s *Store) MarkDelivered(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	if _, err := s.db.ExecContext(ctx, s.markDelivered(len(ids)), args...); err != nil {
		return fmt.Errorf("mark %d outbox rows delivered: %w", len(ids), err)
	}
	return nil
}

// markDelivered is the UPDATE marking n outbox rows, given by id, delivered.
func (s *Store) markDelivered(n int) string {
	return "UPDATE " + s.cellTable("outbox") + " SET delivered = 1, last_error = NULL WHERE id IN (?" + strings.Repeat(",?", n-1) + ")"
}

// RecordHistoryDelivered stores history lines and marks the outbox rows ids delivered in one
// transaction of one round trip, for a relay whose history lives in this store: the lines and
// the mark commit together or not at all (then the rows are delivered again, and both writes
// are idempotent), for one COMMIT and one fsync instead of two.
func (s *Store) RecordHistoryDelivered(ctx context.Context, hs []HistoryItem, ids []int64) error {
	if len(ids) == 0 {
		return s.RecordHistory(ctx, hs...)
	}
	var b strings.Builder
	args := make([]any, 0, 7*len(hs)+len(ids))
	if len(hs) > 0 {
		args = s.appendHistoryInsert(&b, args, hs)
		b.WriteString(";\n")
	}
	b.WriteString(s.markDelivered(len(ids)))
	for _, id := range ids {
		args = append(args, id)
	}
	if err := s.execTx(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("record %d history lines, mark %d outbox rows delivered: %w", len(hs), len(ids), err)
	}
	return nil
}

// MarkFailed records a failed delivery and when to try again.
func (s *Store) MarkFailed(ctx context.Context, id int64, next time.Time, cause error) error {
	msg := cause.Error()
	if len(msg) > 250 {
		msg = msg[:250]
	}
	_, err := s.db.ExecContext(ctx, "UPDATE "+s.cellTable("outbox")+" SET attempts = attempts + 1, next_ms = ?, last_error = ? WHERE id = ?", ms(next), msg, id)
	if err != nil {
		return fmt.Errorf("mark outbox row %d failed: %w", id, err)
	}
	return nil
}

// OutboxBacklog counts undelivered rows.
func (s *Store) OutboxBacklog(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+s.cellTable("outbox")+" WHERE delivered = 0").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count outbox backlog: %w", err)
	}
	return n, nil
}

// PurgeDelivered deletes delivered rows older than before, in batches, so the outbox stays
// small; the wallet's ledger is the durable record of what was delivered.
func (s *Store) PurgeDelivered(ctx context.Context, before time.Time, batch int) (int64, error) {
	var total int64
	for {
		res, err := s.db.ExecContext(ctx, "DELETE FROM "+s.cellTable("outbox")+" WHERE delivered = 1 AND at_ms < ? LIMIT ?", ms(before), batch)
		if err != nil {
			return total, fmt.Errorf("purge delivered outbox rows: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < int64(batch) {
			return total, nil
		}
	}
}

// RecordHistory stores history lines in one statement; it is idempotent on (user, role,
// packet), which is what a redelivered outbox row repeats.
func (s *Store) RecordHistory(ctx context.Context, hs ...HistoryItem) error {
	if len(hs) == 0 {
		return nil
	}
	var b strings.Builder
	args := s.appendHistoryInsert(&b, make([]any, 0, 7*len(hs)), hs)
	if _, err := s.db.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("record %d history lines: %w", len(hs), err)
	}
	return nil
}

// appendHistoryInsert writes the idempotent multi-row insert of hs to b.
func (s *Store) appendHistoryInsert(b *strings.Builder, args []any, hs []HistoryItem) []any {
	b.WriteString("INSERT IGNORE INTO " + s.cellTable("history") + " (user_id, role, packet_id, at_ms, amount_cents, share_count, grp) VALUES ")
	for i, h := range hs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?,?)")
		args = append(args, h.User, int(h.Role), h.PacketID, ms(h.At), h.AmountCents, h.Count, h.Group)
	}
	return args
}

// History pages a user's history newest first, strictly before (beforeAt, beforeID); a zero
// beforeAt starts at the newest.
func (s *Store) History(ctx context.Context, user string, role Role, beforeAt time.Time, beforeID int64, limit int) ([]HistoryItem, error) {
	q := "SELECT packet_id, at_ms, amount_cents, share_count, grp FROM " + s.cellTable("history") + " WHERE user_id = ? AND role = ?"
	args := []any{user, int(role)}
	if !beforeAt.IsZero() {
		q += " AND (at_ms < ? OR (at_ms = ? AND packet_id < ?))"
		args = append(args, ms(beforeAt), ms(beforeAt), beforeID)
	}
	q += " ORDER BY at_ms DESC, packet_id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", user, err)
	}
	defer rows.Close()
	var out []HistoryItem
	for rows.Next() {
		h := HistoryItem{User: user, Role: role}
		var at int64
		if err := rows.Scan(&h.PacketID, &at, &h.AmountCents, &h.Count, &h.Group); err != nil {
			return nil, fmt.Errorf("read history of %s: %w", user, err)
		}
		h.At = fromMS(at)
		out = append(out, h)
	}
	return out, rows.Err()
}

// RequeueOutbox makes an effect pending again: the row is inserted, or, when its key exists
// (delivered or not), reset to be delivered at once. Reconciliation uses it for effects the
// consumer never received; the consumer's idempotency makes a needless requeue harmless.
func (s *Store) RequeueOutbox(ctx context.Context, r OutboxRow) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO "+s.cellTable("outbox")+" (kind, idem_key, packet_id, account, amount_cents, share_count, grp, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"+
		" ON DUPLICATE KEY UPDATE delivered = 0, next_ms = 0, attempts = 0",
		int(r.Kind), r.Key, r.PacketID, r.Account, r.AmountCents, r.Count, r.Group, ms(r.At))
	if err != nil {
		return fmt.Errorf("requeue outbox %s: %w", r.Key, err)
	}
	return nil
}

// ReleaseClaims makes claimed, undelivered rows due again at once (a relay that stops
// mid-batch hands them back instead of hiding them for the claim period).
func (s *Store) ReleaseClaims(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	q := "UPDATE " + s.cellTable("outbox") + " SET next_ms = 0 WHERE delivered = 0 AND id IN (?" + strings.Repeat(",?", len(ids)-1) + ")"
	if _, err := s.db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("release %d outbox claims: %w", len(ids), err)
	}
	return nil
}

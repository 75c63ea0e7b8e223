package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
)

const packetCols = `id, sender, request_id, kind, status, total_cents, share_count, remaining_cents,
  remaining_count, refunded_cents, grp, greeting, COALESCE(payment_txn_id, ''), created_ms, paid_ms,
  expires_ms, settled_ms`

type rowScanner interface{ Scan(dest ...any) error }

func scanPacket(r rowScanner) (Packet, error) {
	var p Packet
	var kind, status int
	var created, paid, expires, settled int64
	err := r.Scan(&p.ID, &p.Sender, &p.RequestID, &kind, &status, &p.TotalCents, &p.Count,
		&p.RemainingCents, &p.RemainingCount, &p.RefundedCents, &p.Group, &p.Greeting, &p.PaymentTxnID,
		&created, &paid, &expires, &settled)
	if err != nil {
		return Packet{}, err
	}
	p.Kind, p.Status = KindOfColumn(kind), Status(status)
	p.CreatedAt, p.PaidAt, p.ExpiresAt, p.SettledAt = fromMS(created), fromMS(paid), fromMS(expires), fromMS(settled)
	return p, nil
}

// Wrap stores a new packet p (its ID already allocated) unless the sender already wrapped one
// with the same request ID, in which case it returns that one and created=false. A reused
// request ID with different content is refused with ErrIdempotencyClash. payBy is the
// deadline for payment; the sweeper cancels the packet after it.
func (s *Store) Wrap(ctx context.Context, p Packet, payBy time.Time) (Packet, bool, error) {
	return s.WrapChecked(ctx, p, payBy, nil)
}

// WrapChecked is Wrap with check run just before the commit of a new packet: the key's home
// cell refuses to commit a wrap whose key it stopped owning while the statements ran
// (routing.CheckHome), so the old and the new home never both create one.
func (s *Store) WrapChecked(ctx context.Context, p Packet, payBy time.Time, check func() error) (Packet, bool, error) {
	tbl := s.TableOf(p.ID)
	packets, _ := s.Tables(p.ID)
	got, created, err := s.wrap(ctx, p, payBy, packets, check)
	s.observe(tbl, err)
	if isMissingTable(err) {
		// Today's day table is gone (a rename, a botched restore): the database's fault, to
		// retry, not an internal error.
		err = fmt.Errorf("%w: %w", ErrUnreadable, err)
	}
	if err != nil {
		return Packet{}, false, fmt.Errorf("wrap packet %d for %s/%s: %w", p.ID, p.Sender, p.RequestID, err)
	}
	return got, created, nil
}

func (s *Store) wrap(ctx context.Context, p Packet, payBy time.Time, packets string, check func() error) (Packet, bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Packet{}, false, err
	}
	defer rollback(tx)
	_, err = tx.ExecContext(ctx, "INSERT INTO "+s.cellTable("wrap_requests")+" (sender, request_id, packet_id) VALUES (?, ?, ?)",
		p.Sender, p.RequestID, p.ID)
	if isDuplicate(err) {
		rollback(tx)
		return s.existingWrap(ctx, p)
	}
	if err != nil {
		return Packet{}, false, err
	}
	p.Status = StatusWrapped
	p.RemainingCents, p.RemainingCount = p.TotalCents, p.Count
	p.ExpiresAt = payBy
	_, err = tx.ExecContext(ctx, "INSERT INTO "+packets+` (id, sender, request_id, kind, status, total_cents,
  share_count, remaining_cents, remaining_count, grp, greeting, created_ms, expires_ms)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.Sender, p.RequestID, p.Kind.code(), int(p.Status), p.TotalCents, p.Count, p.RemainingCents,
		p.RemainingCount, p.Group, p.Greeting, ms(p.CreatedAt), ms(payBy))
	if err != nil {
		return Packet{}, false, err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+s.cellTable("expiry")+" (packet_id, expires_ms) VALUES (?, ?)", p.ID, ms(payBy)); err != nil {
		return Packet{}, false, err
	}
	if check != nil {
		if err := check(); err != nil {
			return Packet{}, false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return Packet{}, false, err
	}
	p.CreatedAt = fromMS(ms(p.CreatedAt))
	p.ExpiresAt = fromMS(ms(payBy))
	return p, true, nil
}

// existingWrap answers a wrap whose (sender, request ID) key is taken. The key's row and the
// packet must name this exact sender and request: the columns compare byte for byte, but a
// table that does not (restored from an old backup, recreated by an old release before the
// next EnsureSchema) would otherwise hand one user another's packet. Such a mismatch is a
// schema fault, not a refusal: the caller gets an error and no packet.
func (s *Store) existingWrap(ctx context.Context, p Packet) (Packet, bool, error) {
	var id int64
	var sender, requestID string
	err := s.db.QueryRowContext(ctx, "SELECT packet_id, sender, request_id FROM "+s.cellTable("wrap_requests")+" WHERE sender = ? AND request_id = ?",
		p.Sender, p.RequestID).Scan(&id, &sender, &requestID)
	if err != nil {
		return Packet{}, false, fmt.Errorf("read wrap request: %w", err)
	}
	if sender != p.Sender || requestID != p.RequestID {
		return Packet{}, false, fmt.Errorf("wrap request key %q/%q matched %q/%q: %s.wrap_requests does not compare identifiers byte for byte", p.Sender, p.RequestID, sender, requestID, s.cell)
	}
	got, err := s.keyedPacket(ctx, id)
	if err != nil {
		return Packet{}, false, err
	}
	if got.Sender != p.Sender || got.RequestID != p.RequestID {
		return Packet{}, false, fmt.Errorf("wrap request %q/%q points at packet %d of %q/%q", p.Sender, p.RequestID, id, got.Sender, got.RequestID)
	}
	if !got.SameWrap(p) {
		return Packet{}, false, fmt.Errorf("request %s already wrapped packet %d: %w", p.RequestID, id, ErrIdempotencyClash)
	}
	return got, false, nil
}

// keyedPacket reads a packet an idempotency row names. The row proves the packet was stored,
// so "not found" here means its table cannot be read now (a restore, a rename), never that
// the key is free: answering "absent" would let a retry create a second packet elsewhere.
func (s *Store) keyedPacket(ctx context.Context, id int64) (Packet, error) {
	p, err := s.get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Packet{}, fmt.Errorf("packet %d, named by an idempotency key, cannot be read: %w", id, ErrUnreadable)
	}
	return p, err
}

// Get reads a packet without locking it. Packets older than the retention are looked up in
// the cold table when the day table no longer has them.
func (s *Store) Get(ctx context.Context, id int64) (Packet, error) {
	p, err := s.get(ctx, id)
	s.observe(s.TableOf(id), err)
	if err != nil {
		return Packet{}, fmt.Errorf("get packet %d: %w", id, err)
	}
	return p, nil
}

func (s *Store) get(ctx context.Context, id int64) (Packet, error) {
	packets, _ := s.Tables(id)
	p, err := scanPacket(s.db.QueryRowContext(ctx, "SELECT "+packetCols+" FROM "+packets+" WHERE id = ?", id))
	dayMissing := isMissingTable(err)
	if errors.Is(err, sql.ErrNoRows) || dayMissing {
		cold, _ := s.coldTables(s.TableOf(id))
		p, err = scanPacket(s.db.QueryRowContext(ctx, "SELECT "+packetCols+" FROM "+cold+" WHERE id = ?", id))
	}
	if errors.Is(err, sql.ErrNoRows) || isMissingTable(err) {
		return Packet{}, s.absent(ctx, id, dayMissing)
	}
	return p, err
}

// absent is the answer for a packet found in neither its day table nor the cold one. When the
// day table itself is missing although the cell already existed on the packet's day (its cold
// table, made at the cell's first start and never renamed, is older) and the packet would still
// be in it (created within the retention), the table is unreadable — a rename, a botched
// restore — and the packet may well exist: "not found" would tell a client its money is gone,
// so the answer is ErrUnreadable (503, retry). An ID from before the cell existed, or from
// past the retention, is simply not found.
func (s *Store) absent(ctx context.Context, id int64, dayMissing bool) error {
	created := ids.CreatedAt(id)
	if !dayMissing || time.Since(created) >= s.keep {
		return ErrNotFound
	}
	t := s.TableOf(id)
	packets, _ := s.Tables(id)
	var since time.Time
	err := s.db.QueryRowContext(ctx, "SELECT CREATE_TIME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		s.layout.DBName(t.DB), fmt.Sprintf("t_%d_cold", t.Table)).Scan(&since)
	// A day of slack: CREATE_TIME is in the server's time zone.
	if err == nil && created.Before(since.Add(-24*time.Hour)) {
		return ErrNotFound
	}
	return fmt.Errorf("packet %d: day table %s missing: %w", id, packets, ErrUnreadable)
}

func (s *Store) lockPacket(ctx context.Context, tx *sql.Tx, packets string, id int64) (Packet, error) {
	p, err := scanPacket(tx.QueryRowContext(ctx, "SELECT "+packetCols+" FROM "+packets+" WHERE id = ? FOR UPDATE", id))
	if errors.Is(err, sql.ErrNoRows) || isMissingTable(err) {
		return Packet{}, s.absent(ctx, id, isMissingTable(err))
	}
	return p, err
}

// Pay activates a wrapped packet on the payment system's notice. It is idempotent on the
// payment transaction ID: a repeated notice returns the packet unchanged. The packet then
// expires at now+expiry. The outbox gets the escrow transfer and the sender's history entry
// in the same transaction.
func (s *Store) Pay(ctx context.Context, id int64, txnID string, amount int64, now time.Time, expiry time.Duration) (Packet, error) {
	p, err := s.pay(ctx, id, txnID, amount, now, expiry)
	s.observe(s.TableOf(id), err)
	if err != nil {
		return Packet{}, fmt.Errorf("pay packet %d with %s: %w", id, txnID, err)
	}
	return p, nil
}

func (s *Store) pay(ctx context.Context, id int64, txnID string, amount int64, now time.Time, expiry time.Duration) (_ Packet, err error) {
	packets, _ := s.Tables(id)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Packet{}, err
	}
	defer rollback(tx)
	p, err := s.lockPacket(ctx, tx, packets, id)
	if err != nil {
		return Packet{}, err
	}
	switch {
	case p.Status != StatusWrapped && p.PaymentTxnID == txnID && amount == p.TotalCents:
		return p, nil // the same notice again
	case p.Status != StatusWrapped && p.PaymentTxnID == txnID:
		return Packet{}, fmt.Errorf("notice %s repeated with %d cents, paid %d: %w", txnID, amount, p.TotalCents, ErrAmountMismatch)
	case p.Status == StatusCancelled:
		return Packet{}, ErrCancelled
	case p.Status != StatusWrapped:
		return Packet{}, ErrAlreadyPaid
	case !now.Before(p.ExpiresAt):
		return Packet{}, ErrExpired
	case amount != p.TotalCents:
		return Packet{}, fmt.Errorf("paid %d cents for a %d cent packet: %w", amount, p.TotalCents, ErrAmountMismatch)
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO "+s.cellTable("payments")+" (payment_txn_id, packet_id, amount_cents) VALUES (?, ?, ?)", txnID, id, amount)
	if isDuplicate(err) {
		return Packet{}, ErrPaymentReused
	}
	if err != nil {
		return Packet{}, err
	}
	p.Status, p.PaymentTxnID = StatusActive, txnID
	p.PaidAt, p.ExpiresAt = fromMS(ms(now)), fromMS(ms(now.Add(expiry)))
	// The first open of a packet usually follows its payment on this server.
	defer func() {
		if err == nil {
			s.memo.remember(p, now)
		}
	}()
	res, err := tx.ExecContext(ctx, "UPDATE "+packets+" SET status = ?, payment_txn_id = ?, paid_ms = ?, expires_ms = ?, version = version + 1 WHERE id = ? AND status = ?",
		int(StatusActive), txnID, ms(p.PaidAt), ms(p.ExpiresAt), id, int(StatusWrapped))
	if err := oneRow(res, err); err != nil {
		return Packet{}, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE "+s.cellTable("expiry")+" SET expires_ms = ? WHERE packet_id = ?", ms(p.ExpiresAt), id); err != nil {
		return Packet{}, err
	}
	key := strconv.FormatInt(id, 10)
	if err := s.insertOutbox(ctx, tx, []OutboxRow{
		{Kind: OutboxPay, Key: "pay:" + key, PacketID: id, Account: p.Sender, AmountCents: amount, At: p.PaidAt},
		{Kind: OutboxHistorySent, Key: "sent:" + key, PacketID: id, Account: p.Sender, AmountCents: amount, Count: p.Count, Group: p.Group, At: p.PaidAt},
	}); err != nil {
		return Packet{}, err
	}
	return p, tx.Commit()
}

func oneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("conditional update changed %d rows, want 1", n)
	}
	return nil
}

// OpenBatch opens packet id for users in arrival order in ONE transaction of two round
// trips: the row lock (with START TRANSACTION), then, once the shares are computed in order,
// the multi-row insert of receive records, the multi-row insert of outbox rows, the
// conditional UPDATE and COMMIT. A user who opened before (or earlier in the same batch) gets
// the first amount back with Repeat set. A packet-wide refusal (not found, not paid, expired)
// or an infrastructure failure is the returned error and applies to every caller;
// ErrExhausted is per caller.
func (s *Store) OpenBatch(ctx context.Context, id int64, users []string, now time.Time, share ShareFunc) ([]OpenOutcome, Packet, error) {
	if len(users) == 0 {
		return nil, Packet{}, fmt.Errorf("open packet %d: no users", id)
	}
	out, p, err := s.openRemembered(ctx, id, users, now, share)
	switch {
	case errors.Is(err, errNoGuess):
		s.guesses.WithLabelValues("none").Inc()
		out, p, err = s.openBatch(ctx, id, users, now, share, false)
	case errors.Is(err, errGuessMissed):
		s.guesses.WithLabelValues("stale").Inc()
		out, p, err = s.openBatch(ctx, id, users, now, share, false)
	}
	if errors.Is(err, errRepeatSeen) {
		out, p, err = s.openBatch(ctx, id, users, now, share, true)
	}
	s.observe(s.TableOf(id), err)
	if err != nil {
		s.memo.forget(id)
		return nil, Packet{}, fmt.Errorf("open packet %d for %d users: %w", id, len(users), err)
	}
	s.memo.remember(p, now)
	return out, p, nil
}

// openRemembered runs the batch in one round trip when this store remembers the packet's row
// as openable with a share for every user (openhint.go), and says errNoGuess otherwise.
func (s *Store) openRemembered(ctx context.Context, id int64, users []string, now time.Time, share ShareFunc) ([]OpenOutcome, Packet, error) {
	p, ok := s.memo.get(id)
	if !ok || openable(&p, now) != nil || p.RemainingCount < len(users) {
		return nil, Packet{}, errNoGuess
	}
	out, p, err := s.openOnGuess(ctx, id, users, now, share, p)
	if err == nil {
		s.guesses.WithLabelValues("hit").Inc()
	} else if errors.Is(err, errRepeatSeen) {
		s.guesses.WithLabelValues("repeat").Inc()
	}
	return out, p, err
}

// errRepeatSeen: the receive-record insert of a batch that did not read earlier receipts
// hit the packet's UNIQUE (packet_id, user_id): a user of the batch opened in an earlier one.
// The transaction is rolled back whole and the batch runs again reading them first.
var errRepeatSeen = errors.New("a user of the batch opened before")

// openBatch runs one batch. Without readEarlier it reads no earlier receipts when every user
// can get a fresh share (the packet is open and has a share for each): the receipts' unique
// key, not the read, is what refuses a second open, so the read is only needed to answer
// repeats, and a batch of first opens (the hot case) saves that round trip and its lookups.
// A repeat then surfaces as a duplicate key, and OpenBatch runs the batch again with
// readEarlier. When some users cannot get a fresh share, the read comes first, because
// repeats answer even on an expired or exhausted packet (docs/design.md §4.2).
func (s *Store) openBatch(ctx context.Context, id int64, users []string, now time.Time, share ShareFunc, readEarlier bool) ([]OpenOutcome, Packet, error) {
	packets, receipts := s.Tables(id)
	tx, err := s.connTx(ctx)
	if err != nil {
		return nil, Packet{}, err
	}
	defer tx.done()
	p, err := scanPacket(tx.queryRow(ctx, "SELECT "+packetCols+" FROM "+packets+" WHERE id = ? FOR UPDATE", id))
	if errors.Is(err, sql.ErrNoRows) || isMissingTable(err) {
		tx.done()
		return s.openArchived(ctx, id, users, now, isMissingTable(err))
	}
	if err != nil {
		return nil, Packet{}, err
	}
	stateErr := openable(&p, now)
	if stateErr != nil || p.RemainingCount < len(users) {
		readEarlier = true
	}
	var earlier map[string]Receipt
	if readEarlier {
		if earlier, err = receiptsOf(ctx, tx.conn, receipts, id, users); err != nil {
			return nil, Packet{}, err
		}
	} else {
		earlier = make(map[string]Receipt, len(users))
	}
	out, fresh, remaining, count, err := splitShares(p, users, earlier, stateErr, now, share)
	if err != nil {
		return nil, Packet{}, err
	}
	if len(fresh) == 0 {
		return out, p, nil
	}
	stmts, args := s.openWrites(packets, receipts, id, fresh, now, p, remaining, count)
	err = tx.execCommit(ctx, stmts, args...)
	if isDuplicate(err) && !readEarlier {
		return nil, Packet{}, errRepeatSeen
	}
	if err != nil {
		return nil, Packet{}, err
	}
	p.RemainingCents, p.RemainingCount = remaining, count
	return out, p, nil
}

// splitShares computes a batch's outcomes in arrival order from the packet row p: a user
// found in earlier (receipts of earlier batches, or of this one) gets that amount back as a
// repeat, stateErr refuses every other user, and the rest get fresh shares while p has some.
// fresh are the receive records to write; remaining and count what p holds after them.
func splitShares(p Packet, users []string, earlier map[string]Receipt, stateErr error, now time.Time, share ShareFunc) (out []OpenOutcome, fresh []Receipt, remaining int64, count int, err error) {
	out = make([]OpenOutcome, len(users))
	remaining, count = p.RemainingCents, p.RemainingCount
	seq := p.Count - p.RemainingCount
	for i, u := range users {
		out[i].User = u
		if r, ok := earlier[u]; ok {
			out[i].AmountCents, out[i].Seq, out[i].Repeat = r.AmountCents, r.Seq, true
			continue
		}
		if stateErr != nil {
			out[i].Err = stateErr
			continue
		}
		if count == 0 {
			out[i].Err = ErrExhausted
			continue
		}
		amt, err := share(p.Kind, remaining, count)
		if err != nil {
			return nil, nil, 0, 0, err
		}
		if amt < 1 || amt > remaining-int64(count-1) {
			return nil, nil, 0, 0, fmt.Errorf("split gave %d cents with %d cents over %d shares left", amt, remaining, count)
		}
		remaining -= amt
		count--
		seq++
		r := Receipt{PacketID: p.ID, Seq: seq, User: u, AmountCents: amt, OpenedAt: now}
		earlier[u] = r
		fresh = append(fresh, r)
		out[i].AmountCents, out[i].Seq = amt, seq
	}
	return out, fresh, remaining, count, nil
}

// openWrites is an open batch's writes as one multi-statement: the multi-row insert of the
// fresh receive records, the multi-row insert of their outbox rows and the packet's UPDATE
// from locked (the row as read under the lock) to remaining and count.
//
// The UPDATE is conditional on the values read under the lock, a second line of defence
// should anything ever write this row without taking the lock first; its compound statement
// turns "no row changed" into an error, so that the COMMIT behind it (connTx.execCommit) never
// runs then: the server stops a multi-statement at its first failing statement.
func (s *Store) openWrites(packets, receipts string, id int64, fresh []Receipt, now time.Time, locked Packet, remaining int64, count int) (string, []any) {
	stmts, args := s.openInserts(receipts, id, fresh, now)
	stmts += ";\nBEGIN NOT ATOMIC UPDATE " + packets + " SET remaining_cents = ?, remaining_count = ?, version = version + 1" +
		" WHERE id = ? AND remaining_cents = ? AND remaining_count = ? AND status = ?;" +
		" IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '" + errPacketMoved + "'; END IF; END"
	args = append(args, remaining, count, id, locked.RemainingCents, locked.RemainingCount, int(StatusActive))
	return stmts, args
}

// openInserts is the multi-row insert of the fresh receive records and the multi-row insert
// of their outbox rows, as one multi-statement.
func (s *Store) openInserts(receipts string, id int64, fresh []Receipt, now time.Time) (string, []any) {
	// One outbox row per open carries both of its effects, the wallet credit and the
	// receiver's history line: the relay hands it to both consumers, each idempotent on the
	// row's key. Measured on the hot path, a second row per open cost ~30% of group-commit
	// throughput (docs/benchmarks.md) for no gain in safety.
	rows := make([]OutboxRow, 0, len(fresh))
	pid := strconv.FormatInt(id, 10)
	for _, r := range fresh {
		rows = append(rows, OutboxRow{Kind: OutboxCredit, Key: "credit:" + pid + ":" + r.User, PacketID: id, Account: r.User, AmountCents: r.AmountCents, At: now})
	}
	var b strings.Builder
	args := make([]any, 0, 5*len(fresh)+8*len(rows)+7)
	args = appendReceiptInsert(&b, args, receipts, fresh)
	b.WriteString(";\n")
	args = s.appendOutboxInsert(&b, args, rows)
	return b.String(), args
}

// errPacketMoved is the message of the open's conditional UPDATE when the packet row no
// longer holds what was read under its lock.
const errPacketMoved = "packet row changed under its lock: conditional update changed no row"

// openArchived answers an open of a packet no longer in its day table. Archive moves only
// settled packets, and cold rows never change, so no lock is needed: repeats get their first
// amount (docs/design.md §4.2), everyone else the packet's settled state.
func (s *Store) openArchived(ctx context.Context, id int64, users []string, now time.Time, dayMissing bool) ([]OpenOutcome, Packet, error) {
	coldP, coldR := s.coldTables(s.TableOf(id))
	p, err := scanPacket(s.db.QueryRowContext(ctx, "SELECT "+packetCols+" FROM "+coldP+" WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) || isMissingTable(err) {
		return nil, Packet{}, s.absent(ctx, id, dayMissing)
	}
	if err != nil {
		return nil, Packet{}, fmt.Errorf("read %s: %w", coldP, err)
	}
	stateErr := openable(&p, now)
	if stateErr == nil {
		return nil, Packet{}, fmt.Errorf("packet %d is %s in %s: only settled packets are archived", id, p.Status, coldP)
	}
	earlier, err := receiptsOf(ctx, s.db, coldR, id, users)
	if err != nil {
		return nil, Packet{}, fmt.Errorf("read %s: %w", coldR, err)
	}
	out := make([]OpenOutcome, len(users))
	for i, u := range users {
		out[i].User = u
		if r, ok := earlier[u]; ok {
			out[i].AmountCents, out[i].Seq, out[i].Repeat = r.AmountCents, r.Seq, true
		} else {
			out[i].Err = stateErr
		}
	}
	return out, p, nil
}

// openable is why a packet refuses new opens, or nil.
func openable(p *Packet, now time.Time) error {
	switch p.Status {
	case StatusWrapped:
		return ErrNotPaid
	case StatusCancelled:
		return ErrCancelled
	case StatusExpired:
		return ErrExpired
	}
	if !now.Before(p.ExpiresAt) {
		return ErrExpired
	}
	return nil
}

func receiptsOf(ctx context.Context, tx querier, receipts string, id int64, users []string) (map[string]Receipt, error) {
	var b strings.Builder
	b.WriteString("SELECT user_id, seq, amount_cents, opened_ms FROM ")
	b.WriteString(receipts)
	b.WriteString(" WHERE packet_id = ? AND user_id IN (")
	args := make([]any, 0, len(users)+1)
	args = append(args, id)
	for i, u := range users {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('?')
		args = append(args, u)
	}
	b.WriteByte(')')
	rows, err := tx.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]Receipt, len(users))
	for rows.Next() {
		r := Receipt{PacketID: id}
		var opened int64
		if err := rows.Scan(&r.User, &r.Seq, &r.AmountCents, &opened); err != nil {
			return nil, err
		}
		r.OpenedAt = fromMS(opened)
		out[r.User] = r
	}
	return out, rows.Err()
}

// appendReceiptInsert writes the multi-row INSERT of rs into b and returns args with its
// values appended.
func appendReceiptInsert(b *strings.Builder, args []any, receipts string, rs []Receipt) []any {
	b.WriteString("INSERT INTO ")
	b.WriteString(receipts)
	b.WriteString(" (packet_id, seq, user_id, amount_cents, opened_ms) VALUES ")
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?)")
		args = append(args, r.PacketID, r.Seq, r.User, r.AmountCents, ms(r.OpenedAt))
	}
	return args
}

// appendOutboxInsert writes the multi-row INSERT of rows into the outbox into b and returns
// args with its values appended.
func (s *Store) appendOutboxInsert(b *strings.Builder, args []any, rows []OutboxRow) []any {
	b.WriteString("INSERT INTO ")
	b.WriteString(s.cellTable("outbox"))
	b.WriteString(" (kind, idem_key, packet_id, account, amount_cents, share_count, grp, at_ms) VALUES ")
	for i, r := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?,?,?)")
		args = append(args, int(r.Kind), r.Key, r.PacketID, r.Account, r.AmountCents, r.Count, r.Group, ms(r.At))
	}
	return args
}

func (s *Store) insertOutbox(ctx context.Context, tx *sql.Tx, rows []OutboxRow) error {
	var b strings.Builder
	args := s.appendOutboxInsert(&b, make([]any, 0, 8*len(rows)), rows)
	_, err := tx.ExecContext(ctx, b.String(), args...)
	return err
}

// Receipt is one user's receive record, or ErrNotFound.
func (s *Store) Receipt(ctx context.Context, id int64, user string) (Receipt, error) {
	_, receipts := s.Tables(id)
	r := Receipt{PacketID: id, User: user}
	var opened int64
	err := s.db.QueryRowContext(ctx, "SELECT seq, amount_cents, opened_ms FROM "+receipts+" WHERE packet_id = ? AND user_id = ?", id, user).
		Scan(&r.Seq, &r.AmountCents, &opened)
	if isMissingTable(err) {
		if aerr := s.absent(ctx, id, true); errors.Is(aerr, ErrUnreadable) {
			err = fmt.Errorf("receipts table %s missing: %w", receipts, ErrUnreadable)
		}
	}
	if !errors.Is(err, ErrUnreadable) && (errors.Is(err, sql.ErrNoRows) || isMissingTable(err)) {
		s.observe(s.TableOf(id), nil)
		return Receipt{}, ErrNotFound
	}
	s.observe(s.TableOf(id), err)
	if err != nil {
		return Receipt{}, fmt.Errorf("read receipt of %s on packet %d: %w", user, id, err)
	}
	r.OpenedAt = fromMS(opened)
	return r, nil
}

// Receipts pages a packet's receive records in open order, after seq afterSeq. Archived
// packets are read from the cold table.
func (s *Store) Receipts(ctx context.Context, id int64, afterSeq, limit int) ([]Receipt, error) {
	_, receipts := s.Tables(id)
	out, err := s.receipts(ctx, receipts, id, afterSeq, limit)
	if err == nil && len(out) == 0 && afterSeq == 0 {
		_, cold := s.coldTables(s.TableOf(id))
		out, err = s.receipts(ctx, cold, id, afterSeq, limit)
	}
	s.observe(s.TableOf(id), err)
	if err != nil {
		return nil, fmt.Errorf("list receipts of packet %d: %w", id, err)
	}
	return out, nil
}

func (s *Store) receipts(ctx context.Context, table string, id int64, afterSeq, limit int) ([]Receipt, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT seq, user_id, amount_cents, opened_ms FROM "+table+" WHERE packet_id = ? AND seq > ? ORDER BY seq LIMIT ?", id, afterSeq, limit)
	if isMissingTable(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		r := Receipt{PacketID: id}
		var opened int64
		if err := rows.Scan(&r.Seq, &r.User, &r.AmountCents, &opened); err != nil {
			return nil, err
		}
		r.OpenedAt = fromMS(opened)
		out = append(out, r)
	}
	return out, rows.Err()
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Set-wide idempotency rows held by a key's home cell (docs/design.md, "Guarantees across
// cells"). A payment notice may pay a packet of any cell, so the notice's paymentTxnId is
// first claimed for that packet in the txn's home cell: the claim's primary key is what makes
// one txn activate at most one packet in the whole set. A wrap needs no extra table: its home
// cell creates the packet itself, and wrap_requests is the key's row.
//
// Identifiers compare byte for byte (VARBINARY, like every identifier column): "Tx1" and "tx1" are two payments.
const claimsDDL = `CREATE TABLE IF NOT EXISTS %s.payment_claims (
  payment_txn_id VARBINARY(64) NOT NULL PRIMARY KEY,
  packet_id BIGINT NOT NULL,
  amount_cents BIGINT NOT NULL,
  claimed_ms BIGINT NOT NULL
) ENGINE=InnoDB`

func init() { cellDDL = append(cellDDL, claimsDDL) }

// PaymentClaim is a paymentTxnId bound to the one packet it may activate.
type PaymentClaim struct {
	PaymentTxnID string
	PacketID     int64
	AmountCents  int64
}

// ClaimPayment binds txn to packetID unless it is already bound, and returns the claim in
// force. A claim for another packet is refused with ErrPaymentReused; the same claim again is
// the same answer (retries are free). check, when not nil, runs just before the commit: the
// home cell refuses to commit a key it stopped owning while the statement ran.
func (s *Store) ClaimPayment(ctx context.Context, c PaymentClaim, now time.Time, check func() error) (PaymentClaim, error) {
	got, err := s.claimPayment(ctx, c, now, check)
	if err != nil {
		return PaymentClaim{}, fmt.Errorf("claim payment %s for packet %d: %w", c.PaymentTxnID, c.PacketID, err)
	}
	return got, nil
}

func (s *Store) claimPayment(ctx context.Context, c PaymentClaim, now time.Time, check func() error) (PaymentClaim, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return PaymentClaim{}, err
	}
	defer rollback(tx)
	_, err = tx.ExecContext(ctx, "INSERT INTO "+s.cellTable("payment_claims")+" (payment_txn_id, packet_id, amount_cents, claimed_ms) VALUES (?, ?, ?, ?)",
		c.PaymentTxnID, c.PacketID, c.AmountCents, ms(now))
	if isDuplicate(err) {
		rollback(tx)
		got, found, err := s.FindPaymentClaim(ctx, c.PaymentTxnID)
		switch {
		case err != nil:
			return PaymentClaim{}, err
		case !found:
			return PaymentClaim{}, errors.New("claim vanished after a duplicate key") // claims are never deleted
		case got.PacketID != c.PacketID:
			return PaymentClaim{}, fmt.Errorf("claimed for packet %d: %w", got.PacketID, ErrPaymentReused)
		}
		return got, nil
	}
	if err != nil {
		return PaymentClaim{}, err
	}
	if check != nil {
		if err := check(); err != nil {
			return PaymentClaim{}, err
		}
	}
	return c, tx.Commit()
}

// FindPaymentClaim reads the claim of txn; found is false when the txn was never claimed here.
func (s *Store) FindPaymentClaim(ctx context.Context, txn string) (PaymentClaim, bool, error) {
	c := PaymentClaim{PaymentTxnID: txn}
	err := s.db.QueryRowContext(ctx, "SELECT packet_id, amount_cents FROM "+s.cellTable("payment_claims")+" WHERE payment_txn_id = ?", txn).
		Scan(&c.PacketID, &c.AmountCents)
	if errors.Is(err, sql.ErrNoRows) {
		return PaymentClaim{}, false, nil
	}
	if err != nil {
		return PaymentClaim{}, false, fmt.Errorf("read payment claim %s: %w", txn, err)
	}
	return c, true, nil
}

// FindWrap returns the packet sender wrapped under requestID in this cell, if any. The sender
// is compared again in Go so the answer never depends on the column's collation.
func (s *Store) FindWrap(ctx context.Context, sender, requestID string) (Packet, bool, error) {
	var id int64
	var gotSender, gotRequest string
	err := s.db.QueryRowContext(ctx, "SELECT packet_id, sender, request_id FROM "+s.cellTable("wrap_requests")+" WHERE sender = ? AND request_id = ?",
		sender, requestID).Scan(&id, &gotSender, &gotRequest)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (gotSender != sender || gotRequest != requestID)) {
		return Packet{}, false, nil
	}
	if err != nil {
		return Packet{}, false, fmt.Errorf("read wrap request %s/%s: %w", sender, requestID, err)
	}
	p, err := s.keyedPacket(ctx, id)
	if err != nil {
		return Packet{}, false, fmt.Errorf("read wrapped packet %d: %w", id, err)
	}
	return p, true, nil
}

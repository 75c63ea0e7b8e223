package wallet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// Ledger is the reference wallet: a double-entry ledger in MySQL. Every transfer posts a
// debit and a credit of the same amount, so the sum of all balances is always zero; an
// escrow account per packet holds what the sender paid until it is opened or refunded:
//
//	pay:    user:<sender> → escrow:<packet>
//	credit: escrow:<packet> → user:<receiver>
//	refund: escrow:<packet> → user:<sender>
//
// The transfer's idempotency key is its primary key, so a redelivered transfer changes
// nothing. A sender's wallet may go negative: the payment itself is settled by the payment
// system outside this ledger.
type Ledger struct {
	db     *sql.DB
	schema string
}

var schemaRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// NewLedger uses schema (created by EnsureSchema) on db.
func NewLedger(db *sql.DB, schema string) (*Ledger, error) {
	if !schemaRe.MatchString(schema) {
		return nil, fmt.Errorf("ledger schema %q: letters, digits and '_' only", schema)
	}
	return &Ledger{db: db, schema: schema}, nil
}

// EnsureSchema creates the ledger tables idempotently.
func (l *Ledger) EnsureSchema(ctx context.Context) error {
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + l.schema,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.accounts (
  account VARCHAR(90) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  balance_cents BIGINT NOT NULL
) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.transfers (
  idem_key VARCHAR(100) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  kind TINYINT NOT NULL,
  packet_id BIGINT NOT NULL,
  debit_account VARCHAR(90) CHARACTER SET ascii NOT NULL,
  credit_account VARCHAR(90) CHARACTER SET ascii NOT NULL,
  amount_cents BIGINT NOT NULL,
  at_ms BIGINT NOT NULL,
  KEY by_packet (packet_id),
  CONSTRAINT positive CHECK (amount_cents > 0)
) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.postings (
  idem_key VARCHAR(100) CHARACTER SET ascii NOT NULL,
  account VARCHAR(90) CHARACTER SET ascii NOT NULL,
  amount_cents BIGINT NOT NULL,
  PRIMARY KEY (idem_key, account)
) ENGINE=InnoDB`,
	} {
		if _, err := l.db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("ledger schema %s: %w", l.schema, err)
		}
	}
	return nil
}

// Escrow is a packet's escrow account name.
func Escrow(packetID int64) string { return "escrow:" + strconv.FormatInt(packetID, 10) }

// UserAccount is a user's wallet account name.
func UserAccount(user string) string { return "user:" + user }

func legs(t Transfer) (debit, credit string, err error) {
	switch t.Kind {
	case store.OutboxPay:
		return UserAccount(t.Account), Escrow(t.PacketID), nil
	case store.OutboxCredit, store.OutboxRefund:
		return Escrow(t.PacketID), UserAccount(t.Account), nil
	}
	return "", "", fmt.Errorf("transfer %s: kind %s is not a wallet transfer", t.Key, t.Kind)
}

// ErrKeyConflict: a key already applied with different content. It is never retried into
// success, so the relay keeps it visible (last_error, failure metric) for an operator.
var ErrKeyConflict = errors.New("idempotency key applied with different content")

// Apply posts the transfers in one transaction; keys applied before are skipped.
func (l *Ledger) Apply(ctx context.Context, ts []Transfer) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("ledger begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, t := range ts {
		if err := l.apply(ctx, tx, t); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("ledger commit: %w", err)
	}
	return nil
}

func (l *Ledger) apply(ctx context.Context, tx *sql.Tx, t Transfer) error {
	debit, credit, err := legs(t)
	if err != nil {
		return err
	}
	if t.AmountCents <= 0 {
		return fmt.Errorf("transfer %s: amount %d must be positive", t.Key, t.AmountCents)
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO "+l.schema+".transfers (idem_key, kind, packet_id, debit_account, credit_account, amount_cents, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
		t.Key, int(t.Kind), t.PacketID, debit, credit, t.AmountCents, t.At.UnixMilli())
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1062 {
		var amt int64
		var d, c string
		if err := tx.QueryRowContext(ctx, "SELECT debit_account, credit_account, amount_cents FROM "+l.schema+".transfers WHERE idem_key = ?", t.Key).Scan(&d, &c, &amt); err != nil {
			return fmt.Errorf("transfer %s: read applied: %w", t.Key, err)
		}
		if d != debit || c != credit || amt != t.AmountCents {
			return fmt.Errorf("transfer %s: %w (applied %s→%s %d, now %s→%s %d)", t.Key, ErrKeyConflict, d, c, amt, debit, credit, t.AmountCents)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("transfer %s: %w", t.Key, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+l.schema+".postings (idem_key, account, amount_cents) VALUES (?, ?, ?), (?, ?, ?)",
		t.Key, debit, -t.AmountCents, t.Key, credit, t.AmountCents); err != nil {
		return fmt.Errorf("transfer %s postings: %w", t.Key, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+l.schema+".accounts (account, balance_cents) VALUES (?, ?), (?, ?) ON DUPLICATE KEY UPDATE balance_cents = balance_cents + VALUES(balance_cents)",
		debit, -t.AmountCents, credit, t.AmountCents); err != nil {
		return fmt.Errorf("transfer %s balances: %w", t.Key, err)
	}
	return nil
}

// Balance is an account's balance (0 for an account never touched).
func (l *Ledger) Balance(ctx context.Context, account string) (int64, error) {
	var b int64
	err := l.db.QueryRowContext(ctx, "SELECT balance_cents FROM "+l.schema+".accounts WHERE account = ?", account).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("balance of %s: %w", account, err)
	}
	return b, nil
}

// PacketTransfers lists every transfer of a packet.
func (l *Ledger) PacketTransfers(ctx context.Context, packetID int64) ([]Transfer, error) {
	rows, err := l.db.QueryContext(ctx, "SELECT idem_key, kind, debit_account, credit_account, amount_cents FROM "+l.schema+".transfers WHERE packet_id = ?", packetID)
	if err != nil {
		return nil, fmt.Errorf("transfers of packet %d: %w", packetID, err)
	}
	defer rows.Close()
	var out []Transfer
	for rows.Next() {
		t := Transfer{PacketID: packetID}
		var kind int
		var debit, credit string
		if err := rows.Scan(&t.Key, &kind, &debit, &credit, &t.AmountCents); err != nil {
			return nil, err
		}
		t.Kind = store.OutboxKind(kind)
		t.Account = credit
		if t.Kind == store.OutboxPay {
			t.Account = debit
		}
		t.Account = trimUser(t.Account)
		out = append(out, t)
	}
	return out, rows.Err()
}

func trimUser(account string) string {
	if len(account) > 5 && account[:5] == "user:" {
		return account[5:]
	}
	return account
}

// Imbalance is the sum of all balances and of all postings; both are zero in a sound
// double-entry ledger.
func (l *Ledger) Imbalance(ctx context.Context) (balances, postings int64, err error) {
	if err := l.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(balance_cents), 0) FROM "+l.schema+".accounts").Scan(&balances); err != nil {
		return 0, 0, fmt.Errorf("sum balances: %w", err)
	}
	if err := l.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(amount_cents), 0) FROM "+l.schema+".postings").Scan(&postings); err != nil {
		return 0, 0, fmt.Errorf("sum postings: %w", err)
	}
	return balances, postings, nil
}

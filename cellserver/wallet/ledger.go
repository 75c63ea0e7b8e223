package wallet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/exactid"
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

// DefaultSchema is the ledger schema's name unless a cell server is told otherwise (its
// -wallet-schema flag).
const DefaultSchema = "rp_wallet"

var schemaRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// NewLedger uses schema (created by EnsureSchema) on db.
func NewLedger(db *sql.DB, schema string) (*Ledger, error) {
	if !schemaRe.MatchString(schema) {
		return nil, fmt.Errorf("ledger schema %q: letters, digits and '_' only", schema)
	}
	return &Ledger{db: db, schema: schema}, nil
}

// Account names and transfer keys are VARBINARY: they hold user IDs, which are byte
// strings, so "user:alice" and "user:Alice" are two wallets (docs/design.md §4.3; why binary
// strings: package exactid). These are the definitions of the DDL below, so a migrated
// table ends up exactly as a new one.
var ledgerIDColumns = map[string]map[string]string{
	"accounts":  {"account": "VARBINARY(90) NOT NULL"},
	"transfers": {"idem_key": "VARBINARY(100) NOT NULL", "debit_account": "VARBINARY(90) NOT NULL", "credit_account": "VARBINARY(90) NOT NULL"},
	"postings":  {"idem_key": "VARBINARY(100) NOT NULL", "account": "VARBINARY(90) NOT NULL"},
}

// repairBalances names the repair that moves balances merged by a case-insensitive accounts
// table back to the accounts their postings name.
const repairBalances = "balances_from_postings"

// EnsureSchema creates the ledger tables idempotently. On a ledger created by an earlier
// release it also makes account and key columns byte-exact, and then repairs the balances
// the old case-insensitive key merged: postings always kept each transfer's exact account
// (their key also holds the transfer's key, and a transfer's two legs never differ only in
// case), so they are the truth a balance is rebuilt from. The repair is recorded before the
// accounts table is altered and cleared in the transaction that applies it, so a crash in
// between leaves it to the next start, and it is applied once however many servers start.
func (l *Ledger) EnsureSchema(ctx context.Context) error {
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + l.schema,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.accounts (
  account VARBINARY(90) NOT NULL PRIMARY KEY,
  balance_cents BIGINT NOT NULL
) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.transfers (
  idem_key VARBINARY(100) NOT NULL PRIMARY KEY,
  kind TINYINT NOT NULL,
  packet_id BIGINT NOT NULL,
  debit_account VARBINARY(90) NOT NULL,
  credit_account VARBINARY(90) NOT NULL,
  amount_cents BIGINT NOT NULL,
  at_ms BIGINT NOT NULL,
  KEY by_packet (packet_id),
  CONSTRAINT positive CHECK (amount_cents > 0)
) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.postings (
  idem_key VARBINARY(100) NOT NULL,
  account VARBINARY(90) NOT NULL,
  amount_cents BIGINT NOT NULL,
  PRIMARY KEY (idem_key, account)
) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS ` + l.schema + `.repairs (
  name VARBINARY(64) NOT NULL PRIMARY KEY
) ENGINE=InnoDB`,
	} {
		if _, err := l.db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("ledger schema %s: %w", l.schema, err)
		}
	}
	fams := make([]exactid.Family, 0, len(ledgerIDColumns))
	for table, cols := range ledgerIDColumns {
		fams = append(fams, exactid.Family{Schemas: []string{l.schema}, Tables: regexp.MustCompile("^" + table + "$"), Columns: cols})
	}
	pending, err := exactid.Find(ctx, l.db, fams)
	if err != nil {
		return fmt.Errorf("ledger schema %s: %w", l.schema, err)
	}
	repair, err := l.repairPending(ctx)
	if err != nil || (len(pending) == 0 && !repair) {
		return err
	}
	err = exactid.Locked(ctx, l.db, l.schema, func() error {
		pending, err := exactid.Find(ctx, l.db, fams)
		if err != nil {
			return err
		}
		for _, t := range pending {
			if t.Name == "accounts" {
				if _, err := l.db.ExecContext(ctx, "INSERT IGNORE INTO "+l.schema+".repairs (name) VALUES (?)", repairBalances); err != nil {
					return fmt.Errorf("record balance repair: %w", err)
				}
			}
		}
		if _, err := exactid.Apply(ctx, l.db, pending, 4); err != nil {
			return err
		}
		return l.repairMergedBalances(ctx)
	})
	if err != nil {
		return fmt.Errorf("ledger schema %s: %w", l.schema, err)
	}
	return nil
}

func (l *Ledger) repairPending(ctx context.Context) (bool, error) {
	var n int
	if err := l.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+l.schema+".repairs WHERE name = ?", repairBalances).Scan(&n); err != nil {
		return false, fmt.Errorf("ledger schema %s: read balance repair: %w", l.schema, err)
	}
	return n > 0, nil
}

// repairMergedBalances runs the recorded balance repair, if any (under the migration lock,
// so no ALTER of the same tables runs meanwhile). It moves each account's
// drift (Σ postings − balance) onto its balance as a delta: a transfer applied concurrently
// adds the same amount to both sides, so the drift read here is still right when the delta
// lands, without stopping the ledger.
func (l *Ledger) repairMergedBalances(ctx context.Context) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("balance repair: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	// Deleting the record first locks it: a second server waits here, then finds it gone.
	res, err := tx.ExecContext(ctx, "DELETE FROM "+l.schema+".repairs WHERE name = ?", repairBalances)
	if err != nil {
		return fmt.Errorf("balance repair: claim: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return err
	}
	drift, err := accountDrift(ctx, tx, l.schema)
	if err != nil {
		return fmt.Errorf("balance repair: %w", err)
	}
	for _, d := range drift {
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+l.schema+".accounts (account, balance_cents) VALUES (?, ?) ON DUPLICATE KEY UPDATE balance_cents = balance_cents + VALUES(balance_cents)",
			d.Account, d.Cents); err != nil {
			return fmt.Errorf("balance repair: move %d cents to %s: %w", d.Cents, d.Account, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("balance repair: commit: %w", err)
	}
	return nil
}

// Drift is how far an account's balance is from the sum of its postings (postings minus
// balance); a sound ledger has none.
type Drift struct {
	Account string
	Cents   int64
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// accountDrift compares balances with postings in one statement (one consistent read). The
// grouping casts to binary so that it tells accounts apart even on a table that still
// compares case-insensitively: that is when drift arises.
func accountDrift(ctx context.Context, q querier, schema string) ([]Drift, error) {
	rows, err := q.QueryContext(ctx, "SELECT CAST(account AS BINARY) AS a, SUM(d) FROM ("+
		"SELECT account, amount_cents AS d FROM "+schema+".postings"+
		" UNION ALL SELECT account, -balance_cents FROM "+schema+".accounts) x"+
		" GROUP BY a HAVING SUM(d) <> 0 ORDER BY a")
	if err != nil {
		return nil, fmt.Errorf("compare balances with postings: %w", err)
	}
	defer rows.Close()
	var out []Drift
	for rows.Next() {
		var d Drift
		if err := rows.Scan(&d.Account, &d.Cents); err != nil {
			return nil, fmt.Errorf("compare balances with postings: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("compare balances with postings: %w", err)
	}
	return out, nil
}

// AccountDrift lists the accounts whose balance is not the sum of their postings. It reads
// the whole ledger: audits use it, not the money path.
func (l *Ledger) AccountDrift(ctx context.Context) ([]Drift, error) {
	return accountDrift(ctx, l.db, l.schema)
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
//
// A batch costs a fixed number of statements whatever its size (one read of the keys applied
// before, one multi-row insert each of transfers and postings, one upsert of the balances
// summed per account), not three per transfer: the relay hands over hundreds of credits at
// a time, and round trips were most of the ledger's cost. A batch that races another
// ledger writer on a key (the other commits it between our read and our insert) falls back
// to applying transfer by transfer, where the key's row decides.
func (l *Ledger) Apply(ctx context.Context, ts []Transfer) error {
	if len(ts) == 0 {
		return nil
	}
	err := l.applyBatch(ctx, ts)
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1062 || me.Number == 1213) {
		return l.applyEach(ctx, ts)
	}
	return err
}

// applyEach is the one-transfer-at-a-time path, in one transaction.
func (l *Ledger) applyEach(ctx context.Context, ts []Transfer) error {
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

type leg struct {
	t             Transfer
	debit, credit string
}

func (l *Ledger) applyBatch(ctx context.Context, ts []Transfer) error {
	// Sorted keys and accounts: concurrent batches lock rows in the same order, so they
	// queue behind each other instead of deadlocking.
	byKey := make(map[string]leg, len(ts))
	keys := make([]string, 0, len(ts))
	for _, t := range ts {
		debit, credit, err := legs(t)
		if err != nil {
			return err
		}
		if t.AmountCents <= 0 {
			return fmt.Errorf("transfer %s: amount %d must be positive", t.Key, t.AmountCents)
		}
		if prev, ok := byKey[t.Key]; ok {
			if prev.debit != debit || prev.credit != credit || prev.t.AmountCents != t.AmountCents {
				return fmt.Errorf("transfer %s: %w (twice in one batch: %s→%s %d and %s→%s %d)", t.Key, ErrKeyConflict,
					prev.debit, prev.credit, prev.t.AmountCents, debit, credit, t.AmountCents)
			}
			continue
		}
		byKey[t.Key] = leg{t: t, debit: debit, credit: credit}
		keys = append(keys, t.Key)
	}
	slices.Sort(keys)
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("ledger begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	applied, err := appliedTransfers(ctx, tx, l.schema, keys)
	if err != nil {
		return err
	}
	fresh := keys[:0:0]
	for _, k := range keys {
		a, ok := applied[k]
		if !ok {
			fresh = append(fresh, k)
			continue
		}
		g := byKey[k]
		if a.debit != g.debit || a.credit != g.credit || a.t.AmountCents != g.t.AmountCents {
			return fmt.Errorf("transfer %s: %w (applied %s→%s %d, now %s→%s %d)", k, ErrKeyConflict, a.debit, a.credit, a.t.AmountCents, g.debit, g.credit, g.t.AmountCents)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	var tb, pb strings.Builder
	tb.WriteString("INSERT INTO " + l.schema + ".transfers (idem_key, kind, packet_id, debit_account, credit_account, amount_cents, at_ms) VALUES ")
	pb.WriteString("INSERT INTO " + l.schema + ".postings (idem_key, account, amount_cents) VALUES ")
	targs := make([]any, 0, 7*len(fresh))
	pargs := make([]any, 0, 6*len(fresh))
	delta := make(map[string]int64, len(fresh)+1)
	for i, k := range fresh {
		g := byKey[k]
		if i > 0 {
			tb.WriteByte(',')
			pb.WriteByte(',')
		}
		tb.WriteString("(?,?,?,?,?,?,?)")
		pb.WriteString("(?,?,?),(?,?,?)")
		targs = append(targs, k, int(g.t.Kind), g.t.PacketID, g.debit, g.credit, g.t.AmountCents, g.t.At.UnixMilli())
		pargs = append(pargs, k, g.debit, -g.t.AmountCents, k, g.credit, g.t.AmountCents)
		delta[g.debit] -= g.t.AmountCents
		delta[g.credit] += g.t.AmountCents
	}
	if _, err := tx.ExecContext(ctx, tb.String(), targs...); err != nil {
		return fmt.Errorf("insert %d transfers: %w", len(fresh), err)
	}
	if _, err := tx.ExecContext(ctx, pb.String(), pargs...); err != nil {
		return fmt.Errorf("insert postings of %d transfers: %w", len(fresh), err)
	}
	accounts := slices.Sorted(maps.Keys(delta))
	var ab strings.Builder
	ab.WriteString("INSERT INTO " + l.schema + ".accounts (account, balance_cents) VALUES ")
	aargs := make([]any, 0, 2*len(accounts))
	for i, a := range accounts {
		if i > 0 {
			ab.WriteByte(',')
		}
		ab.WriteString("(?,?)")
		aargs = append(aargs, a, delta[a])
	}
	ab.WriteString(" ON DUPLICATE KEY UPDATE balance_cents = balance_cents + VALUES(balance_cents)")
	if _, err := tx.ExecContext(ctx, ab.String(), aargs...); err != nil {
		return fmt.Errorf("update %d balances: %w", len(accounts), err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("ledger commit: %w", err)
	}
	return nil
}

// appliedTransfers reads the legs of the keys already applied.
func appliedTransfers(ctx context.Context, tx *sql.Tx, schema string, keys []string) (map[string]leg, error) {
	args := make([]any, len(keys))
	for i, k := range keys {
		args[i] = k
	}
	rows, err := tx.QueryContext(ctx, "SELECT idem_key, debit_account, credit_account, amount_cents FROM "+schema+
		".transfers WHERE idem_key IN (?"+strings.Repeat(",?", len(keys)-1)+")", args...)
	if err != nil {
		return nil, fmt.Errorf("read applied transfers: %w", err)
	}
	defer rows.Close()
	out := make(map[string]leg)
	for rows.Next() {
		var k string
		var g leg
		if err := rows.Scan(&k, &g.debit, &g.credit, &g.t.AmountCents); err != nil {
			return nil, fmt.Errorf("read applied transfers: %w", err)
		}
		out[k] = g
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read applied transfers: %w", err)
	}
	return out, nil
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
	var got string
	err := l.db.QueryRowContext(ctx, "SELECT account, balance_cents FROM "+l.schema+".accounts WHERE account = ?", account).Scan(&got, &b)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("balance of %s: %w", account, err)
	}
	if got != account {
		return 0, fmt.Errorf("balance of %s: found account %s: %s.accounts does not compare names byte for byte", account, got, l.schema)
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

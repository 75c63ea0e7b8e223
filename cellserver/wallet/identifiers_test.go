package wallet_test

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func credit(packetID int64, user string, cents int64) wallet.Transfer {
	return wallet.Transfer{Key: fmt.Sprintf("credit:%d:%s", packetID, user), Kind: store.OutboxCredit, PacketID: packetID,
		Account: user, AmountCents: cents, At: time.Now()}
}

func balances(t *testing.T, l *wallet.Ledger, want map[string]int64) {
	t.Helper()
	for account, cents := range want {
		got, err := l.Balance(context.Background(), account)
		if err != nil || got != cents {
			t.Errorf("balance of %s = %d (%v), want %d", account, got, err, cents)
		}
	}
}

func TestLedgerAccountsDifferingInCaseAreTwoWallets(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	// Two packets, and two users of one packet whose credit keys differ only in case.
	if err := f.ledger.Apply(ctx, []wallet.Transfer{credit(1, "alice", 300), credit(2, "Alice", 500)}); err != nil {
		t.Fatal(err)
	}
	if err := f.ledger.Apply(ctx, []wallet.Transfer{credit(3, "alice", 10), credit(3, "Alice", 20)}); err != nil {
		t.Fatal(err)
	}
	balances(t, f.ledger, map[string]int64{wallet.UserAccount("alice"): 310, wallet.UserAccount("Alice"): 520,
		wallet.UserAccount("ALICE"): 0, wallet.Escrow(3): -30})
	ts, err := f.ledger.PacketTransfers(ctx, 3)
	if err != nil || len(ts) != 2 || ts[0].Account == ts[1].Account {
		t.Fatalf("transfers of packet 3: %+v %v", ts, err)
	}
}

// The ledger DDL of earlier releases: ASCII columns with the case-insensitive default
// collation.
var oldLedgerDDL = []string{
	`CREATE TABLE %s.accounts (
  account VARCHAR(90) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  balance_cents BIGINT NOT NULL
) ENGINE=InnoDB`,
	`CREATE TABLE %s.transfers (
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
	`CREATE TABLE %s.postings (
  idem_key VARCHAR(100) CHARACTER SET ascii NOT NULL,
  account VARCHAR(90) CHARACTER SET ascii NOT NULL,
  amount_cents BIGINT NOT NULL,
  PRIMARY KEY (idem_key, account)
) ENGINE=InnoDB`,
}

func ledgerDDL(t *testing.T, db *sql.DB, table string) string {
	t.Helper()
	var name, ddl string
	if err := db.QueryRow("SHOW CREATE TABLE "+table).Scan(&name, &ddl); err != nil {
		t.Fatal(err)
	}
	return ddl
}

// A ledger created by an earlier release merged alice and Alice into one balance; its
// postings kept each transfer's exact account. The migration makes the columns byte-exact
// and moves each merged balance back to the account its postings name.
func TestLedgerMigrationSplitsMergedBalances(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	m := testenv.SharedMariaDB(t)
	db := m.OpenDB(t, "")
	schema := m.CreateDatabase(t, "oldwallet")
	for _, q := range oldLedgerDDL {
		if _, err := db.Exec(fmt.Sprintf(q, schema)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := wallet.NewLedger(db, schema)
	if err != nil {
		t.Fatal(err)
	}
	// alice's credit lands first, so the merged row is named user:alice: a batch upserts its
	// balances in byte order, where "user:Alice" would come first.
	if err := l.Apply(ctx, []wallet.Transfer{credit(1, "alice", 300)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Apply(ctx, []wallet.Transfer{credit(2, "Alice", 500), credit(3, "Alice", 7),
		{Key: "pay:1", Kind: store.OutboxPay, PacketID: 1, Account: "Bob", AmountCents: 800}}); err != nil {
		t.Fatal(err)
	}
	// The fixture really merged them, and the audit sees it.
	var merged int
	var held int64
	if err := db.QueryRow("SELECT COUNT(*), SUM(balance_cents) FROM "+schema+".accounts WHERE account IN ('user:alice', 'user:Alice')").Scan(&merged, &held); err != nil || merged != 1 || held != 807 {
		t.Fatalf("old fixture: %d account rows holding %d for alice and Alice (%v), want one merged row of 807", merged, held, err)
	}
	if _, err := l.Balance(ctx, wallet.UserAccount("Alice")); err == nil {
		t.Fatal("Balance of user:Alice read alice's merged row without an error")
	}
	rep, err := wallet.Audit(ctx, f.st, l, time.Now().Add(-time.Hour), time.Now())
	if err != nil || rep.OK() || !strings.Contains(rep.Error(), "user:Alice") {
		t.Fatalf("audit of a ledger with merged accounts: %v %v", rep.Error(), err)
	}

	// Every server of the cell ensures the schema at start-up, concurrently: the balances
	// must be repaired exactly once.
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.EnsureSchema(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("ensure schema over the old ledger: %v", err)
		}
	}
	if err := l.EnsureSchema(ctx); err != nil {
		t.Fatalf("later ensure schema: %v", err)
	}
	want := map[string]int64{wallet.UserAccount("alice"): 300, wallet.UserAccount("Alice"): 507,
		wallet.UserAccount("Bob"): -800, wallet.Escrow(1): 500, wallet.Escrow(2): -500, wallet.Escrow(3): -7}
	balances(t, l, want)
	if b, p, err := l.Imbalance(ctx); err != nil || b != 0 || p != 0 {
		t.Fatalf("imbalance %d %d %v", b, p, err)
	}
	if rep, err := wallet.Audit(ctx, f.st, l, time.Now().Add(-time.Hour), time.Now()); err != nil || !rep.OK() {
		t.Fatalf("audit after migration: %v %v", rep.Error(), err)
	}
	// Redelivery changes nothing, and new case variants stay apart.
	if err := l.Apply(ctx, []wallet.Transfer{credit(1, "alice", 300), credit(2, "Alice", 500), credit(1, "Alice", 1)}); err != nil {
		t.Fatal(err)
	}
	want[wallet.UserAccount("Alice")]++
	want[wallet.Escrow(1)]--
	balances(t, l, want)
	// The migrated tables are exactly what a new ledger creates.
	number := regexp.MustCompile(` AUTO_INCREMENT=\d+`)
	for _, table := range []string{"accounts", "transfers", "postings"} {
		got, fresh := ledgerDDL(t, db, schema+"."+table), ledgerDDL(t, db, walletOf(f)+"."+table)
		if number.ReplaceAllString(got, "") != number.ReplaceAllString(fresh, "") {
			t.Errorf("%s after migration:\n%s\nwant:\n%s", table, got, fresh)
		}
	}
}

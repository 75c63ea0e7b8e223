package wallet_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/cellserver/wallet"
)

// statements counts what one connection sends to the server while f runs: the pool is
// capped at one connection, so the session's Questions counter sees every round trip (the
// SHOW itself counts one).
func statements(t *testing.T, db *sql.DB, f func()) int64 {
	t.Helper()
	read := func() int64 {
		var name string
		var n int64
		if err := db.QueryRow("SHOW SESSION STATUS LIKE 'Questions'").Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := read()
	f()
	return read() - before - 1
}

// TestLedgerBatchCostsFixedStatements: the relay hands the ledger hundreds of credits at a
// time; applying them must cost a fixed handful of round trips, not three per transfer, and
// still post every transfer exactly once, skip the ones applied before and keep the books
// balanced (docs/design.md §4.3).
func TestLedgerBatchCostsFixedStatements(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	schema := env.Prefix + "_wallet"
	db, err := store.OpenDB(env.MariaDB.DSN(""), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := wallet.NewLedger(db, schema)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := l.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = env.DB.Exec("DROP DATABASE IF EXISTS " + schema) })
	now := time.Now()
	var ts []wallet.Transfer
	ts = append(ts, wallet.Transfer{Key: "pay:7", Kind: store.OutboxPay, PacketID: 7, Account: "sender", AmountCents: 100_000, At: now})
	for i := range 200 {
		u := fmt.Sprintf("u%d", i)
		ts = append(ts, wallet.Transfer{Key: "credit:7:" + u, Kind: store.OutboxCredit, PacketID: 7, Account: u, AmountCents: int64(1 + i), At: now})
	}
	// The first 50 land alone first, so the batch below mixes redeliveries with new keys.
	if err := l.Apply(ctx, ts[:50]); err != nil {
		t.Fatal(err)
	}
	n := statements(t, db, func() {
		if err := l.Apply(ctx, ts); err != nil {
			t.Fatal(err)
		}
	})
	// BEGIN, read applied keys, transfers, postings, balances, COMMIT.
	if n > 6 {
		t.Errorf("applying %d transfers took %d statements, want at most 6", len(ts), n)
	}
	if err := l.Apply(ctx, ts); err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, tr := range ts[1:] {
		want += tr.AmountCents
		if b, err := l.Balance(ctx, wallet.UserAccount(tr.Account)); err != nil || b != tr.AmountCents {
			t.Fatalf("%s has %d (%v), want %d", tr.Account, b, err, tr.AmountCents)
		}
	}
	if b, _ := l.Balance(ctx, wallet.Escrow(7)); b != 100_000-want {
		t.Fatalf("escrow holds %d, want %d", b, 100_000-want)
	}
	if b, p, err := l.Imbalance(ctx); err != nil || b != 0 || p != 0 {
		t.Fatalf("imbalance %d %d %v", b, p, err)
	}
	got, err := l.PacketTransfers(ctx, 7)
	if err != nil || len(got) != len(ts) {
		t.Fatalf("packet 7 has %d transfers (%v), want %d", len(got), err, len(ts))
	}
}

package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
)

// A batch of would-be first opens skips reading earlier receipts; a repeat hidden in it
// surfaces as the receipts' duplicate key and the batch runs again reading them. Nothing of
// the failed attempt may stay: the repeat gets its first amount, the others fresh shares,
// and receipts, outbox rows and the packet row still add up to the total.
func TestOpenBatchRepeatAmongFirstOpensKeepsNothingOfTheFailedAttempt(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 10000, 10)
	// A different share on each call: a retried batch must not reuse the failed attempt's.
	calls := int64(0)
	varying := func(_ store.Kind, remaining int64, count int) (int64, error) {
		calls++
		if count == 1 {
			return remaining, nil
		}
		return 1 + calls%7, nil
	}

	first, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"alice", "bob"}, time.Now(), varying)
	if err != nil {
		t.Fatalf("first batch: %v", err)
	}
	out, got, err := env.Store.OpenBatch(ctx, p.ID, []string{"carol", "alice", "dave", "carol"}, time.Now(), varying)
	if err != nil {
		t.Fatalf("batch with alice again: %v", err)
	}
	if out[0].Err != nil || out[0].Repeat || out[0].Seq != 3 {
		t.Fatalf("carol %+v, want a fresh share at seq 3", out[0])
	}
	if !out[1].Repeat || out[1].Seq != first[0].Seq || out[1].AmountCents != first[0].AmountCents {
		t.Fatalf("alice %+v, want her first open %+v back", out[1], first[0])
	}
	if out[2].Err != nil || out[2].Repeat || out[2].Seq != 4 {
		t.Fatalf("dave %+v, want a fresh share at seq 4", out[2])
	}
	if !out[3].Repeat || out[3].AmountCents != out[0].AmountCents {
		t.Fatalf("carol again %+v, want %+v", out[3], out[0])
	}
	if got.RemainingCount != 6 {
		t.Fatalf("remaining count %d after four distinct opens, want 6", got.RemainingCount)
	}

	var receipts, receiptCents int64
	rs, err := env.Store.Receipts(ctx, p.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		receipts++
		receiptCents += r.AmountCents
	}
	var credits, creditCents int64
	if err := env.DB.QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM "+env.Prefix+"_cell.outbox WHERE packet_id = ? AND kind = ?",
		p.ID, int(store.OutboxCredit)).Scan(&credits, &creditCents); err != nil {
		t.Fatal(err)
	}
	stored, err := env.Store.Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if receipts != 4 || credits != 4 || creditCents != receiptCents || receiptCents+stored.RemainingCents != 10000 || stored.RemainingCount != 6 {
		t.Fatalf("%d receipts (%d cents), %d credits (%d cents), packet %d cents / %d left: want 4 of each, summing with the packet to 10000",
			receipts, receiptCents, credits, creditCents, stored.RemainingCents, stored.RemainingCount)
	}
}

// The open's conditional UPDATE is the second line of defence: when the row does not hold
// what was read under the lock, the round trip that carries the writes and COMMIT must stop
// before COMMIT, and nothing of it may stay — not the receipt, not the outbox row.
func TestOpenWritesStopBeforeCommitWhenThePacketMoved(t *testing.T) {
	env := storetest.New(t, storetest.Options{MaxConns: 1})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)
	stale := p
	stale.RemainingCents += 100 // as if another writer had taken 100 cents without the lock

	err := env.Store.OpenWritesAfterStaleRead(ctx, p.ID, "mallory", 100, stale)
	if err == nil || !strings.Contains(err.Error(), store.ErrPacketMoved) {
		t.Fatalf("writes after a stale read: %v, want the conditional update's refusal", err)
	}
	if _, err := env.Store.Receipt(ctx, p.ID, "mallory"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("receipt of the refused open: %v, want none", err)
	}
	var outbox int
	if err := env.DB.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+env.Prefix+"_cell.outbox WHERE packet_id = ? AND kind = ?", p.ID, int(store.OutboxCredit)).Scan(&outbox); err != nil {
		t.Fatal(err)
	}
	got, err := env.Store.Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if outbox != 0 || got.RemainingCents != 1000 || got.RemainingCount != 10 {
		t.Fatalf("after the refusal: %d credit rows, packet %d cents / %d shares; want 0 and 1000 / 10", outbox, got.RemainingCents, got.RemainingCount)
	}
	assertNoOpenTransaction(t, env)
	// The same connection (the pool has one) serves the next open normally.
	out, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"alice"}, time.Now(), fixed)
	if err != nil || out[0].Err != nil || out[0].AmountCents != 100 {
		t.Fatalf("open after the refusal: %+v, %v", out, err)
	}
}

// An open batch (and an outbox claim) runs its transaction by hand on a pooled connection; none of its ways out
// may hand the connection back with a transaction open (the next caller would run inside
// it). The pool has one connection, so every check reads the one the batch used.
func TestOpenBatchLeavesNoTransactionOpen(t *testing.T) {
	env := storetest.New(t, storetest.Options{MaxConns: 1})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 300, 3)

	steps := []struct {
		name  string
		id    int64
		users []string
	}{
		{"first opens", p.ID, []string{"a", "b"}},
		{"a repeat among first opens (duplicate key, rolled back, run again)", p.ID, []string{"c", "a"}},
		{"only repeats (nothing written)", p.ID, []string{"a", "b"}},
		{"exhausted", p.ID, []string{"d"}},
		{"a packet of a day table never created", p.ID + 1<<40, []string{"e"}},
	}
	for _, s := range steps {
		_, _, err := env.Store.OpenBatch(ctx, s.id, s.users, time.Now(), fixed)
		t.Logf("%s: %v", s.name, err)
		assertNoOpenTransaction(t, env)
	}
	// Outbox claims run the same way: one that claims every row (pay's two, three credits),
	// one that finds them all claimed.
	for _, want := range []int{5, 0} {
		rows, err := env.Store.ClaimOutbox(ctx, time.Now(), 100, time.Minute)
		if err != nil || len(rows) != want {
			t.Fatalf("claim: %d rows, %v; want %d", len(rows), err, want)
		}
		assertNoOpenTransaction(t, env)
	}
}

func assertNoOpenTransaction(t *testing.T, env *storetest.Env) {
	t.Helper()
	var inTx int
	if err := env.DB.QueryRowContext(context.Background(), "SELECT @@in_transaction").Scan(&inTx); err != nil {
		t.Fatal(err)
	}
	if inTx != 0 {
		t.Fatal("a pooled connection came back with a transaction open")
	}
}

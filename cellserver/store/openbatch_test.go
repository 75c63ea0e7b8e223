package store_test

import (
	"context"
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

package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
)

// Identifiers are byte strings (docs/api.md): "Alice" and "alice" are two users, two senders,
// two payments. Each test below is one way a case-insensitive column merged them.

func paidPacket(t *testing.T, svc *packet.Service, sender, req, txn string, total int64, count int) store.Packet {
	t.Helper()
	ctx := context.Background()
	p, created, err := svc.Wrap(ctx, packet.WrapRequest{Sender: sender, RequestID: req, TotalCents: total, Count: count, Kind: packet.KindFixed}, -1)
	if err != nil || !created {
		t.Fatalf("wrap %s/%s: created=%v %v", sender, req, created, err)
	}
	if p, err = svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: txn, AmountCents: total}); err != nil {
		t.Fatalf("pay %d with %s: %v", p.ID, txn, err)
	}
	return p
}

func fixed(_ store.Kind, remaining int64, count int) (int64, error) {
	return remaining / int64(count), nil
}

func TestOpenBatchCaseVariantsAreDistinctUsers(t *testing.T) {
	rec := &recorder{ok: map[shard.Table]int{}, errs: map[shard.Table]int{}}
	env := storetest.New(t, storetest.Options{Observer: rec})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)
	tbl := env.Store.TableOf(p.ID)

	out, got, err := env.Store.OpenBatch(ctx, p.ID, []string{"Alice", "alice", "bob"}, time.Now(), fixed)
	if err != nil {
		t.Fatalf("batch with Alice and alice: %v", err)
	}
	for i, o := range out {
		if o.Err != nil || o.Repeat || o.AmountCents != 100 {
			t.Fatalf("outcome %d (%s): %+v, want a fresh 100-cent share", i, o.User, o)
		}
	}
	if got.RemainingCount != 7 {
		t.Fatalf("remaining count %d after three distinct opens, want 7", got.RemainingCount)
	}
	// A later batch repeats each user by exact ID only.
	out, _, err = env.Store.OpenBatch(ctx, p.ID, []string{"ALICE", "Alice", "carol"}, time.Now(), fixed)
	if err != nil {
		t.Fatalf("later batch with Alice: %v", err)
	}
	if out[0].Repeat || out[0].Err != nil || !out[1].Repeat || out[1].Seq != 1 || out[2].Repeat || out[2].Err != nil {
		t.Fatalf("later batch outcomes %+v", out)
	}
	for _, u := range []string{"Alice", "alice", "bob", "ALICE", "carol"} {
		if _, err := env.Store.Receipt(ctx, p.ID, u); err != nil {
			t.Fatalf("receipt of %s: %v", u, err)
		}
	}
	if _, err := env.Store.Receipt(ctx, p.ID, "BOB"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("receipt of BOB, who never opened: %v", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.errs[tbl] != 0 {
		t.Fatalf("observer counted %d failures against %+v", rec.errs[tbl], tbl)
	}
}

func TestOpenBatchExactDuplicateRepeatsWithoutFailingOthers(t *testing.T) {
	rec := &recorder{ok: map[shard.Table]int{}, errs: map[shard.Table]int{}}
	env := storetest.New(t, storetest.Options{Observer: rec})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)
	tbl := env.Store.TableOf(p.ID)

	out, got, err := env.Store.OpenBatch(ctx, p.ID, []string{"dave", "erin", "dave", "dave"}, time.Now(), fixed)
	if err != nil {
		t.Fatalf("batch with dave three times: %v", err)
	}
	if out[0].Err != nil || out[0].Repeat || out[1].Err != nil || out[1].Repeat {
		t.Fatalf("first occurrences: %+v", out[:2])
	}
	for _, o := range out[2:] {
		if o.Err != nil || !o.Repeat || o.Seq != out[0].Seq || o.AmountCents != out[0].AmountCents {
			t.Fatalf("repeat of dave %+v, first %+v", o, out[0])
		}
	}
	if got.RemainingCount != 8 {
		t.Fatalf("remaining count %d, want 8", got.RemainingCount)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.errs[tbl] != 0 {
		t.Fatalf("observer counted %d failures against %+v", rec.errs[tbl], tbl)
	}
}

func TestWrapRequestIDBelongsToItsExactSender(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	req := packet.WrapRequest{Sender: "Bob", RequestID: "req-1", TotalCents: 500, Count: 5, Kind: packet.KindFixed}
	bobs, _, err := svc.Wrap(ctx, req, -1)
	if err != nil {
		t.Fatal(err)
	}
	req.Sender = "bob"
	other, created, err := svc.Wrap(ctx, req, -1)
	if err != nil {
		t.Fatalf("bob wrapping with Bob's request ID: %v", err)
	}
	if !created || other.ID == bobs.ID || other.Sender != "bob" {
		t.Fatalf("bob got %+v (created=%v), Bob's packet is %d", other, created, bobs.ID)
	}
	// And a request ID differing only in case is a new request of the same sender.
	req.RequestID = "REQ-1"
	third, created, err := svc.Wrap(ctx, req, -1)
	if err != nil || !created || third.ID == other.ID {
		t.Fatalf("bob/REQ-1: %+v created=%v %v", third, created, err)
	}
	again, created, err := svc.Wrap(ctx, req, -1)
	if err != nil || created || again.ID != third.ID {
		t.Fatalf("retry of bob/REQ-1: %+v created=%v %v, want packet %d", again, created, err, third.ID)
	}
}

func TestPaymentTxnIDsDifferingInCaseAreTwoPayments(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	a := paidPacket(t, svc, "s", "r1", "TXN-7", 300, 3)
	b := paidPacket(t, svc, "s", "r2", "txn-7", 300, 3)
	if a.PaymentTxnID != "TXN-7" || b.PaymentTxnID != "txn-7" || a.Status != store.StatusActive || b.Status != store.StatusActive {
		t.Fatalf("packets %+v and %+v", a, b)
	}
	// The exact same txn ID on another packet is still a reuse.
	p, _, err := svc.Wrap(context.Background(), packet.WrapRequest{Sender: "s", RequestID: "r3", TotalCents: 300, Count: 3, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pay(context.Background(), p.ID, packet.PayRequest{PaymentTxnID: "txn-7", AmountCents: 300}); !errors.Is(err, store.ErrPaymentReused) {
		t.Fatalf("exact reuse of txn-7: %v", err)
	}
}

func TestHistoryIsPerExactUser(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	at := time.Now()
	if err := env.Store.RecordHistory(ctx,
		store.HistoryItem{User: "alice", Role: store.RoleReceived, PacketID: 1, At: at, AmountCents: 10},
		store.HistoryItem{User: "Alice", Role: store.RoleReceived, PacketID: 1, At: at, AmountCents: 20},
		store.HistoryItem{User: "alice", Role: store.RoleReceived, PacketID: 2, At: at, AmountCents: 30},
	); err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string][]int64{"alice": {30, 10}, "Alice": {20}, "ALICE": nil} {
		hs, err := env.Store.History(ctx, user, store.RoleReceived, time.Time{}, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, h := range hs {
			got = append(got, h.AmountCents)
		}
		if len(got) != len(want) {
			t.Fatalf("history of %s: %v, want %v", user, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("history of %s: %v, want %v", user, got, want)
			}
		}
	}
}

// The wrap lookup must not trust the column's collation: should the idempotency table ever
// compare case-insensitively again (a table restored from an old backup, a server of the
// previous release recreating it), bob must still never be handed Bob's packet.
func TestExistingWrapComparesSenderExactly(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	if _, err := env.DB.Exec("ALTER TABLE " + env.Prefix + "_cell.wrap_requests MODIFY sender VARCHAR(64) CHARACTER SET ascii NOT NULL, MODIFY request_id VARCHAR(64) CHARACTER SET ascii NOT NULL"); err != nil {
		t.Fatal(err)
	}
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	req := packet.WrapRequest{Sender: "Bob", RequestID: "req-1", TotalCents: 500, Count: 5, Kind: packet.KindFixed}
	bobs, _, err := svc.Wrap(ctx, req, 7)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ sender, req string }{{"bob", "req-1"}, {"Bob", "REQ-1"}} {
		req.Sender, req.RequestID = v.sender, v.req
		got, created, err := svc.Wrap(ctx, req, 7)
		if err == nil || got.ID == bobs.ID {
			t.Fatalf("%s/%s over a case-insensitive key: %+v created=%v %v; Bob's packet is %d", v.sender, v.req, got, created, err, bobs.ID)
		}
		if store.IsRefusal(err) {
			t.Fatalf("%s/%s: a schema fault reported as a refusal: %v", v.sender, v.req, err)
		}
	}
	// The exact retry still finds Bob's packet.
	req.Sender, req.RequestID = "Bob", "req-1"
	if got, created, err := svc.Wrap(ctx, req, 7); err != nil || created || got.ID != bobs.ID {
		t.Fatalf("Bob's exact retry: %+v created=%v %v", got, created, err)
	}
}

// TestMissingDayTableIsUnreadableNotAbsent: with a packet's day tables renamed away (a botched
// restore), reading, opening, paying and listing receipts of that packet say the table is
// unreadable (503, retry), never "not found": a client told its packet does not exist would
// give up on money that is there. A wrap into the missing table is unreadable too, not an
// internal error. An ID that is simply not there is still not found.
func TestMissingDayTableIsUnreadableNotAbsent(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r-hidden", "t-hidden", 1000, 10)
	if _, err := env.Store.Get(ctx, p.ID+1); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an ID never stored: %v, want ErrNotFound", err)
	}
	packets, receipts := env.Store.Tables(p.ID)
	for _, n := range []string{packets, receipts} {
		if _, err := env.DB.ExecContext(ctx, "RENAME TABLE "+n+" TO "+n+"_hidden"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := env.DB.ExecContext(ctx, "RENAME TABLE "+n+"_hidden TO "+n); err != nil {
				t.Errorf("restore %s: %v", n, err)
			}
		}()
	}
	unreadable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrUnreadable) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s with its day tables gone: %v, want ErrUnreadable", what, err)
		}
	}
	_, err := env.Store.Get(ctx, p.ID)
	unreadable("get", err)
	_, _, err = env.Store.OpenBatch(ctx, p.ID, []string{"u"}, time.Now(), fixed)
	unreadable("open", err)
	_, err = env.Store.Receipt(ctx, p.ID, "u")
	unreadable("receipt", err)
	_, err = env.Store.Pay(ctx, p.ID, "t-hidden", 1000, time.Now(), time.Hour)
	unreadable("pay", err)
	q := p
	q.ID, q.RequestID = p.ID+2, "r-new"
	_, _, err = env.Store.Wrap(ctx, q, time.Now().Add(time.Hour))
	unreadable("wrap", err)

	// An ID from three days before this cell's first start: its day table never existed, and
	// the packet cannot have either.
	old, err := ids.Compose(ids.Parts{Created: time.Now().Add(-72 * time.Hour), Slot: ids.Slot(p.ID)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Get(ctx, old); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an ID from before the cell existed: %v, want ErrNotFound", err)
	}
}

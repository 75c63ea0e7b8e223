package wallet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type fixture struct {
	svc    *packet.Service
	st     *store.Store
	ledger *wallet.Ledger
	clock  *clock
	prefix string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	env := storetest.New(t, storetest.Options{Now: c.Now()})
	l, err := wallet.NewLedger(env.DB, env.Prefix+"_wallet")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureSchema(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = env.DB.Exec("DROP DATABASE IF EXISTS " + env.Prefix + "_wallet") })
	svc := packet.New(env.Store, &storetest.IDs{Now: c.Now}, packet.Config{Now: c.Now, Expiry: time.Hour})
	return &fixture{svc: svc, st: env.Store, ledger: l, clock: c, prefix: env.Prefix}
}

// paidAndOpened wraps a 3.00 packet of three shares, pays it and opens it by a, b and c:
// five outbox rows (the sender's history line, the pay, three credits) for a relay to deliver.
func (f *fixture) paidAndOpened(t *testing.T) store.Packet {
	t.Helper()
	ctx := context.Background()
	p, _, err := f.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: "r", TotalCents: 300, Count: 3, Kind: packet.KindRandom}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t", AmountCents: 300}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"a", "b", "c"} {
		if _, err := f.svc.Open(ctx, p.ID, u); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// flaky fails the first n Apply calls, as a wallet service that is briefly down.
type flaky struct {
	wallet.Wallet
	left atomic.Int64
}

func (f *flaky) Apply(ctx context.Context, ts []wallet.Transfer) error {
	if f.left.Add(-1) >= 0 {
		return errors.New("wallet unavailable")
	}
	return f.Wallet.Apply(ctx, ts)
}

func TestRelayAndAuditEndToEnd(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	q, err := queue.New(f.svc, queue.Config{Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(ctx)
	var ids []int64
	for i := 0; i < 10; i++ {
		p, _, err := f.svc.Wrap(ctx, packet.WrapRequest{Sender: fmt.Sprintf("s%d", i%3), RequestID: fmt.Sprintf("r%d", i), TotalCents: 1000 + int64(i), Count: 5, Kind: packet.KindRandom}, -1)
		if err != nil {
			t.Fatal(err)
		}
		if i < 9 { // the last stays unpaid and is cancelled
			if _, err := f.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("t%d", i), AmountCents: p.TotalCents}); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, p.ID)
	}
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := q.Open(ctx, ids[i%9], fmt.Sprintf("u%d", i%7))
			if err != nil && !errors.Is(err, packet.ErrExhausted) {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	f.clock.Advance(time.Hour)
	if _, err := f.svc.ExpireDue(ctx, 100); err != nil {
		t.Fatal(err)
	}
	w := &flaky{Wallet: f.ledger}
	w.left.Store(3)
	relay, err := wallet.NewRelay(f.st, w, f.st, wallet.RelayConfig{Interval: 10 * time.Millisecond, BaseBackoff: 10 * time.Millisecond, Batch: 7})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	from := f.clock.Now().Add(-2 * time.Hour)
	rep, err := wallet.Audit(ctx, f.st, f.ledger, from, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Packets != 10 || rep.Receipts == 0 {
		t.Fatalf("audit: %+v", rep)
	}
	// Redelivery after a crash between apply and ack changes nothing.
	if _, err := f.st.DB().Exec("UPDATE " + cellOf(f) + ".outbox SET delivered = 0, next_ms = 0"); err != nil {
		t.Fatal(err)
	}
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := wallet.Audit(ctx, f.st, f.ledger, from, f.clock.Now()); err != nil || !rep.OK() {
		t.Fatalf("audit after redelivery: %+v %v", rep, err)
	}
	// History was written through the outbox.
	items, _, err := f.svc.History(ctx, "s0", packet.RoleSent, packet.Cursor{}, 10)
	if err != nil || len(items) != 3 {
		t.Fatalf("sent history of s0: %+v %v", items, err)
	}
	// The audit catches drift: a lost credit.
	if _, err := f.st.DB().Exec("DELETE FROM "+walletOf(f)+".transfers WHERE kind = ? LIMIT 1", int(store.OutboxCredit)); err != nil {
		t.Fatal(err)
	}
	if rep, err := wallet.Audit(ctx, f.st, f.ledger, from, f.clock.Now()); err != nil || rep.OK() {
		t.Fatalf("audit missed a deleted credit: %+v %v", rep, err)
	}
}

func TestLedgerIdempotentAndConflicting(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	tr := wallet.Transfer{Key: "credit:1:bob", Kind: store.OutboxCredit, PacketID: 1, Account: "bob", AmountCents: 42, At: time.Now()}
	for i := 0; i < 3; i++ {
		if err := f.ledger.Apply(ctx, []wallet.Transfer{tr}); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := f.ledger.Balance(ctx, wallet.UserAccount("bob")); b != 42 {
		t.Fatalf("bob has %d after three deliveries of one credit, want 42", b)
	}
	tr.AmountCents = 43
	if err := f.ledger.Apply(ctx, []wallet.Transfer{tr}); !errors.Is(err, wallet.ErrKeyConflict) {
		t.Fatalf("conflicting reuse of a key: %v", err)
	}
	if b, p, err := f.ledger.Imbalance(ctx); err != nil || b != 0 || p != 0 {
		t.Fatalf("imbalance %d %d %v", b, p, err)
	}
}

func cellOf(f *fixture) string   { return f.prefix + "_cell" }
func walletOf(f *fixture) string { return f.prefix + "_wallet" }

// TestConcurrentRelaysDeliverOnce runs three relays (three servers of one cell) on the same
// outbox; every effect must land exactly once.
func TestConcurrentRelaysDeliverOnce(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		p, _, err := f.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: fmt.Sprintf("r%d", i), TotalCents: 600, Count: 6, Kind: packet.KindRandom}, -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("t%d", i), AmountCents: 600}); err != nil {
			t.Fatal(err)
		}
		for u := 0; u < 4; u++ {
			if _, err := f.svc.Open(ctx, p.ID, fmt.Sprintf("u%d", u)); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.clock.Advance(time.Hour)
	if _, err := f.svc.ExpireDue(ctx, 100); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		relay, err := wallet.NewRelay(f.st, f.ledger, f.st, wallet.RelayConfig{Interval: 5 * time.Millisecond, Batch: 5})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := relay.Drain(dctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var transfers int
	if err := f.st.DB().QueryRow("SELECT COUNT(*) FROM " + walletOf(f) + ".transfers").Scan(&transfers); err != nil {
		t.Fatal(err)
	}
	// 6 pays + 24 credits + 6 refunds of the 2 unopened shares.
	if transfers != 36 {
		t.Fatalf("%d transfers, want 36", transfers)
	}
	rep, err := wallet.Audit(ctx, f.st, f.ledger, f.clock.Now().Add(-2*time.Hour), f.clock.Now())
	if err != nil || !rep.OK() || rep.Packets != 6 || rep.Receipts != 24 {
		t.Fatalf("audit: %+v %v", rep, err)
	}
	items, _, err := f.svc.History(ctx, "u1", packet.RoleReceived, packet.Cursor{}, 100)
	if err != nil || len(items) != 6 {
		t.Fatalf("received history of u1: %d items, %v", len(items), err)
	}
}

// TestReconcileRequeuesLostEffects loses effects the way a buggy or crashed relay could
// (rows marked delivered that never reached the ledger), sees the audit fail, reconciles,
// relays, and sees the audit pass.
func TestReconcileRequeuesLostEffects(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		p, _, err := f.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: fmt.Sprintf("r%d", i), TotalCents: 900, Count: 3, Kind: packet.KindRandom}, -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("t%d", i), AmountCents: 900}); err != nil {
			t.Fatal(err)
		}
		for u := 0; u < 2; u++ {
			if _, err := f.svc.Open(ctx, p.ID, fmt.Sprintf("u%d", u)); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.clock.Advance(time.Hour)
	if _, err := f.svc.ExpireDue(ctx, 100); err != nil {
		t.Fatal(err)
	}
	// Lose one of each kind of effect.
	for _, kind := range []store.OutboxKind{store.OutboxPay, store.OutboxCredit, store.OutboxRefund} {
		if _, err := f.st.DB().Exec("UPDATE "+cellOf(f)+".outbox SET delivered = 1 WHERE kind = ? ORDER BY id LIMIT 1", int(kind)); err != nil {
			t.Fatal(err)
		}
	}
	relay, err := wallet.NewRelay(f.st, f.ledger, f.st, wallet.RelayConfig{Interval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	from, to := f.clock.Now().Add(-2*time.Hour), f.clock.Now()
	if rep, err := wallet.Audit(ctx, f.st, f.ledger, from, to); err != nil || rep.OK() {
		t.Fatalf("audit missed lost effects: %+v %v", rep, err)
	}
	n, rep, err := wallet.Reconcile(ctx, f.st, f.ledger, from, to)
	if err != nil || n != 3 || !rep.OK() {
		t.Fatalf("reconcile requeued %d (want 3): %+v %v", n, rep, err)
	}
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := wallet.Audit(ctx, f.st, f.ledger, from, to); err != nil || !rep.OK() {
		t.Fatalf("audit after reconcile: %+v %v", rep, err)
	}
	if n, _, err := wallet.Reconcile(ctx, f.st, f.ledger, from, to); err != nil || n != 0 {
		t.Fatalf("second reconcile requeued %d: %v", n, err)
	}
}

// TestRelayHandsBackWhatAFailedPassLeftClaimed: a pass claims rows, delivers them, and cannot
// mark them delivered (its database stops answering, as in a failover). The rows are hidden
// from the cell's other relays for ClaimFor (30 s); this relay's next pass must not wait that
// long: it hands them back and delivers them at once, each effect still applied once.
func TestRelayHandsBackWhatAFailedPassLeftClaimed(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.paidAndOpened(t)
	// The wallet applies the batch, then the outbox goes away (renamed), so the relay's
	// "delivered" mark fails at once; it comes back before the next pass.
	outbox := f.prefix + "_cell.outbox"
	rename := func(from, to string) {
		if _, err := f.st.DB().Exec("RENAME TABLE " + from + " TO " + to); err != nil {
			t.Fatal(err)
		}
	}
	stuck := &afterApply{Wallet: f.ledger, then: func() { rename(outbox, outbox+"_away") }}
	relay, err := wallet.NewRelay(f.st, stuck, f.st, wallet.RelayConfig{ClaimFor: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Pass(ctx); err == nil {
		t.Fatal("the pass whose delivered mark could not be written reported success")
	}
	stuck.then = nil
	rename(outbox+"_away", outbox)
	n, err := relay.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backlog, err := f.st.OutboxBacklog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || backlog != 0 {
		t.Fatalf("next pass delivered %d rows, %d left: the claimed rows waited for ClaimFor", n, backlog)
	}
	var transfers int
	if err := f.st.DB().QueryRow("SELECT COUNT(*) FROM " + walletOf(f) + ".transfers").Scan(&transfers); err != nil {
		t.Fatal(err)
	}
	if transfers != 4 { // the pay and three credits, each once though applied twice
		t.Fatalf("%d transfers, want 4", transfers)
	}
}

// afterApply is a wallet that runs then after each successful Apply.
type afterApply struct {
	wallet.Wallet
	then func()
}

func (a *afterApply) Apply(ctx context.Context, ts []wallet.Transfer) error {
	if err := a.Wallet.Apply(ctx, ts); err != nil {
		return err
	}
	if then := a.then; then != nil {
		a.then = nil // once: the retries of the same pass find things as then left them
		then()
	}
	return nil
}

// The history lines and the delivered mark commit together: while the history cannot be
// written, no row is marked delivered (each backs off instead), and once it can, every line
// is there once and every row delivered.
func TestRelayMarksDeliveredOnlyWithTheHistory(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	p := f.paidAndOpened(t)
	history := f.prefix + "_cell.history"
	rename := func(from, to string) {
		if _, err := f.st.DB().Exec("RENAME TABLE " + from + " TO " + to); err != nil {
			t.Fatal(err)
		}
	}
	gone := &afterApply{Wallet: f.ledger, then: func() { rename(history, history+"_away") }}
	relay, err := wallet.NewRelay(f.st, gone, f.st, wallet.RelayConfig{BaseBackoff: 50 * time.Millisecond, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Pass(ctx); err != nil {
		t.Fatalf("a pass whose rows each failed and backed off: %v", err)
	}
	var delivered, failed int
	if err := f.st.DB().QueryRow("SELECT COALESCE(SUM(delivered), 0), COALESCE(SUM(attempts > 0), 0) FROM "+f.prefix+"_cell.outbox").Scan(&delivered, &failed); err != nil {
		t.Fatal(err)
	}
	// The pay row has no history line of its own (the sent line comes with the wrap) and
	// delivers whatever the history does; every row with a line must wait.
	if delivered > 1 || failed < 3 {
		t.Fatalf("%d rows marked delivered, %d backing off, while the history table was away", delivered, failed)
	}
	rename(history+"_away", history)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	var lines, distinct int
	if err := f.st.DB().QueryRow("SELECT COUNT(*), COUNT(DISTINCT user_id, role, packet_id) FROM "+history+" WHERE packet_id = ?", p.ID).Scan(&lines, &distinct); err != nil {
		t.Fatal(err)
	}
	if lines != 4 || distinct != 4 { // the sender's line and three receivers'
		t.Fatalf("%d history lines (%d distinct), want 4", lines, distinct)
	}
}

// A delivery that never returns (a statement on a connection to a database pod deleted in a
// failover) must not hold the outbox: the pass is cut off after PassTimeout, its rows are
// handed back, and the next pass delivers them, long before the 30 s claim period.
func TestRelayCutsOffAPassThatHangs(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.paidAndOpened(t)
	hang := &hangOnce{Wallet: f.ledger}
	relay, err := wallet.NewRelay(f.st, hang, f.st, wallet.RelayConfig{ClaimFor: 30 * time.Second, PassTimeout: 300 * time.Millisecond, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go relay.Run(runCtx)
	start := time.Now()
	testenv.Eventually(t, 10*time.Second, "the outbox delivered after the hung pass", func() error {
		n, err := f.st.OutboxBacklog(ctx)
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d rows undelivered after %d deliveries, the first hung", n, hang.calls.Load())
		}
		return nil
	})
	if hang.calls.Load() < 2 {
		t.Fatalf("%d deliveries: the hung one was the last", hang.calls.Load())
	}
	t.Logf("delivered %s after the start, the first pass hung", time.Since(start).Round(time.Millisecond))
}

// hangOnce is a wallet whose first Apply waits for its context to end, as a statement on a
// connection to a vanished database does.
type hangOnce struct {
	wallet.Wallet
	calls atomic.Int32
}

func (h *hangOnce) Apply(ctx context.Context, ts []wallet.Transfer) error {
	if h.calls.Add(1) == 1 {
		<-ctx.Done()
		return ctx.Err()
	}
	return h.Wallet.Apply(ctx, ts)
}

package packet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/idalloc"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// clock is a test clock that only moves when told.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newService(t *testing.T) (*packet.Service, *storetest.Env, *clock) {
	t.Helper()
	c := newClock()
	env := storetest.New(t, storetest.Options{Now: c.Now()})
	svc := packet.New(env.Store, &storetest.IDs{Now: c.Now}, packet.Config{Now: c.Now, Expiry: time.Hour})
	prefixes.Store(svc, env.Prefix)
	return svc, env, c
}

func wrapAndPay(t *testing.T, svc *packet.Service, req packet.WrapRequest) packet.Packet {
	t.Helper()
	ctx := context.Background()
	p, created, err := svc.Wrap(ctx, req, -1)
	if err != nil || !created {
		t.Fatalf("wrap %+v: created=%v err=%v", req, created, err)
	}
	p, err = svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "txn-" + req.RequestID, AmountCents: req.TotalCents})
	if err != nil {
		t.Fatalf("pay %d: %v", p.ID, err)
	}
	return p
}

func TestLifecycleAndIdempotency(t *testing.T) {
	svc, _, c := newService(t)
	ctx := context.Background()
	req := packet.WrapRequest{Sender: "alice", RequestID: "r1", TotalCents: 1000, Count: 3, Kind: packet.KindRandom, Group: "g", Greeting: "hi"}
	p, created, err := svc.Wrap(ctx, req, 7)
	if err != nil || !created || p.ID%1000 != 7 || p.Status != store.StatusWrapped {
		t.Fatalf("wrap: %+v created=%v err=%v", p, created, err)
	}
	again, created, err := svc.Wrap(ctx, req, 7)
	if err != nil || created || again.ID != p.ID {
		t.Fatalf("wrap retry: id %d created=%v err=%v, want id %d", again.ID, created, err, p.ID)
	}
	changed := req
	changed.TotalCents = 2000
	if _, _, err := svc.Wrap(ctx, changed, 7); !errors.Is(err, packet.ErrIdempotencyClash) {
		t.Fatalf("wrap with reused request id and new total: %v, want ErrIdempotencyClash", err)
	}
	if _, err := svc.Open(ctx, p.ID, "bob"); !errors.Is(err, packet.ErrNotPaid) {
		t.Fatalf("open before pay: %v, want ErrNotPaid", err)
	}
	if g, err := svc.Grab(ctx, p.ID, "bob"); err != nil || g.Eligible || g.Reason != packet.ReasonNotPaid {
		t.Fatalf("grab before pay: %+v %v", g, err)
	}
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t1", AmountCents: 999}); !errors.Is(err, packet.ErrAmountMismatch) {
		t.Fatalf("pay wrong amount: %v", err)
	}
	paid, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t1", AmountCents: 1000})
	if err != nil || paid.Status != store.StatusActive || !paid.ExpiresAt.Equal(paid.PaidAt.Add(time.Hour)) {
		t.Fatalf("pay: %+v %v", paid, err)
	}
	if again, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t1", AmountCents: 1000}); err != nil || again.PaidAt != paid.PaidAt {
		t.Fatalf("pay retry: %+v %v", again, err)
	}
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t2", AmountCents: 1000}); !errors.Is(err, packet.ErrAlreadyPaid) {
		t.Fatalf("second payment: %v", err)
	}
	// The same payment transaction cannot pay a second packet.
	other, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "alice", RequestID: "r2", TotalCents: 1000, Count: 1, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pay(ctx, other.ID, packet.PayRequest{PaymentTxnID: "t1", AmountCents: 1000}); !errors.Is(err, packet.ErrPaymentReused) {
		t.Fatalf("reused payment txn: %v", err)
	}
	if g, err := svc.Grab(ctx, p.ID, "bob"); err != nil || !g.Eligible {
		t.Fatalf("grab: %+v %v", g, err)
	}
	var sum int64
	for _, u := range []string{"bob", "carol", "dave"} {
		o, err := svc.Open(ctx, p.ID, u)
		if err != nil || o.Repeat || o.AmountCents < 1 {
			t.Fatalf("open %s: %+v %v", u, o, err)
		}
		sum += o.AmountCents
		r, err := svc.Open(ctx, p.ID, u)
		if err != nil || !r.Repeat || r.AmountCents != o.AmountCents {
			t.Fatalf("repeat open %s: %+v %v, want first amount %d", u, r, err, o.AmountCents)
		}
	}
	if sum != 1000 {
		t.Fatalf("shares sum to %d, want 1000", sum)
	}
	if _, err := svc.Open(ctx, p.ID, "erin"); !errors.Is(err, packet.ErrExhausted) {
		t.Fatalf("open exhausted: %v", err)
	}
	if g, _ := svc.Grab(ctx, p.ID, "bob"); g.Reason != packet.ReasonAlreadyOpened {
		t.Fatalf("grab after open: %+v", g)
	}
	if g, _ := svc.Grab(ctx, p.ID, "erin"); g.Reason != packet.ReasonExhausted {
		t.Fatalf("grab exhausted: %+v", g)
	}
	got, rs, err := svc.Details(ctx, p.ID, 0, 2)
	if err != nil || got.RemainingCount != 0 || got.RemainingCents != 0 || len(rs) != 2 || rs[0].User != "bob" {
		t.Fatalf("details: %+v %+v %v", got, rs, err)
	}
	rest, err := env(svc).Receipts(ctx, p.ID, rs[1].Seq, 10)
	if err != nil || len(rest) != 1 || rest[0].User != "dave" {
		t.Fatalf("second page: %+v %v", rest, err)
	}
	// Expiry of an exhausted packet settles it with no refund.
	c.Advance(time.Hour)
	if _, err := svc.Open(ctx, p.ID, "bob"); err != nil {
		t.Fatalf("repeat open after expiry still answers the first amount: %v", err)
	}
	done, err := svc.ExpireDue(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	settled := map[int64]packet.Settlement{}
	for _, s := range done {
		settled[s.PacketID] = s
	}
	if s := settled[p.ID]; s.Status != store.StatusExpired || s.RefundedCents != 0 {
		t.Fatalf("settle exhausted: %+v", s)
	}
	if s := settled[other.ID]; s.Status != store.StatusCancelled {
		t.Fatalf("settle unpaid: %+v", s)
	}
	if _, err := svc.Pay(ctx, other.ID, packet.PayRequest{PaymentTxnID: "t3", AmountCents: 1000}); !errors.Is(err, packet.ErrCancelled) {
		t.Fatalf("pay cancelled: %v", err)
	}
	if _, err := svc.Open(ctx, 12345, "bob"); !errors.Is(err, packet.ErrNotFound) {
		t.Fatalf("open unknown: %v", err)
	}
}

func env(s *packet.Service) *store.Store { return s.Store() }

func TestExpiryRefundsExactlyOnceRacingLateOpens(t *testing.T) {
	svc, _, c := newService(t)
	ctx := context.Background()
	p := wrapAndPay(t, svc, packet.WrapRequest{Sender: "sam", RequestID: "x", TotalCents: 10000, Count: 50, Kind: packet.KindRandom})
	var opened atomic.Int64
	for i := 0; i < 10; i++ {
		o, err := svc.Open(ctx, p.ID, fmt.Sprintf("early%d", i))
		if err != nil {
			t.Fatal(err)
		}
		opened.Add(o.AmountCents)
	}
	c.Advance(time.Hour - time.Millisecond)
	// Late openers race the sweeper across the deadline.
	var wg sync.WaitGroup
	var refunds atomic.Int64
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i == 10 {
				c.Advance(time.Millisecond)
			}
			if i%5 == 0 {
				done, err := svc.ExpireDue(ctx, 10)
				if err != nil {
					t.Error(err)
				}
				for _, s := range done {
					refunds.Add(s.RefundedCents)
				}
				return
			}
			o, err := svc.Open(ctx, p.ID, fmt.Sprintf("late%d", i))
			switch {
			case err == nil:
				opened.Add(o.AmountCents)
			case errors.Is(err, packet.ErrExpired):
			default:
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	done, err := svc.ExpireDue(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range done {
		refunds.Add(s.RefundedCents)
	}
	final, err := svc.Store().Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.Status != store.StatusExpired || final.RemainingCents != 0 || final.RefundedCents != refunds.Load() {
		t.Fatalf("final %+v, refunds seen %d", final, refunds.Load())
	}
	if opened.Load()+refunds.Load() != 10000 {
		t.Fatalf("opened %d + refunded %d != 10000", opened.Load(), refunds.Load())
	}
	if _, err := svc.Open(ctx, p.ID, "after"); !errors.Is(err, packet.ErrExpired) {
		t.Fatalf("open after settlement: %v", err)
	}
	if done, err := svc.ExpireDue(ctx, 10); err != nil || len(done) != 0 {
		t.Fatalf("second sweep settled again: %+v %v", done, err)
	}
	var outboxRefunds int
	if err := svc.Store().DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM "+envPrefix(svc)+"_cell.outbox WHERE kind = ? AND packet_id = ?", int(store.OutboxRefund), p.ID).Scan(&outboxRefunds); err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{true: 1, false: 0}[refunds.Load() > 0]; outboxRefunds != want {
		t.Fatalf("%d refund outbox rows, want %d", outboxRefunds, want)
	}
}

var prefixes sync.Map

func envPrefix(svc *packet.Service) string { v, _ := prefixes.Load(svc); return v.(string) }

func TestConcurrentOpensOneHotPacket(t *testing.T) {
	svc, _, _ := newService(t)
	ctx := context.Background()
	p := wrapAndPay(t, svc, packet.WrapRequest{Sender: "s", RequestID: "hot", TotalCents: 100_00, Count: 100, Kind: packet.KindRandom})
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int64{}
	exhausted := 0
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func(u string) {
			defer wg.Done()
			o, err := svc.Open(ctx, p.ID, u)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				got[u] = o.AmountCents
			case errors.Is(err, packet.ErrExhausted):
				exhausted++
			default:
				t.Errorf("open %s: %v", u, err)
			}
		}(fmt.Sprintf("u%03d", i))
	}
	wg.Wait()
	var sum int64
	for _, a := range got {
		sum += a
	}
	if len(got) != 100 || exhausted != 200 || sum != 100_00 {
		t.Fatalf("%d opened, %d exhausted, sum %d; want 100, 200, 10000", len(got), exhausted, sum)
	}
}

// TestConcurrentRetriesAreIdempotent fires the same wrap, the same payment notice and the
// same user's open many times at once, as client retries after timeouts do.
func TestConcurrentRetriesAreIdempotent(t *testing.T) {
	svc, env, _ := newService(t)
	ctx := context.Background()
	req := packet.WrapRequest{Sender: "rita", RequestID: "same", TotalCents: 5000, Count: 5, Kind: packet.KindRandom}
	const n = 20
	var wg sync.WaitGroup
	wrapped := make([]int64, n)
	created := make([]bool, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p, c, err := svc.Wrap(ctx, req, -1)
			if err != nil {
				t.Error(err)
				return
			}
			wrapped[i], created[i] = p.ID, c
		}(i)
	}
	wg.Wait()
	nCreated := 0
	for i := range wrapped {
		if wrapped[i] != wrapped[0] {
			t.Fatalf("retries of one wrap gave packets %d and %d", wrapped[0], wrapped[i])
		}
		if created[i] {
			nCreated++
		}
	}
	if nCreated != 1 {
		t.Fatalf("%d wraps reported created, want 1", nCreated)
	}
	id := wrapped[0]
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.Pay(ctx, id, packet.PayRequest{PaymentTxnID: "pay-same", AmountCents: 5000}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	amounts := make([]int64, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o, err := svc.Open(ctx, id, "olga")
			if err != nil {
				t.Error(err)
				return
			}
			amounts[i] = o.AmountCents
		}(i)
	}
	wg.Wait()
	for _, a := range amounts {
		if a != amounts[0] || a < 1 {
			t.Fatalf("retries of one open gave amounts %v", amounts)
		}
	}
	var packets, payments, receipts, outbox int
	pt, rt := env.Store.Tables(id)
	for q, dst := range map[string]*int{
		"SELECT COUNT(*) FROM " + pt + " WHERE sender = 'rita'":                                     &packets,
		"SELECT COUNT(*) FROM " + env.Prefix + "_cell.payments WHERE packet_id = " + fmt.Sprint(id): &payments,
		"SELECT COUNT(*) FROM " + rt + " WHERE packet_id = " + fmt.Sprint(id):                       &receipts,
		"SELECT COUNT(*) FROM " + env.Prefix + "_cell.outbox WHERE packet_id = " + fmt.Sprint(id):   &outbox,
	} {
		if err := env.DB.QueryRow(q).Scan(dst); err != nil {
			t.Fatal(err)
		}
	}
	// outbox: pay + sent history + one open.
	if packets != 1 || payments != 1 || receipts != 1 || outbox != 3 {
		t.Fatalf("rows: %d packets, %d payments, %d receipts, %d outbox; want 1, 1, 1, 3", packets, payments, receipts, outbox)
	}
}

// TestWrapRetriesAwayFromAFailingTable drops one logical table's day table: wraps that land
// there fail, the observer records the failure, and the wrap is retried in another slot.
func TestWrapRetriesAwayFromAFailingTable(t *testing.T) {
	ctx := context.Background()
	layout := shard.Layout{Databases: 2, TablesPerDB: 2}
	brk, err := breaker.New(breaker.Config{Layout: layout, Policy: breaker.Policy{ConsecutiveFailures: 1}})
	if err != nil {
		t.Fatal(err)
	}
	env := storetest.New(t, storetest.Options{Layout: layout, Observer: brk})
	ctl := env.Prefix + "_ctl"
	if err := control.EnsureSchema(ctx, env.DB, ctl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = env.DB.Exec("DROP DATABASE IF EXISTS " + ctl) })
	alloc, err := idalloc.NewAllocator(ctx, idalloc.AllocatorConfig{DB: env.DB, Control: ctl, Server: "test", Cell: "cell-0", Layout: env.Store.Layout(), Breaker: brk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = alloc.Close(context.Background()) })
	svc := packet.New(env.Store, alloc, packet.Config{})
	bad := shard.Table{DB: 0, Table: 0}
	packets := env.Store.Layout().Physical("t", bad, time.Now())
	if _, err := env.DB.Exec("DROP TABLE " + packets); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		p, created, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: fmt.Sprint(i), TotalCents: 100, Count: 1, Kind: packet.KindFixed}, -1)
		if err != nil || !created {
			t.Fatalf("wrap %d: %v", i, err)
		}
		if env.Store.TableOf(p.ID) == bad {
			t.Fatalf("packet %d placed in the failing table", p.ID)
		}
	}
	// The tripped table's slots get no new IDs, so an explicit request there is refused.
	if _, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: "explicit", TotalCents: 100, Count: 1, Kind: packet.KindFixed}, 0); !errors.Is(err, idalloc.ErrSlotUnavailable) {
		t.Fatalf("wrap in the tripped table's slot: %v", err)
	}
}

// TestRunSweeperMovesPastFailingPackets: a full batch of packets whose settlement fails (a
// trigger refuses every update of their day table) is due before the others; one tick of the
// sweeper must still refund the others instead of waiting for the failing ones for ever.
func TestRunSweeperMovesPastFailingPackets(t *testing.T) {
	svc, env, c := newService(t)
	ctx := context.Background()
	const badSlot, batch = 0, 200
	badTable := env.Store.Layout().Of(badSlot)
	var first int64
	for i := 0; i < batch; i++ {
		p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: fmt.Sprintf("bad%d", i), TotalCents: 100, Count: 1, Kind: packet.KindFixed}, badSlot)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("bad%d", i), AmountCents: 100}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = p.ID
		}
	}
	c.Advance(time.Minute)
	var good []int64
	for slot := 1; len(good) < 3; slot++ {
		if env.Store.Layout().Of(slot) == badTable {
			continue
		}
		p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: fmt.Sprintf("good%d", slot), TotalCents: 300, Count: 3, Kind: packet.KindRandom}, slot)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("good%d", slot), AmountCents: 300}); err != nil {
			t.Fatal(err)
		}
		good = append(good, p.ID)
	}
	packets, _ := env.Store.Tables(first)
	if _, err := env.DB.Exec("CREATE TRIGGER " + packets + "_refuse BEFORE UPDATE ON " + packets +
		" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected settle failure'"); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Hour)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); svc.RunSweeper(sctx, time.Hour) }()
	defer func() { stop(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range good {
		for {
			p, err := svc.Store().Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if p.Status == store.StatusExpired {
				if p.RefundedCents != 300 || p.RemainingCents != 0 {
					t.Fatalf("packet %d settled with refund %d, remaining %d", id, p.RefundedCents, p.RemainingCents)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("packet %d not refunded by the first tick behind %d failing packets: %s", id, batch, p.Status)
			}
			time.Sleep(20 * time.Millisecond) // polling a database row, not synchronising
		}
	}
}

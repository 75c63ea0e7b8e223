package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
)

// testClock only moves when told.
type testClock struct{ ns atomic.Int64 }

func newTestClock(at time.Time) *testClock {
	c := &testClock{}
	c.ns.Store(at.UnixNano())
	return c
}
func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type sweepEnv struct {
	*storetest.Env
	svc   *packet.Service
	clock *testClock
	reg   *prometheus.Registry
	ids   *storetest.IDs
}

func newSweepEnv(t *testing.T) *sweepEnv {
	t.Helper()
	c := newTestClock(time.Now())
	reg := prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Now: c.Now(), Registerer: reg})
	src := &storetest.IDs{Now: c.Now}
	svc := packet.New(env.Store, src, packet.Config{Now: c.Now, Expiry: time.Hour})
	return &sweepEnv{Env: env, svc: svc, clock: c, reg: reg, ids: src}
}

// paid wraps and pays a packet in slot and opens it for opens users; it returns the packet
// and what the opens took.
func (e *sweepEnv) paid(t *testing.T, slot int, name string, total int64, count, opens int) (packet.Packet, int64) {
	t.Helper()
	ctx := context.Background()
	p, _, err := e.svc.Wrap(ctx, packet.WrapRequest{Sender: "sender-" + name, RequestID: name, TotalCents: total, Count: count, Kind: packet.KindRandom}, slot)
	if err != nil {
		t.Fatalf("wrap %s: %v", name, err)
	}
	if _, err := e.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "txn-" + name, AmountCents: total}); err != nil {
		t.Fatalf("pay %s: %v", name, err)
	}
	var taken int64
	for i := 0; i < opens; i++ {
		o, err := e.svc.Open(ctx, p.ID, fmt.Sprintf("%s-u%d", name, i))
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		taken += o.AmountCents
	}
	return p, taken
}

func (e *sweepEnv) indexed(t *testing.T, id int64) bool {
	t.Helper()
	var n int
	if err := e.DB.QueryRow("SELECT COUNT(*) FROM "+e.Prefix+"_cell.expiry WHERE packet_id = ?", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// conserved checks docs/design.md §4.1 on a settled packet from its rows, and that its refund
// was written to the outbox exactly once.
func (e *sweepEnv) conserved(t *testing.T, id int64, opened int64) {
	t.Helper()
	ctx := context.Background()
	p, err := e.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := e.Store.Receipts(ctx, id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, r := range rs {
		sum += r.AmountCents
	}
	if p.Status != store.StatusExpired || p.RemainingCents != 0 || sum != opened || sum+p.RefundedCents != p.TotalCents {
		t.Fatalf("packet %d: status %s, remaining %d, Σ opened %d (want %d) + refunded %d != total %d",
			id, p.Status, p.RemainingCents, sum, opened, p.RefundedCents, p.TotalCents)
	}
	var refunds int
	var refunded int64
	if err := e.DB.QueryRow("SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM "+e.Prefix+"_cell.outbox WHERE kind = ? AND packet_id = ?",
		int(store.OutboxRefund), id).Scan(&refunds, &refunded); err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{true: 1, false: 0}[p.RefundedCents > 0]; refunds != want || refunded != p.RefundedCents {
		t.Fatalf("packet %d: %d refund outbox rows for %d cents, want %d for %d", id, refunds, refunded, want, p.RefundedCents)
	}
}

// counter sums a counter family's series whose labels include want.
func counter(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestSweepKeepsIndexWhileDayTableUnreadable: a day table missing for a while (a restore) is
// no proof that its packets do not exist. The sweep must fail retryably and keep their index
// rows, and refund them exactly once when the table is back. Only a packet absent from an
// existing day table and from the cold table may lose its index row.
func TestSweepKeepsIndexWhileDayTableUnreadable(t *testing.T) {
	e := newSweepEnv(t)
	ctx := context.Background()
	p, opened := e.paid(t, 1, "restore", 1000, 5, 2)
	// An index row whose packet was never stored (same logical table, same day).
	ghost, err := e.ids.Next(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.DB.Exec("INSERT INTO "+e.Prefix+"_cell.expiry (packet_id, expires_ms) VALUES (?, ?)", ghost, e.clock.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Hour)

	packets, _ := e.Store.Tables(p.ID)
	if _, err := e.DB.Exec("RENAME TABLE " + packets + " TO " + packets + "_away"); err != nil {
		t.Fatal(err)
	}
	done, err := e.svc.ExpireDue(ctx, 100)
	if err == nil || len(done) != 0 {
		t.Fatalf("sweep with the day table missing: settled %+v, err %v; want a retryable error and nothing settled", done, err)
	}
	if !e.indexed(t, p.ID) || !e.indexed(t, ghost) {
		t.Fatalf("sweep dropped index rows while their day table was missing (packet %v, ghost %v)", e.indexed(t, p.ID), e.indexed(t, ghost))
	}
	if n := counter(t, e.reg, "redpacket_sweeper_settle_failures_total", map[string]string{"reason": "table_missing"}); n < 2 {
		t.Fatalf("settle failures on a missing table counted %v, want ≥ 2", n)
	}

	if _, err := e.DB.Exec("RENAME TABLE " + packets + "_away TO " + packets); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour) // past any backoff
	done, err = e.svc.ExpireDue(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || done[0].PacketID != p.ID || done[0].RefundedCents != 1000-opened {
		t.Fatalf("sweep after the restore settled %+v, want packet %d refunded %d", done, p.ID, 1000-opened)
	}
	if e.indexed(t, p.ID) || e.indexed(t, ghost) {
		t.Fatalf("index rows left after settlement (packet %v, ghost %v)", e.indexed(t, p.ID), e.indexed(t, ghost))
	}
	if n := counter(t, e.reg, "redpacket_sweeper_orphans_dropped_total", nil); n != 1 {
		t.Fatalf("dropped orphan index rows counted %v, want 1", n)
	}
	if again, err := e.svc.ExpireDue(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("second sweep: %+v %v", again, err)
	}
	e.conserved(t, p.ID, opened)
}

// TestSweepFailingPacketsDoNotBlockOthers: packets whose settlement fails (here a trigger
// refuses every update of their day table) are the earliest due and fill whole batches; the
// other packets of the cell must still be refunded, and the failing ones once the fault is
// gone, each exactly once.
func TestSweepFailingPacketsDoNotBlockOthers(t *testing.T) {
	e := newSweepEnv(t)
	ctx := context.Background()
	const badSlot = 0
	badTable := e.Store.Layout().Of(badSlot)
	opened := map[int64]int64{}
	var bad, good []int64
	for i := 0; i < 6; i++ {
		p, o := e.paid(t, badSlot, fmt.Sprintf("bad%d", i), 500, 3, 1)
		bad, opened[p.ID] = append(bad, p.ID), o
	}
	e.clock.Advance(time.Minute)
	for slot := 1; len(good) < 4; slot++ {
		if e.Store.Layout().Of(slot) == badTable {
			continue
		}
		p, o := e.paid(t, slot, fmt.Sprintf("good%d", slot), 700, 4, 2)
		good, opened[p.ID] = append(good, p.ID), o
	}
	packets, _ := e.Store.Tables(bad[0])
	trigger := packets + "_refuse"
	if _, err := e.DB.Exec("CREATE TRIGGER " + trigger + " BEFORE UPDATE ON " + packets +
		" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected settle failure'"); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Hour)

	// The clock stands still: the bad packets stay due for ever unless the sweeper moves
	// past them.
	settled := map[int64]int{}
	for i := 0; i < 6; i++ {
		done, _ := e.svc.ExpireDue(ctx, 3)
		for _, s := range done {
			settled[s.PacketID]++
		}
	}
	for _, id := range good {
		if settled[id] != 1 {
			t.Fatalf("good packet %d settled %d times behind failing ones, want 1 (settled: %v)", id, settled[id], settled)
		}
	}
	for _, id := range bad {
		if settled[id] != 0 || !e.indexed(t, id) {
			t.Fatalf("failing packet %d settled %d times, indexed %v", id, settled[id], e.indexed(t, id))
		}
	}
	if n := counter(t, e.reg, "redpacket_sweeper_settle_failures_total", map[string]string{"reason": "error"}); n < float64(len(bad)) {
		t.Fatalf("settle failures counted %v, want ≥ %d", n, len(bad))
	}

	if _, err := e.DB.Exec("DROP TRIGGER " + trigger); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour) // past any backoff
	done, err := e.svc.ExpireDue(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range done {
		settled[s.PacketID]++
	}
	if again, err := e.svc.ExpireDue(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("sweep after all settled: %+v %v", again, err)
	}
	for _, id := range append(bad, good...) {
		if settled[id] != 1 {
			t.Fatalf("packet %d settled %d times, want 1", id, settled[id])
		}
		e.conserved(t, id, opened[id])
	}
}

// TestRepeatOpenOfArchivedPacket: a repeated open answers the first amount (docs/design.md §4.2)
// also after the packet moved to cold storage; a first open there is refused as expired.
func TestRepeatOpenOfArchivedPacket(t *testing.T) {
	now := time.Now()
	old := now.Add(-10 * 24 * time.Hour)
	c := newTestClock(old)
	env := storetest.New(t, storetest.Options{Now: old})
	ctx := context.Background()
	if err := env.Store.EnsureSchema(ctx, now); err != nil {
		t.Fatal(err)
	}
	svc := packet.New(env.Store, &storetest.IDs{Now: c.Now}, packet.Config{Now: c.Now, Expiry: time.Hour})
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "ann", RequestID: "arch", TotalCents: 900, Count: 4, Kind: packet.KindRandom}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "txn-arch", AmountCents: 900}); err != nil {
		t.Fatal(err)
	}
	first := map[string]int64{}
	for _, u := range []string{"bea", "cid"} {
		o, err := svc.Open(ctx, p.ID, u)
		if err != nil {
			t.Fatal(err)
		}
		first[u] = o.AmountCents
	}
	c.Advance(2 * time.Hour)
	if done, err := svc.ExpireDue(ctx, 10); err != nil || len(done) != 1 {
		t.Fatalf("settle: %+v %v", done, err)
	}
	c.ns.Store(now.UnixNano())
	if moved, err := env.Store.Archive(ctx, now, 100, nil); err != nil || moved != 1 {
		t.Fatalf("archive moved %d (%v), want 1", moved, err)
	}
	for u, amt := range first {
		o, err := svc.Open(ctx, p.ID, u)
		if err != nil || !o.Repeat || o.AmountCents != amt {
			t.Fatalf("repeat open of archived packet by %s: %+v %v, want the first amount %d", u, o, err, amt)
		}
	}
	if _, err := svc.Open(ctx, p.ID, "dan"); !errors.Is(err, packet.ErrExpired) {
		t.Fatalf("first open of an archived packet: %v, want ErrExpired", err)
	}
	out, err := svc.OpenBatch(ctx, p.ID, []string{"dan", "bea"})
	if err != nil || !errors.Is(out[0].Err, packet.ErrExpired) || !out[1].Repeat || out[1].AmountCents != first["bea"] {
		t.Fatalf("batch on an archived packet: %+v %v", out, err)
	}
	if _, err := svc.Open(ctx, p.ID+1000, "bea"); !errors.Is(err, packet.ErrNotFound) {
		t.Fatalf("open of a packet that never existed: %v, want ErrNotFound", err)
	}
}

// TestSweepMigratesOldExpiryIndex: a cell whose expiry index predates the retry counter gets
// it added in place by EnsureSchema, keeping its rows, and the sweep then settles them.
func TestSweepMigratesOldExpiryIndex(t *testing.T) {
	e := newSweepEnv(t)
	ctx := context.Background()
	p, opened := e.paid(t, 2, "old", 400, 2, 1)
	if _, err := e.DB.Exec("ALTER TABLE " + e.Prefix + "_cell.expiry DROP COLUMN attempts"); err != nil {
		t.Fatal(err)
	}
	if err := e.Store.EnsureSchema(ctx, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Hour)
	done, err := e.svc.ExpireDue(ctx, 10)
	if err != nil || len(done) != 1 || done[0].PacketID != p.ID {
		t.Fatalf("sweep after migration: %+v %v", done, err)
	}
	e.conserved(t, p.ID, opened)
}

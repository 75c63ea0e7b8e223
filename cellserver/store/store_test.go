package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// recorder is an Observer that remembers what it was told.
type recorder struct {
	mu   sync.Mutex
	ok   map[shard.Table]int
	errs map[shard.Table]int
}

func (r *recorder) Observe(t shard.Table, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs[t]++
	} else {
		r.ok[t]++
	}
}

func TestEnsureSchemaIdempotentAndPlacement(t *testing.T) {
	rec := &recorder{ok: map[shard.Table]int{}, errs: map[shard.Table]int{}}
	env := storetest.New(t, storetest.Options{Observer: rec})
	ctx := context.Background()
	if err := env.Store.EnsureSchema(ctx, time.Now()); err != nil {
		t.Fatalf("second EnsureSchema: %v", err)
	}
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{})
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: "r", TotalCents: 100, Count: 1, Kind: packet.KindFixed}, 13)
	if err != nil {
		t.Fatal(err)
	}
	tbl := env.Store.TableOf(p.ID)
	if tbl != (shard.Table{DB: 1, Table: 1}) {
		t.Fatalf("slot 13 in a 2×2 layout went to %+v, want db 1 table 1", tbl)
	}
	packets, receipts := env.Store.Tables(p.ID)
	day := fmt.Sprintf("_%02d", time.Now().UTC().Day())
	if packets != env.Prefix+"_db_01.t_1"+day || receipts != env.Prefix+"_db_01.r_1"+day {
		t.Fatalf("tables %s %s", packets, receipts)
	}
	var n int
	if err := env.DB.QueryRow("SELECT COUNT(*) FROM "+packets+" WHERE id = ?", p.ID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("packet not in its day table: %d %v", n, err)
	}
	// Refusals are reported as successes: they are not table faults.
	if _, err := svc.Open(ctx, p.ID, "u"); !errors.Is(err, store.ErrNotPaid) {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.errs[tbl] != 0 || rec.ok[tbl] < 2 {
		t.Fatalf("observer saw ok=%d errs=%d for %+v", rec.ok[tbl], rec.errs[tbl], tbl)
	}
}

// ShardTables is what the local SET counts to show a first start's progress: it must name
// exactly the shard tables EnsureSchema creates, no more (the count would never reach its
// total) and no fewer.
func TestShardTablesNamesWhatEnsureSchemaCreates(t *testing.T) {
	now := time.Now()
	layout := shard.Layout{Databases: 2, TablesPerDB: 3}
	env := storetest.New(t, storetest.Options{Layout: layout, Now: now})
	layout.DatabasePrefix = env.Prefix + "_db_"
	want := store.ShardTables(layout, now)
	if len(want) != 6*layout.Databases*layout.TablesPerDB {
		t.Fatalf("%d shard tables for a 2×3 layout, want 2 cold + 2 days × 2 kinds per logical table = 36: %v", len(want), want)
	}
	rows, err := env.DB.Query(`SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA IN (?, ?)`,
		layout.DBName(0), layout.DBName(1))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		have[n] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range want {
		if !have[n] {
			t.Errorf("ShardTables names %s, which EnsureSchema did not create", n)
		}
		delete(have, n)
	}
	for n := range have {
		t.Errorf("EnsureSchema created %s, which ShardTables does not name", n)
	}
}

func TestCheckConstraintRefusesOverdraw(t *testing.T) {
	env := storetest.New(t, storetest.Options{})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{})
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: "r", TotalCents: 100, Count: 2, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t", AmountCents: 100}); err != nil {
		t.Fatal(err)
	}
	// A buggy split that pays out more than remains must be stopped by the store.
	greedy := func(store.Kind, int64, int) (int64, error) { return 100, nil }
	if _, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"x"}, time.Now(), greedy); err == nil {
		t.Fatal("store accepted a share leaving nothing for the last opener")
	}
	got, err := env.Store.Get(ctx, p.ID)
	if err != nil || got.RemainingCents != 100 || got.RemainingCount != 2 {
		t.Fatalf("packet changed: %+v %v", got, err)
	}
}

func TestArchiveMovesSettledOldRowsOnce(t *testing.T) {
	now := time.Now()
	old := now.Add(-10 * 24 * time.Hour)
	env := storetest.New(t, storetest.Options{Now: old})
	ctx := context.Background()
	if err := env.Store.EnsureSchema(ctx, now); err != nil {
		t.Fatal(err)
	}
	clock := old
	svc := packet.New(env.Store, &storetest.IDs{Now: func() time.Time { return clock }}, packet.Config{Now: func() time.Time { return clock }, Expiry: time.Hour})
	var settled, open []int64
	for i := 0; i < 7; i++ {
		p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: fmt.Sprintf("r%d", i), TotalCents: 500, Count: 5, Kind: packet.KindRandom}, i)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("t%d", i), AmountCents: 500}); err != nil {
			t.Fatal(err)
		}
		for u := 0; u < 3; u++ {
			if _, err := svc.Open(ctx, p.ID, fmt.Sprintf("u%d", u)); err != nil {
				t.Fatal(err)
			}
		}
		settled = append(settled, p.ID)
	}
	clock = old.Add(2 * time.Hour)
	if _, err := svc.ExpireDue(ctx, 100); err != nil {
		t.Fatal(err)
	}
	// An old packet the sweeper has not settled yet must stay in its day table.
	clock = old.Add(3 * time.Hour)
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: "pending", TotalCents: 500, Count: 5, Kind: packet.KindRandom}, 1)
	if err != nil {
		t.Fatal(err)
	}
	open = append(open, p.ID)
	// A fresh packet in the same layout stays where it is.
	clock = now
	fresh, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "a", RequestID: "fresh", TotalCents: 500, Count: 5, Kind: packet.KindRandom}, 1)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := env.Store.Archive(ctx, now, 2, nil)
	if err != nil || moved != len(settled) {
		t.Fatalf("archive moved %d (%v), want %d", moved, err, len(settled))
	}
	if again, err := env.Store.Archive(ctx, now, 2, nil); err != nil || again != 0 {
		t.Fatalf("second archive moved %d (%v)", again, err)
	}
	var keys int
	if err := env.DB.QueryRow("SELECT COUNT(*) FROM " + env.Prefix + "_cell.wrap_requests").Scan(&keys); err != nil || keys != 1 {
		t.Fatalf("%d wrap idempotency keys left, want only the fresh packet's (%v)", keys, err)
	}
	for _, id := range settled {
		packets, _ := env.Store.Tables(id)
		var n int
		if err := env.DB.QueryRow("SELECT COUNT(*) FROM "+packets+" WHERE id = ?", id).Scan(&n); err != nil || n != 0 {
			t.Fatalf("packet %d still in its day table (%d, %v)", id, n, err)
		}
		got, err := env.Store.Get(ctx, id)
		if err != nil || got.Status != store.StatusExpired {
			t.Fatalf("archived packet %d not readable: %+v %v", id, got, err)
		}
		rs, err := env.Store.Receipts(ctx, id, 0, 10)
		if err != nil || len(rs) != 3 {
			t.Fatalf("archived receipts of %d: %d %v", id, len(rs), err)
		}
		var sum int64
		for _, r := range rs {
			sum += r.AmountCents
		}
		if sum+got.RefundedCents != 500 {
			t.Fatalf("archived packet %d: Σ %d + refunded %d != 500", id, sum, got.RefundedCents)
		}
	}
	for _, id := range append(open, fresh.ID) {
		packets, _ := env.Store.Tables(id)
		var n int
		if err := env.DB.QueryRow("SELECT COUNT(*) FROM "+packets+" WHERE id = ?", id).Scan(&n); err != nil || n != 1 {
			t.Fatalf("packet %d left its day table (%d, %v)", id, n, err)
		}
	}
}

// TestProbeTableReportsHealthAndFailure: a probe of a logical table whose day tables are
// there counts a successful call on it (empty tables included), and one whose tables are gone
// counts a failure, so the operator's lift sees evidence either way.
func TestProbeTableReportsHealthAndFailure(t *testing.T) {
	rec := &recorder{ok: map[shard.Table]int{}, errs: map[shard.Table]int{}}
	env := storetest.New(t, storetest.Options{Observer: rec})
	ctx := context.Background()
	now := time.Now()
	tbl := shard.Table{DB: 0, Table: 1}
	if err := env.Store.ProbeTable(ctx, tbl, now); err != nil {
		t.Fatalf("probe of a healthy, empty table: %v", err)
	}
	rec.mu.Lock()
	ok, bad := rec.ok[tbl], rec.errs[tbl]
	rec.mu.Unlock()
	if ok != 2 || bad != 0 {
		t.Fatalf("healthy probe counted %d calls and %d failures, want 2 and 0", ok, bad)
	}
	layout := env.Store.Layout()
	name := layout.Physical("t", tbl, now)
	if _, err := env.DB.ExecContext(ctx, "RENAME TABLE "+name+" TO "+name+"_gone"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := env.DB.ExecContext(ctx, "RENAME TABLE "+name+"_gone TO "+name); err != nil {
			t.Errorf("restore %s: %v", name, err)
		}
	}()
	if err := env.Store.ProbeTable(ctx, tbl, now); err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("probe with %s gone: %v, want an error naming it", name, err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.errs[tbl] != 1 || rec.ok[tbl] != 3 {
		t.Fatalf("after the failing probe: %d failures, %d calls; want 1 and 3 (the receipts table still answers)", rec.errs[tbl], rec.ok[tbl])
	}
}

package idalloc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var testLayout = shard.Layout{Databases: 10, TablesPerDB: 10}

// controlDB gives a test its own control schema on the package's shared server.
func controlDB(t *testing.T) (*sql.DB, string) {
	t.Helper()
	srv := testenv.SharedMariaDB(t)
	schema := srv.CreateDatabase(t, "ids")
	db := srv.OpenDB(t, "")
	if err := control.EnsureSchema(context.Background(), db, schema); err != nil {
		t.Fatal(err)
	}
	return db, schema
}

func newAllocator(t *testing.T, cfg AllocatorConfig) *Allocator {
	t.Helper()
	if cfg.Server == "" {
		cfg.Server = "srv-" + t.Name()
	}
	if cfg.Cell == "" {
		cfg.Cell = "cell-a"
	}
	if cfg.Layout.Databases == 0 {
		cfg.Layout = testLayout
	}
	a, err := NewAllocator(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	return a
}

// crashForTest stops the allocator the way a killed process would: loops end, nothing is
// released.
func (a *Allocator) crashForTest() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.done.Wait()
}

type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// twoCells: cell-a owns 0..599, cell-b 600..999; 550..559 masked in the routing table.
func twoCells(t *testing.T) *routing.Table {
	t.Helper()
	tbl := &routing.Table{
		Set: "test", SlotCount: 1000,
		Epochs: []routing.Epoch{{Number: 1, EffectiveTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Ranges: []routing.SlotRange{
			{Start: 0, End: 599, Cell: "cell-a"}, {Start: 600, End: 999, Cell: "cell-b"},
		}}},
		Masked: []routing.MaskedRange{{Start: 550, End: 559, Reason: "test", Since: time.Now()}},
	}
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	return tbl
}

func TestAllocatorsNeverShareAWorker(t *testing.T) {
	db, schema := controlDB(t)
	const n = 12
	allocs := make([]*Allocator, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range allocs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			allocs[i], errs[i] = NewAllocator(context.Background(), AllocatorConfig{
				DB: db, Control: schema, Server: fmt.Sprintf("srv-%d", i), Cell: "cell-a", Layout: testLayout,
			})
		}()
	}
	wg.Wait()
	seen := map[int]int{}
	for i, a := range allocs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		defer a.Close(context.Background())
		if j, dup := seen[a.Worker()]; dup {
			t.Fatalf("allocators %d and %d both hold worker %d", i, j, a.Worker())
		}
		seen[a.Worker()] = i
	}
}

func TestConcurrentIssueIsUniqueOwnedUnmaskedAndTimeOrdered(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	if err := control.WriteMasks(ctx, db, schema, []control.Mask{
		{Start: 100, End: 149, Reason: "db_10 failing", Source: control.SourceOperator},
	}); err != nil {
		t.Fatal(err)
	}
	tbl := twoCells(t)
	var allocs []*Allocator
	for i := 0; i < 2; i++ {
		allocs = append(allocs, newAllocator(t, AllocatorConfig{
			DB: db, Control: schema, Server: fmt.Sprintf("srv-%d", i), Region: 1,
			Routing: func() *routing.Table { return tbl },
		}))
	}
	const goroutines, perGoroutine = 8, 1250 // 2 × 8 × 1250 = 20,000 IDs
	results := make([][]int64, 2*goroutines)
	errs := make(chan error, 2*goroutines)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := allocs[g%2]
			for i := 0; i < perGoroutine; i++ {
				id, err := a.Next(ctx, -1)
				if err != nil {
					errs <- err
					return
				}
				results[g] = append(results[g], id)
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := make(map[int64]bool, 2*goroutines*perGoroutine)
	slotsUsed := map[int]bool{}
	for g, issued := range results {
		var prev time.Time
		for _, id := range issued {
			if seen[id] {
				t.Fatalf("id %d issued twice", id)
			}
			seen[id] = true
			p, err := ids.Decompose(id)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case p.Slot >= 600:
				t.Fatalf("id %d in slot %d owned by cell-b", id, p.Slot)
			case p.Slot >= 100 && p.Slot <= 149:
				t.Fatalf("id %d in slot %d masked in the control schema", id, p.Slot)
			case p.Slot >= 550 && p.Slot <= 559:
				t.Fatalf("id %d in slot %d masked in the routing table", id, p.Slot)
			case p.Region != 1:
				t.Fatalf("id %d region %d, want 1", id, p.Region)
			case p.Worker != allocs[g%2].Worker():
				t.Fatalf("id %d worker %d, allocator holds %d", id, p.Worker, allocs[g%2].Worker())
			case p.Created.Before(prev):
				t.Fatalf("goroutine %d: id %d created %v after one created %v", g, id, p.Created, prev)
			case p.Created.Before(start.Truncate(time.Second)) || p.Created.After(end.Add(time.Second)):
				t.Fatalf("id %d created %v outside the run %v..%v", id, p.Created, start, end)
			}
			prev = p.Created
			slotsUsed[p.Slot] = true
		}
	}
	if len(seen) != 2*goroutines*perGoroutine {
		t.Fatalf("%d ids, want %d", len(seen), 2*goroutines*perGoroutine)
	}
	// 540 open slots and 20k uniform picks: all but a handful must have been used.
	if len(slotsUsed) < 500 {
		t.Errorf("only %d distinct slots used: the pick is not uniform", len(slotsUsed))
	}
}

func TestRestartWithinTheSameSecondNeverRepeats(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	// A frozen clock makes "the same second" certain.
	clock := newFakeClock(time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC))
	cfg := AllocatorConfig{DB: db, Control: schema, Server: "srv-1", Cell: "cell-a", Layout: testLayout, Clock: clock.Now}
	seen := map[int64]bool{}
	var lastSecond time.Time
	for round := 0; round < 3; round++ {
		a, err := NewAllocator(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if a.Worker() != 0 {
			t.Fatalf("round %d: worker %d, want the released worker 0 again", round, a.Worker())
		}
		for i := 0; i < 2000; i++ {
			id, err := a.Next(ctx, 7)
			if err != nil {
				t.Fatal(err)
			}
			if seen[id] {
				t.Fatalf("round %d: id %d repeated after restart", round, id)
			}
			seen[id] = true
			if c := ids.CreatedAt(id); !c.After(lastSecond) && i == 0 && round > 0 {
				t.Fatalf("round %d starts at %v, not after the previous holder's %v", round, c, lastSecond)
			}
			lastSecond = ids.CreatedAt(id)
		}
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Released cleanly, each round moved on by exactly one second, not by a whole lease.
	if want := clock.Now().Add(2 * time.Second); !lastSecond.Equal(want) {
		t.Errorf("last second %v, want %v", lastSecond, want)
	}
}

func TestCrashedHoldersWorkerIsTakenOverAfterItsReservation(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	cfg := AllocatorConfig{DB: db, Control: schema, Cell: "cell-a", Layout: testLayout,
		LeaseTTL: 1500 * time.Millisecond, RenewEvery: 100 * time.Millisecond}
	cfg.Server = "crasher"
	a := newAllocator(t, cfg)
	var last int64
	for i := 0; i < 500; i++ {
		id, err := a.Next(ctx, -1)
		if err != nil {
			t.Fatal(err)
		}
		last = max(last, id)
	}
	crashed := a.Worker()
	a.crashForTest()

	cfg.Server = "bystander"
	b := newAllocator(t, cfg)
	if b.Worker() == crashed {
		t.Fatalf("worker %d handed out while its crashed holder's lease still runs", crashed)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ws, err := control.ListWorkers(ctx, db, schema)
		if err != nil {
			t.Fatal(err)
		}
		if ws[crashed].LeaseExpires == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("crashed lease never expired")
		}
	}
	cfg.Server = "successor"
	c := newAllocator(t, cfg)
	if c.Worker() != crashed {
		t.Fatalf("successor got worker %d, want the expired %d", c.Worker(), crashed)
	}
	id, err := c.Next(ctx, -1)
	if err != nil {
		t.Fatal(err)
	}
	if !ids.CreatedAt(id).After(ids.CreatedAt(last)) {
		t.Fatalf("successor issued at %v, not after the crashed holder's %v", ids.CreatedAt(id), ids.CreatedAt(last))
	}
}

func TestMaskedSlotsAreNeverIssued(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, MaskRefresh: 20 * time.Millisecond})
	if _, err := a.Next(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := control.WriteMasks(ctx, db, schema, []control.Mask{
		{Start: 0, End: 899, Reason: "most tables failing", Source: control.SourceOperator},
	}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "mask picked up", testenv.Holds(func() bool {
		_, err := a.Next(ctx, 5)
		return errors.Is(err, ErrSlotUnavailable)
	}))
	for i := 0; i < 5000; i++ {
		id, err := a.Next(ctx, -1)
		if err != nil {
			t.Fatal(err)
		}
		if s := ids.Slot(id); s < 900 {
			t.Fatalf("id %d issued in masked slot %d", id, s)
		}
	}
	if _, err := a.Next(ctx, 950); err != nil {
		t.Fatalf("unmasked slot refused: %v", err)
	}
	if err := control.WriteMasks(ctx, db, schema, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "mask lifted", testenv.Holds(func() bool {
		_, err := a.Next(ctx, 5)
		return err == nil
	}))
}

func TestUnavailableSlotsSayWhy(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	tbl := twoCells(t)
	clock := newFakeClock(time.Now())
	brk, err := breaker.New(breaker.Config{Layout: testLayout, Clock: clock.Now,
		Policy: breaker.Policy{ConsecutiveFailures: 2, CoolDown: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Routing: func() *routing.Table { return tbl }, Breaker: brk})

	tripped := testLayout.Of(42) // serves slots 42, 142, ..., 542 in this cell
	for i := 0; i < 2; i++ {
		brk.Observe(tripped, errors.New("disk full"))
	}
	for _, c := range []struct {
		slot int
		why  string
	}{
		{700, "owned by cell-b"},
		{555, "masked in the routing table"},
		{1000, "outside the slot count"},
		{42, "tripped by the breaker"},
	} {
		_, err := a.Next(ctx, c.slot)
		if !errors.Is(err, ErrSlotUnavailable) {
			t.Errorf("slot %d (%s): %v, want ErrSlotUnavailable", c.slot, c.why, err)
		} else {
			t.Logf("slot %d: %v", c.slot, err)
		}
	}
	for i := 0; i < 3000; i++ {
		id, err := a.Next(ctx, -1)
		if err != nil {
			t.Fatal(err)
		}
		if testLayout.Of(ids.Slot(id)) == tripped {
			t.Fatalf("id %d issued in slot %d of tripped table %s", id, ids.Slot(id), testLayout.Name(tripped))
		}
	}
	// After the cool-down the breaker lets one probe through; the slot is usable again.
	clock.Advance(time.Minute)
	if _, err := a.Next(ctx, 42); err != nil {
		t.Fatalf("probe after cool-down refused: %v", err)
	}

	// A cell that owns nothing gets ErrNoSlot.
	other := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Cell: "cell-z", Server: "z",
		Routing: func() *routing.Table { return tbl }})
	if _, err := other.Next(ctx, -1); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("cell without slots: %v, want ErrNoSlot", err)
	}
}

func TestEpochChangeMovesIssuanceAtItsEffectiveSecond(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Second)
	switchAt := t0.Add(3 * time.Second)
	tbl := &routing.Table{Set: "test", SlotCount: 1000, Epochs: []routing.Epoch{
		{Number: 1, EffectiveTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Ranges: []routing.SlotRange{
			{Start: 0, End: 499, Cell: "cell-a"}, {Start: 500, End: 999, Cell: "cell-b"}}},
		{Number: 2, EffectiveTime: switchAt, Ranges: []routing.SlotRange{
			{Start: 0, End: 249, Cell: "cell-a"}, {Start: 250, End: 999, Cell: "cell-b"}}},
	}}
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock(t0)
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Clock: clock.Now, Routing: func() *routing.Table { return tbl }})
	check := func(max int) {
		t.Helper()
		for i := 0; i < 1000; i++ {
			id, err := a.Next(ctx, -1)
			if err != nil {
				t.Fatal(err)
			}
			cell, _, err := tbl.PacketOwner(id)
			if err != nil || cell != "cell-a" || ids.Slot(id) > max {
				t.Fatalf("id %d slot %d created %v routes to %q (%v)", id, ids.Slot(id), ids.CreatedAt(id), cell, err)
			}
		}
	}
	check(499)
	clock.Set(switchAt.Add(-time.Millisecond))
	check(499)
	clock.Set(switchAt)
	check(249)
}

func TestUnrenewableLeaseStopsIssuanceAndRecovers(t *testing.T) {
	srv := testenv.StartMariaDB(t)
	db := srv.OpenDB(t, "")
	ctx := context.Background()
	if err := control.EnsureSchema(ctx, db, ""); err != nil {
		t.Fatal(err)
	}
	const ttl = 800 * time.Millisecond
	a := newAllocator(t, AllocatorConfig{DB: db, LeaseTTL: ttl, RenewEvery: 100 * time.Millisecond,
		MaskRefresh: 100 * time.Millisecond})
	seen := map[int64]bool{}
	// issue reports when the call started: a success proves the fence was still ahead then.
	issue := func() (time.Time, error) {
		start := time.Now()
		id, err := a.Next(ctx, -1)
		if err == nil {
			if seen[id] {
				t.Fatalf("id %d issued twice", id)
			}
			seen[id] = true
		}
		return start, err
	}
	if _, err := issue(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	srv.Kill()
	// Keep asking: IDs may still come until the fence, never once the lease could lapse.
	var stoppedAt time.Time
	for time.Since(killedAt) < 10*time.Second {
		start, err := issue()
		if err == nil {
			if start.Sub(killedAt) > ttl {
				t.Fatalf("issued an id asked for %v after the database died; the lease was %v", start.Sub(killedAt), ttl)
			}
			continue
		}
		if !errors.Is(err, ErrNotIssuing) {
			t.Fatalf("with the database down: %v, want ErrNotIssuing", err)
		}
		stoppedAt = time.Now()
		break
	}
	if stoppedAt.IsZero() {
		t.Fatal("allocator kept issuing with its lease unrenewable")
	}
	if err := a.Ready(); !errors.Is(err, ErrNotIssuing) {
		t.Fatalf("Ready while fenced: %v", err)
	}
	for i := 0; i < 50; i++ {
		if _, err := issue(); !errors.Is(err, ErrNotIssuing) {
			t.Fatalf("issued again while fenced: %v", err)
		}
	}
	srv.Restart()
	testenv.Eventually(t, 10*time.Second, "issuing again after the database came back", testenv.Holds(func() bool { _, err := issue(); return err == nil }))
	if err := a.Ready(); err != nil {
		t.Fatalf("Ready after recovery: %v", err)
	}
	for i := 0; i < 1000; i++ {
		if _, err := issue(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStolenLeaseIsDetectedAndReplaced(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, LeaseTTL: 2 * time.Second, RenewEvery: 50 * time.Millisecond})
	old := a.Worker()
	// Another party now holds the row (as after an expiry and takeover).
	if _, err := db.Exec("UPDATE `"+schema+"`.id_workers SET lease_token = 42, holder = 'thief' WHERE worker = ?", old); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "a new worker after the lease was taken", testenv.Holds(func() bool {
		w := a.Worker()
		return w >= 0 && w != old
	}))
	id, err := a.Next(ctx, -1)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := ids.Decompose(id); p.Worker == old {
		t.Fatalf("id %d still carries the lost worker %d", id, old)
	}
}

func TestClockGoingBackNeverIssuesBelowTheHighWater(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	t0 := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	clock := newFakeClock(t0)
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Clock: clock.Now})
	first, err := a.Next(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(t0.Add(-30 * time.Second))
	second, err := a.Next(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !ids.CreatedAt(second).Equal(ids.CreatedAt(first)) || second <= first {
		t.Fatalf("after the clock went back: %d (%v) after %d (%v)", second, ids.CreatedAt(second), first, ids.CreatedAt(first))
	}
}

func TestExhaustedSequenceWaitsForTheNextSecond(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	t0 := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	clock := newFakeClock(t0)
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Clock: clock.Now, MaxWait: 100 * time.Millisecond})
	for i := 0; i <= ids.MaxSeq; i++ {
		if _, err := a.Next(ctx, 9); err != nil {
			t.Fatalf("id %d of the second: %v", i, err)
		}
	}
	if _, err := a.Next(ctx, 9); !errors.Is(err, ErrExhausted) {
		t.Fatalf("with a frozen clock: %v, want ErrExhausted", err)
	}
	// Other slots are unaffected.
	if _, err := a.Next(ctx, 10); err != nil {
		t.Fatal(err)
	}
	a.cfg.MaxWait = 10 * time.Second
	got := make(chan int64, 1)
	go func() {
		id, err := a.Next(ctx, 9)
		if err != nil {
			t.Error(err)
		}
		got <- id
	}()
	clock.Advance(time.Second)
	if id := <-got; !ids.CreatedAt(id).Equal(t0.Add(time.Second)) {
		t.Fatalf("after the wait: created %v, want %v", ids.CreatedAt(id), t0.Add(time.Second))
	}
}

// TestStaleRoutingStopsIssuance is finding 11 §1: a server that had not loaded an epoch
// moving slots away from its cell kept issuing IDs in them, and nothing refused a stale
// routing file. Now the allocator stops HandoverMargin before an epoch it lacks (announced in
// the control schema) can take effect, and when its routing file was not confirmed for
// RoutingStale; it resumes once it holds the announced epoch. It reports what it holds.
func TestStaleRoutingStopsIssuance(t *testing.T) {
	db, schema := controlDB(t)
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Second)
	e2At := t0.Add(10 * time.Minute)
	old := twoCells(t)
	var current atomic.Pointer[routing.Table]
	current.Store(old)
	var confirmed atomic.Int64
	confirmed.Store(time.Now().UnixNano())
	clock := newFakeClock(t0)
	reg := prometheus.NewRegistry()
	a := newAllocator(t, AllocatorConfig{DB: db, Control: schema, Clock: clock.Now, MaskRefresh: 10 * time.Millisecond,
		Routing:          current.Load,
		RoutingConfirmed: func() time.Time { return time.Unix(0, confirmed.Load()) },
		RoutingStale:     time.Minute, Registerer: reg})

	testenv.Eventually(t, 10*time.Second, "epoch 1 reported", testenv.Holds(func() bool {
		r, err := control.IssuingReaders(ctx, db, schema)
		return err == nil && r[a.cfg.Server] == 1
	}))
	if _, err := a.Next(ctx, -1); err != nil {
		t.Fatalf("a current table must issue: %v", err)
	}

	// Epoch 2 announced, not loaded: far from its time the old plan still holds.
	if err := control.Announce(ctx, db, schema, 2, e2At); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "announcement read", testenv.Holds(func() bool { return a.announced.Load().Number == 2 }))
	if _, err := a.Next(ctx, -1); err != nil {
		t.Fatalf("ten minutes ahead of the unloaded epoch: %v", err)
	}
	// Epoch 3 announced for 10 s from now: within the margin, so the old plan may be wrong.
	e3At := t0.Add(10 * time.Second)
	if err := control.Announce(ctx, db, schema, 3, e3At); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "announcement read", testenv.Holds(func() bool { return a.announced.Load().Number == 3 }))
	_, err := a.Next(ctx, -1)
	if !errors.Is(err, ErrNotIssuing) || !errors.Is(err, routing.ErrStale) {
		t.Fatalf("near an announced epoch it lacks the allocator issued: %v", err)
	}
	if got := testutil.ToFloat64(a.refused.WithLabelValues("routing_stale")); got != 1 {
		t.Errorf("routing_stale refusals = %v", got)
	}
	if got := testutil.ToFloat64(a.annEpoch); got != 3 {
		t.Errorf("announced epoch gauge = %v", got)
	}

	// Loading epoch 3 ends the refusal and is reported.
	next := *old
	next.Epochs = append(slices.Clone(old.Epochs), routing.Epoch{Number: 3, EffectiveTime: e3At, Ranges: []routing.SlotRange{
		{Start: 0, End: 299, Cell: "cell-a"}, {Start: 300, End: 999, Cell: "cell-b"}}})
	current.Store(&next)
	if _, err := a.Next(ctx, -1); err != nil {
		t.Fatalf("with the announced epoch loaded: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "epoch 3 reported", testenv.Holds(func() bool {
		r, err := control.IssuingReaders(ctx, db, schema)
		return err == nil && r[a.cfg.Server] == 3
	}))

	// A routing file not confirmed for longer than the bound stops issuance too.
	confirmed.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	if _, err := a.Next(ctx, -1); !errors.Is(err, routing.ErrStale) {
		t.Fatalf("unconfirmed routing file: %v", err)
	}
	confirmed.Store(time.Now().UnixNano())
	if _, err := a.Next(ctx, -1); err != nil {
		t.Fatal(err)
	}
}

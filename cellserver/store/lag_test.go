package store_test

import (
	"context"
	"testing"
	"time"
)

// TestSettlementOverdueSeesABehindSweeperAndAFailingPacket: the gauge behind the refunds
// overdue alert reads zero while nothing is late, the sweeper's lag when it falls behind, and
// a packet's age past its life when its retries keep pushing its due time forward.
func TestSettlementOverdueSeesABehindSweeperAndAFailingPacket(t *testing.T) {
	e := newSweepEnv(t) // packets expire an hour after payment
	ctx := context.Background()
	const maxLife = 2 * time.Hour
	late := func() time.Duration {
		t.Helper()
		d, err := e.Store.SettlementOverdue(ctx, e.clock.Now(), maxLife)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := late(); d != 0 {
		t.Fatalf("empty cell: overdue %v", d)
	}
	p, _ := e.paid(t, 3, "late", 500, 5, 1)
	if d := late(); d != 0 {
		t.Fatalf("fresh packet: overdue %v", d)
	}
	e.clock.Advance(time.Hour + 10*time.Minute) // due 10 minutes ago, nobody swept
	if d := late(); d < 9*time.Minute || d > 11*time.Minute {
		t.Fatalf("sweeper 10 minutes behind: overdue %v", d)
	}

	packets, _ := e.Store.Tables(p.ID)
	trigger := packets + "_refuse_lag"
	if _, err := e.DB.Exec("CREATE TRIGGER " + trigger + " BEFORE UPDATE ON " + packets +
		" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected settle failure'"); err != nil {
		t.Fatal(err)
	}
	// Every attempt fails and backs off, so the index row always looks due in the future.
	for range 20 {
		if done, _ := e.svc.ExpireDue(ctx, 10); len(done) != 0 {
			t.Fatalf("settled %+v through a failing table", done)
		}
		e.clock.Advance(5 * time.Minute)
	}
	if !e.indexed(t, p.ID) {
		t.Fatal("failing packet lost its index row")
	}
	// Created 1h10m + 100m ago, so 50 minutes past its 2 h life.
	if d := late(); d < 45*time.Minute || d > 55*time.Minute {
		t.Fatalf("failing packet: overdue %v, want about 50m", d)
	}
	if _, err := e.DB.Exec("DROP TRIGGER " + trigger); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	if _, err := e.svc.ExpireDue(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if d := late(); d != 0 {
		t.Fatalf("after settlement: overdue %v", d)
	}
}

// TestOutboxAgeIsTheOldestOwedEffect: nothing owed reads zero; an undelivered row's age
// grows with the clock and drops to zero once it is delivered.
func TestOutboxAgeIsTheOldestOwedEffect(t *testing.T) {
	e := newSweepEnv(t)
	ctx := context.Background()
	age := func() time.Duration {
		t.Helper()
		d, err := e.Store.OutboxAge(ctx, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := age(); d != 0 {
		t.Fatalf("empty outbox: age %v", d)
	}
	e.paid(t, 4, "owed", 300, 3, 2)
	e.clock.Advance(7 * time.Minute)
	if d := age(); d < 7*time.Minute || d > 8*time.Minute {
		t.Fatalf("undelivered for 7 minutes: age %v", d)
	}
	rows, err := e.Store.ClaimOutbox(ctx, e.clock.Now(), 100, time.Minute)
	if err != nil || len(rows) == 0 {
		t.Fatalf("claim outbox: %d rows, %v", len(rows), err)
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	if err := e.Store.MarkDelivered(ctx, ids); err != nil {
		t.Fatal(err)
	}
	if d := age(); d != 0 {
		t.Fatalf("all delivered: age %v", d)
	}
}

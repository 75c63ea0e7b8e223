package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var layout = shard.Layout{Databases: 4, TablesPerDB: 5, DatabasePrefix: "db_"}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

var errDB = errors.New("Error 1030: Got error 28 from storage engine") //nolint:staticcheck // MySQL's own text, as the driver reports it

func TestTripsProbesAndRecoversWithMetrics(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	b, err := breaker.New(breaker.Config{
		Layout:     layout,
		Policy:     breaker.Policy{ConsecutiveFailures: 3, CoolDown: 2 * time.Second},
		Clock:      clock.Now,
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	bad, good := shard.Table{DB: 1, Table: 2}, shard.Table{DB: 0, Table: 0}
	for i := 0; i < 3; i++ {
		b.Observe(bad, errDB)
		b.Observe(good, nil)
	}
	b.Observe(bad, context.Canceled) // the caller gave up: not the table's fault, not counted
	if !b.Tripped(bad) || b.Tripped(good) {
		t.Fatalf("tripped: bad=%v good=%v", b.Tripped(bad), b.Tripped(good))
	}
	name := layout.Name(bad)
	if got := metricValue(t, reg, "redpacket_breaker_table_errors_total", name); got != 3 {
		t.Errorf("errors metric %v, want 3", got)
	}
	if got := metricValue(t, reg, "redpacket_breaker_trips_total", name); got != 1 {
		t.Errorf("trips metric %v, want 1", got)
	}
	if got := metricValue(t, reg, "redpacket_breaker_open", name); got != 1 {
		t.Errorf("open gauge %v, want 1", got)
	}
	clock.Advance(2 * time.Second)
	if b.Tripped(bad) {
		t.Fatal("no probe granted after the cool-down")
	}
	if !b.Tripped(bad) {
		t.Fatal("a second probe was granted before the first answered")
	}
	b.Observe(bad, nil)
	if b.Tripped(bad) || b.State(bad) != breaker.Closed {
		t.Fatalf("not closed after a successful probe: %v", b.State(bad))
	}
	if got := metricValue(t, reg, "redpacket_breaker_open", name); got != 0 {
		t.Errorf("open gauge %v after recovery, want 0", got)
	}
	// Out-of-layout tables are ignored rather than panicking.
	b.Observe(shard.Table{DB: 99, Table: 0}, errDB)
	if b.Tripped(shard.Table{DB: 99, Table: 0}) {
		t.Fatal("out-of-layout table tripped")
	}
}

// metricValue reads one labelled sample from the registry the breaker registered into.
func metricValue(t *testing.T, reg *prometheus.Registry, metric, table string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					if m.Counter != nil {
						return m.GetCounter().GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{table=%q} not found", metric, table)
	return 0
}

func TestPublishesWindowCountsToControlSchema(t *testing.T) {
	srv := testenv.SharedMariaDB(t)
	schema := srv.CreateDatabase(t, "brk")
	db := srv.OpenDB(t, "")
	ctx := context.Background()
	// The control schema is created only later: the first publishes fail and must keep
	// their counts for the next attempt.
	clock := newFakeClock(time.Date(2026, 2, 1, 10, 0, 3, 0, time.UTC))
	b, err := breaker.New(breaker.Config{
		Layout: layout, Clock: clock.Now,
		Policy: breaker.Policy{Window: 10 * time.Second, ConsecutiveFailures: 1000, MinCalls: 1000},
		DB:     db, Schema: schema, Server: "srv-1", PublishEvery: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t1, t2 := shard.Table{DB: 3, Table: 4}, shard.Table{DB: 0, Table: 1}

	// Many goroutines at once: counts must add up exactly under -race.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				var err error
				if i%4 == 0 {
					err = errDB
				}
				b.Observe(t1, err)
			}
		}()
	}
	wg.Wait()
	if err := b.Publish(ctx); err == nil {
		t.Fatal("publish into a missing control schema succeeded")
	}
	clock.Advance(10 * time.Second) // next window
	b.Observe(t1, errDB)
	b.Observe(t2, nil)
	if err := control.EnsureSchema(ctx, db, schema); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { b.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done }()

	w0 := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	deadline := time.Now().Add(10 * time.Second)
	var got []control.TableErrors
	for {
		got, err = control.ReadErrorCounts(ctx, db, schema, w0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 2 || time.Now().After(deadline) {
			break
		}
	}
	want := map[string]control.TableErrors{
		layout.Name(t1): {Errors: 201, Calls: 801, Servers: 1, FirstWindow: w0, LastWindow: w0.Add(10 * time.Second)},
		layout.Name(t2): {Errors: 0, Calls: 1, Servers: 1},
	}
	if len(got) != 2 {
		t.Fatalf("published %+v", got)
	}
	for _, g := range got {
		w := want[g.Table]
		if g.Errors != w.Errors || g.Calls != w.Calls || g.Servers != w.Servers {
			t.Errorf("%s: got %+v, want %+v", g.Table, g, w)
		}
		if g.Table == layout.Name(t1) && (!g.FirstWindow.Equal(w.FirstWindow) || !g.LastWindow.Equal(w.LastWindow)) {
			t.Errorf("%s windows %v..%v, want %v..%v", g.Table, g.FirstWindow, g.LastWindow, w.FirstWindow, w.LastWindow)
		}
	}
	// Nothing is published twice.
	if err := b.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := control.ReadErrorCounts(ctx, db, schema, w0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again) != fmt.Sprint(got) {
		t.Fatalf("counts changed on an empty publish: %+v -> %+v", got, again)
	}
}

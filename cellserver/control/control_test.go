package control_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// setup returns a DB with a fresh control schema of its own.
func setup(t *testing.T) (*sql.DB, string) {
	t.Helper()
	srv := testenv.SharedMariaDB(t)
	schema := srv.CreateDatabase(t, "ctl")
	db := srv.OpenDB(t, "")
	if err := control.EnsureSchema(context.Background(), db, schema); err != nil {
		t.Fatal(err)
	}
	return db, schema
}

func TestWorkersMatchIDLayout(t *testing.T) {
	if control.Workers != ids.MaxWorker+1 {
		t.Fatalf("control.Workers = %d, ids.MaxWorker+1 = %d", control.Workers, ids.MaxWorker+1)
	}
}

func TestEnsureSchemaIdempotentAndConcurrent(t *testing.T) {
	db, schema := setup(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- control.EnsureSchema(context.Background(), db, schema)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ws, err := control.ListWorkers(context.Background(), db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != control.Workers {
		t.Fatalf("%d worker rows, want %d", len(ws), control.Workers)
	}
	if err := control.EnsureSchema(context.Background(), db, "bad-name;"); err == nil {
		t.Fatal("EnsureSchema accepted a schema name that needs quoting")
	}
}

func TestConcurrentAcquireNeverSharesAWorker(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	const n = 60
	var wg sync.WaitGroup
	leases := make([]control.Lease, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leases[i], errs[i] = control.AcquireWorker(ctx, db, schema, fmt.Sprintf("srv-%d", i), time.Minute, 100)
		}()
	}
	wg.Wait()
	seen := map[int]string{}
	for i := range leases {
		if errs[i] != nil {
			t.Fatalf("acquire %d: %v", i, errs[i])
		}
		if other, dup := seen[leases[i].Worker]; dup {
			t.Fatalf("worker %d leased to %s and %s", leases[i].Worker, other, leases[i].Holder)
		}
		seen[leases[i].Worker] = leases[i].Holder
	}
}

func TestAcquireExhaustsThenReleaseFrees(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	var all []control.Lease
	for i := 0; i < control.Workers; i++ {
		l, err := control.AcquireWorker(ctx, db, schema, "fill", time.Minute, 0)
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		all = append(all, l)
	}
	if _, err := control.AcquireWorker(ctx, db, schema, "one-too-many", time.Minute, 0); !errors.Is(err, control.ErrNoFreeWorker) {
		t.Fatalf("acquire past the last worker: %v, want ErrNoFreeWorker", err)
	}
	victim := all[17]
	if err := control.ReleaseWorker(ctx, db, schema, victim, 12345); err != nil {
		t.Fatal(err)
	}
	l, err := control.AcquireWorker(ctx, db, schema, "next", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	if l.Worker != victim.Worker || l.PreviousHighWater != 12345 {
		t.Fatalf("got worker %d with high water %d, want worker %d with 12345", l.Worker, l.PreviousHighWater, victim.Worker)
	}
	// A release with the stale token must not free the new holder's lease.
	if err := control.ReleaseWorker(ctx, db, schema, victim, 1); !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("stale release: %v, want ErrLeaseLost", err)
	}
	if err := control.RenewWorker(ctx, db, schema, l, time.Minute, 20000); err != nil {
		t.Fatalf("renew by the holder: %v", err)
	}
}

func TestExpiredLeaseIsLostAndTakenOverWithItsReservation(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	// A long first lease, so a loaded machine cannot let it lapse before the renewal below;
	// the renewal then shortens it to what the test waits out.
	old, err := control.AcquireWorker(ctx, db, schema, "old", 10*time.Second, 5000)
	if err != nil {
		t.Fatal(err)
	}
	if err := control.RenewWorker(ctx, db, schema, old, 30*time.Millisecond, 6000); err != nil {
		t.Fatal(err)
	}
	// Poll (not sleep) until the database itself considers the lease expired.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws, err := control.ListWorkers(ctx, db, schema)
		if err != nil {
			t.Fatal(err)
		}
		if ws[old.Worker].LeaseExpires == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease never expired")
		}
	}
	if err := control.RenewWorker(ctx, db, schema, old, time.Minute, 7000); !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("renew of an expired lease: %v, want ErrLeaseLost", err)
	}
	next, err := control.AcquireWorker(ctx, db, schema, "new", time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	if next.Worker != old.Worker || next.PreviousHighWater != 6000 {
		t.Fatalf("takeover got worker %d high water %d, want worker %d high water 6000 (the crashed holder's reservation)",
			next.Worker, next.PreviousHighWater, old.Worker)
	}
}

func TestWriteMasksReplacesActiveSetAndKeepsHistory(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	t0 := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	first := []control.Mask{
		{Start: 10, End: 19, Reason: "db_01.t_0 errors", Source: control.SourceOperator, Since: t0},
		{Start: 500, End: 500, Reason: "manual", Source: control.SourceManual, Since: t0},
	}
	if err := control.WriteMasks(ctx, db, schema, first); err != nil {
		t.Fatal(err)
	}
	got, err := control.ReadMasks(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Start != 10 || got[0].End != 19 || !got[0].Since.Equal(t0) || got[1].Start != 500 {
		t.Fatalf("read %+v", got)
	}
	if !control.IsMasked(got, 15) || control.IsMasked(got, 20) || !control.IsMasked(got, 500) {
		t.Fatal("IsMasked disagrees with the masks")
	}

	second := []control.Mask{
		{Start: 10, End: 19, Reason: "still failing", Source: control.SourceOperator, Since: t0.Add(time.Hour)},
		{Start: 30, End: 39, Reason: "db_03.t_0 errors", Source: control.SourceOperator},
	}
	if err := control.WriteMasks(ctx, db, schema, second); err != nil {
		t.Fatal(err)
	}
	got, err = control.ReadMasks(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("active after rewrite: %+v", got)
	}
	if !got[0].Since.Equal(t0) || got[0].Reason != "still failing" {
		t.Errorf("kept mask lost its Since or reason: %+v", got[0])
	}
	if got[1].Start != 30 || got[1].Since.IsZero() {
		t.Errorf("new mask: %+v", got[1])
	}
	hist, err := control.ReadMaskHistory(ctx, db, schema, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var lifted int
	for _, m := range hist {
		if m.LiftedAt != nil {
			lifted++
			if m.Start != 500 {
				t.Errorf("unexpected lifted mask %+v", m)
			}
		}
	}
	if len(hist) != 3 || lifted != 1 {
		t.Fatalf("history %+v", hist)
	}

	if err := control.WriteMasks(ctx, db, schema, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := control.ReadMasks(ctx, db, schema); len(got) != 0 {
		t.Fatalf("masks after clearing: %+v", got)
	}
	if err := control.WriteMasks(ctx, db, schema, []control.Mask{{Start: 5, End: 4, Source: "x"}}); err == nil {
		t.Fatal("accepted an inverted range")
	}
}

func TestRecordAndReadErrorCounts(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	w0 := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	w1 := w0.Add(10 * time.Second)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(control.RecordErrors(ctx, db, schema, "srv-a", []control.WindowCount{
		{Table: "db_01.t_2", WindowStart: w0, Errors: 3, Calls: 10},
		{Table: "db_00.t_0", WindowStart: w0, Errors: 0, Calls: 50},
	}))
	must(control.RecordErrors(ctx, db, schema, "srv-a", []control.WindowCount{
		{Table: "db_01.t_2", WindowStart: w0, Errors: 2, Calls: 5}, // same window again: adds
	}))
	must(control.RecordErrors(ctx, db, schema, "srv-b", []control.WindowCount{
		{Table: "db_01.t_2", WindowStart: w1, Errors: 7, Calls: 7},
	}))
	got, err := control.ReadErrorCounts(ctx, db, schema, w0)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]control.TableErrors{}
	for _, e := range got {
		byName[e.Table] = e
	}
	hot := byName["db_01.t_2"]
	if hot.Errors != 12 || hot.Calls != 22 || hot.Servers != 2 || !hot.FirstWindow.Equal(w0) || !hot.LastWindow.Equal(w1) {
		t.Fatalf("db_01.t_2 = %+v", hot)
	}
	if cold := byName["db_00.t_0"]; cold.Errors != 0 || cold.Calls != 50 || cold.ErrorRatio() != 0 {
		t.Fatalf("db_00.t_0 = %+v", cold)
	}
	got, err = control.ReadErrorCounts(ctx, db, schema, w1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Errors != 7 || got[0].ErrorRatio() != 1 {
		t.Fatalf("since w1: %+v", got)
	}
	n, err := control.PruneErrorCounts(ctx, db, schema, w1)
	if err != nil || n != 2 {
		t.Fatalf("prune: %d %v", n, err)
	}
}

func TestParseTableInvertsName(t *testing.T) {
	for _, l := range []shard.Layout{shard.Default, {Databases: 2, TablesPerDB: 3, DatabasePrefix: "cellx_"}} {
		for _, tb := range l.All() {
			got, err := control.ParseTable(l, l.Name(tb))
			if err != nil || got != tb {
				t.Fatalf("ParseTable(%q) = %v, %v", l.Name(tb), got, err)
			}
		}
	}
	for _, bad := range []string{"", "db_01", "db_01.x_1", "xx_01.t_1", "db_100.t_0", "db_1.t_0", "db_01.t_10", "db_01.t_-1"} {
		if _, err := control.ParseTable(shard.Default, bad); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
}

func TestWriteSourceMasksLeavesOtherSourcesAlone(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	manual := control.Mask{Start: 1, End: 1, Reason: "hand", Source: control.SourceManual}
	if err := control.WriteMasks(ctx, db, schema, []control.Mask{manual,
		{Start: 2, End: 2, Reason: "policy", Source: control.SourceOperator}}); err != nil {
		t.Fatal(err)
	}
	if err := control.WriteSourceMasks(ctx, db, schema, control.SourceOperator, []control.Mask{
		{Start: 3, End: 3, Reason: "policy", Source: control.SourceOperator}}); err != nil {
		t.Fatal(err)
	}
	got, err := control.ReadMasks(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Start != 1 || got[0].Source != control.SourceManual || got[1].Start != 3 {
		t.Fatalf("active masks %+v, want the manual 1 and the operator's 3", got)
	}
	if err := control.WriteSourceMasks(ctx, db, schema, control.SourceOperator, []control.Mask{manual}); err == nil {
		t.Fatal("accepted a mask of another source")
	}
}

// TestCheckLayoutRecordsOnceAndRefusesChanges: the first server records the cell's shard
// layout; the same layout passes again, any other is refused naming both, and concurrent
// first starts with different layouts agree on exactly one.
func TestCheckLayoutRecordsOnceAndRefusesChanges(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	orig := shard.Layout{Databases: 4, TablesPerDB: 2, DatabasePrefix: "db_"}
	got, err := control.CheckLayout(ctx, db, schema, orig, "srv-a")
	if err != nil || got.Layout != orig || got.RecordedBy != "srv-a" || time.Since(got.RecordedAt).Abs() > time.Minute {
		t.Fatalf("first check: %+v %v", got, err)
	}
	if again, err := control.CheckLayout(ctx, db, schema, orig, "srv-b"); err != nil || again.RecordedBy != "srv-a" {
		t.Fatalf("same layout from another server: %+v %v", again, err)
	}
	for _, other := range []shard.Layout{
		{Databases: 5, TablesPerDB: 2, DatabasePrefix: "db_"},
		{Databases: 4, TablesPerDB: 1, DatabasePrefix: "db_"},
		{Databases: 4, TablesPerDB: 2, DatabasePrefix: "shard_"},
	} {
		rec, err := control.CheckLayout(ctx, db, schema, other, "srv-c")
		if !errors.Is(err, control.ErrLayoutMismatch) || rec.Layout != orig {
			t.Fatalf("layout %+v: %+v %v, want ErrLayoutMismatch with the recorded layout", other, rec, err)
		}
		for _, want := range []string{"4 databases × 2 tables", fmt.Sprintf("%d databases × %d tables", other.Databases, other.TablesPerDB), "spec.template.shards"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
		}
	}

	_, fresh := setup(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = control.CheckLayout(ctx, db, fresh, shard.Layout{Databases: 1 + i%2, TablesPerDB: 1, DatabasePrefix: "db_"}, fmt.Sprint("srv-", i))
		}()
	}
	wg.Wait()
	winners := map[int]bool{}
	for i, err := range errs {
		switch {
		case err == nil:
			winners[1+i%2] = true
		case !errors.Is(err, control.ErrLayoutMismatch):
			t.Fatalf("concurrent check %d: %v", i, err)
		}
	}
	if len(winners) != 1 {
		t.Fatalf("concurrent first starts accepted layouts %v, want exactly one", winners)
	}
}

// TestRoutingReadersAndAnnouncement: the operator's hand-over gate counts only servers that
// hold a live worker lease, with the epoch each reported (0 when none); an announcement never
// goes back to an older epoch; the highest epoch anyone saw survives for numbering.
func TestRoutingReadersAndAnnouncement(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	if n, _, err := control.ReadAnnouncement(ctx, db, schema); err != nil || n != 0 {
		t.Fatalf("fresh schema announces %d (%v)", n, err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := control.Announce(ctx, db, schema, 5, at); err != nil {
		t.Fatal(err)
	}
	if err := control.Announce(ctx, db, schema, 4, at.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, eff, err := control.ReadAnnouncement(ctx, db, schema); err != nil || n != 5 || !eff.Equal(at) {
		t.Fatalf("announcement %d at %s (%v), want 5 at %s", n, eff, err, at)
	}
	for _, s := range []string{"srv-a", "srv-b"} {
		if _, err := control.AcquireWorker(ctx, db, schema, s, time.Minute, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := control.ReportReader(ctx, db, schema, "srv-a", 4, at); err != nil {
		t.Fatal(err)
	}
	if err := control.ReportReader(ctx, db, schema, "srv-a", 5, at); err != nil {
		t.Fatal(err)
	}
	if err := control.ReportReader(ctx, db, schema, "srv-gone", 7, at); err != nil {
		t.Fatal(err)
	}
	got, err := control.IssuingReaders(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["srv-a"] != 5 || got["srv-b"] != 0 {
		t.Fatalf("issuing readers %v, want srv-a at 5 and srv-b at 0 (srv-gone holds no lease)", got)
	}
	if n, err := control.MaxReportedEpoch(ctx, db, schema); err != nil || n != 7 {
		t.Fatalf("highest epoch seen %d (%v), want 7", n, err)
	}
}

// TestRecentErrorCountsUseTheDatabaseClock: a server whose clock is an hour behind publishes
// windows that start an hour "ago"; counting by the database's publish time still sees them,
// and a row the database stamped long ago is out of the span (and pruned) whatever its window.
func TestRecentErrorCountsUseTheDatabaseClock(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	behind := time.Now().Add(-time.Hour)
	ahead := time.Now().Add(time.Hour)
	if err := control.RecordErrors(ctx, db, schema, "srv-slow-clock", []control.WindowCount{{Table: "db_01.t_2", WindowStart: behind, Errors: 9, Calls: 9}}); err != nil {
		t.Fatal(err)
	}
	if err := control.RecordErrors(ctx, db, schema, "srv-fast-clock", []control.WindowCount{{Table: "db_03.t_0", WindowStart: ahead, Errors: 4, Calls: 4}}); err != nil {
		t.Fatal(err)
	}
	got, err := control.ReadRecentErrorCounts(ctx, db, schema, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Table != "db_01.t_2" || got[0].Errors != 9 || got[1].Table != "db_03.t_0" || got[1].Errors != 4 {
		t.Fatalf("recent counts %+v, want both servers' errors whatever their clocks", got)
	}
	// The fast server's row was published (by the database's clock) ten minutes ago.
	if _, err := db.ExecContext(ctx, "UPDATE `"+schema+"`.table_errors SET updated_at = NOW(6) - INTERVAL 10 MINUTE WHERE server = 'srv-fast-clock'"); err != nil {
		t.Fatal(err)
	}
	got, err = control.ReadRecentErrorCounts(ctx, db, schema, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Table != "db_01.t_2" {
		t.Fatalf("recent counts %+v, want only the row published within the span", got)
	}
	n, err := control.PruneStaleErrorCounts(ctx, db, schema, 5*time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("prune: %d %v, want the one row published ten minutes ago", n, err)
	}
}

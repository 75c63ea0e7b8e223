package dbfailover

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/internal/testenv"
)

// memHistory is a HistoryStore in memory, as durable as the test needs.
type memHistory struct {
	mu sync.Mutex
	h  History
}

func (m *memHistory) LoadHistory(context.Context) (History, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h.Clone(), nil
}

func (m *memHistory) SaveHistory(_ context.Context, h History) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.h = h.Clone()
	return nil
}

type testCell struct {
	t     testing.TB
	procs []*testenv.MariaDBProcess
	dirs  []string
	ports []int
	m     *Manager
	hist  *memHistory
}

func startCell(t testing.TB, n int) *testCell {
	t.Helper()
	c := &testCell{t: t, hist: &memHistory{}}
	base := t.TempDir()
	var eps []Endpoint
	for i := range n {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p := &testenv.MariaDBProcess{BinLog: true, ServerID: i + 1, BufferPoolSize: "32M", MaxConnections: 100, ExtraArgs: InstanceFlags()}
		c.procs, c.dirs, c.ports = append(c.procs, p), append(c.dirs, filepath.Join(base, fmt.Sprint(i))), append(c.ports, port)
		eps = append(eps, Endpoint{Addr: fmt.Sprintf("127.0.0.1:%d", port), ServerID: uint32(i + 1)})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.procs[i].Start(context.Background(), c.dirs[i], c.ports[i]) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, p := range c.procs {
			_ = p.Kill()
		}
	})
	c.m = &Manager{Cell: Cell{Name: "c", Instances: eps, AppUser: "rp_app", ReplUser: "root",
		AdminDSN: func(addr string) string { return "root@tcp(" + addr + ")/?timeout=2s&readTimeout=10s" }},
		Store: c.hist, Policy: Policy{FailoverAfter: 300 * time.Millisecond, DegradeAfter: time.Hour}}
	t.Cleanup(c.m.Close)
	return c
}

// startHealthyCell is three instances reconciled to a healthy primary 0, with the servers' user
// rp_app and an empty table f.acked.
func startHealthyCell(t *testing.T) *testCell {
	t.Helper()
	c := startCell(t, 3)
	c.settle("bootstrap", func(d Decision) bool { return d.Reason == ReasonHealthy })
	root0 := c.db(0, "root")
	exec(t, root0, "CREATE USER IF NOT EXISTS 'rp_app'@'127.0.0.1'")
	exec(t, root0, "GRANT "+AppGrants+" ON *.* TO 'rp_app'@'127.0.0.1'")
	exec(t, root0, "CREATE DATABASE f")
	exec(t, root0, "CREATE TABLE f.acked (id INT PRIMARY KEY) ENGINE=InnoDB")
	return c
}

// settle reconciles until cond holds for the decision, or fails after 30 s.
func (c *testCell) settle(what string, cond func(Decision) bool) Decision {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := c.m.Reconcile(context.Background())
		if err == nil && cond(d) {
			return d
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: last decision %s %q, err %v", what, d.Reason, d.Message, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *testCell) db(i int, user string) *sql.DB {
	c.t.Helper()
	db, err := sql.Open("mysql", fmt.Sprintf("%s@tcp(127.0.0.1:%d)/?timeout=2s", user, c.ports[i]))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { db.Close() })
	return db
}

func exec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func count(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM f.acked").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func isReadOnlyRefusal(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1290 || me.Number == 1836)
}

// TestFailoverOnRealMariaDB runs the Manager on three real instances: bootstrap, a replica with
// a local write refused as a candidate, the primary killed and the clean replica promoted with
// every acknowledged write, the old primary back read-only as a replica, then a second failover
// whose deposed primary returns with an unacknowledged tail and is refused.
func TestFailoverOnRealMariaDB(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three mariadbd")
	}
	c := startHealthyCell(t)
	app0 := c.db(0, "rp_app")
	for i := range 50 {
		exec(t, app0, "INSERT INTO f.acked VALUES (?)", i) // each acknowledged: a replica has it
	}
	// The cell servers' user cannot write on a replica.
	if _, err := c.db(1, "rp_app").Exec("INSERT INTO f.acked VALUES (1000)"); !isReadOnlyRefusal(err) {
		t.Fatalf("app write on a replica: %v, want a read-only refusal", err)
	}

	// A local write on replica 1 (root passes read_only): its GTID carries server 2, which
	// never was primary, and its seq makes it look the most advanced.
	exec(t, c.db(1, "root"), "INSERT INTO f.acked VALUES (1001)")
	if err := c.procs[0].Kill(); err != nil {
		t.Fatal(err)
	}
	d := c.settle("failover", func(d Decision) bool { return d.Primary != 0 && d.Ready })
	if d.Primary != 2 {
		t.Fatalf("new primary %d, want 2 (1 is errant): %s", d.Primary, d.Message)
	}
	h, _ := c.hist.LoadHistory(context.Background())
	if why := h.Refused[1]; !strings.Contains(why, "errant") {
		t.Fatalf("replica 1 not refused as errant: %+v", h)
	}
	if n := count(t, c.db(2, "root")); n != 50 {
		t.Fatalf("new primary holds %d acknowledged rows, want 50", n)
	}
	// With instance 0 down and 1 refused, primary 2 has no replica: a write waits for the
	// old primary to come back rather than commit on one instance (DegradeAfter is an hour here).
	app2 := c.db(2, "rp_app")
	waiting := make(chan error, 1)
	go func() { _, err := app2.Exec("INSERT INTO f.acked VALUES (50)"); waiting <- err }()
	waitWaiting(t, c.db(2, "root"))

	// The old primary comes back read-only and, holding nothing past its term's end, is
	// repointed as a replica.
	if err := c.procs[0].Start(context.Background(), c.dirs[0], c.ports[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.db(0, "rp_app").Exec("INSERT INTO f.acked VALUES (2000)"); !isReadOnlyRefusal(err) {
		t.Fatalf("app write on the returning old primary: %v, want a read-only refusal", err)
	}
	c.settle("old primary rejoins", func(d Decision) bool {
		return d.Reason == ReasonReplicaMissing && !strings.Contains(d.Message, "instance 0")
	})
	if err := <-waiting; err != nil {
		t.Fatalf("the write waiting for a replica: %v", err)
	}
	waitRows(t, c.db(0, "root"), 51)

	// Second failover: replica 0 stops receiving, a write on primary 2 commits to its binlog
	// and waits for an ack that never comes, and 2 dies. 0 takes over; 2 comes back with that
	// unacknowledged tail and is refused, fenced.
	exec(t, c.db(0, "root"), "STOP SLAVE IO_THREAD")
	hung := make(chan error, 1)
	go func() { _, err := app2.Exec("INSERT INTO f.acked VALUES (51)"); hung <- err }()
	waitWaiting(t, c.db(2, "root"))
	if err := c.procs[2].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-hung; err == nil {
		t.Fatal("a commit waiting for its ack was acknowledged when its primary died")
	}
	d = c.settle("second failover", func(d Decision) bool { return d.Primary == 0 && d.Ready })
	if n := count(t, c.db(0, "root")); n != 51 {
		t.Fatalf("primary 0 holds %d rows, want the 51 acknowledged", n)
	}
	if err := c.procs[2].Start(context.Background(), c.dirs[2], c.ports[2]); err != nil {
		t.Fatal(err)
	}
	c.settle("deposed primary with a tail refused", func(d Decision) bool {
		h, _ := c.hist.LoadHistory(context.Background())
		return strings.Contains(h.Refused[2], "after the end")
	})
	if _, err := c.db(2, "rp_app").Exec("INSERT INTO f.acked VALUES (3000)"); !isReadOnlyRefusal(err) {
		t.Fatalf("app write on the refused old primary: %v, want a read-only refusal", err)
	}
	d = c.settle("only replica refused: said so", func(d Decision) bool { return d.Reason == ReasonNoSemiSync })
	t.Logf("final: %s: %s", d.Reason, d.Message)
	exec(t, c.db(0, "rp_app"), "INSERT INTO f.acked VALUES (52)") // not stuck: the wait is off, visibly
}

// TestCommitsMadeAloneAreNeverFailedOverFrom: a primary whose only replica is gone stops
// waiting for it (visibly) and goes on committing alone. If it then dies, the replica — even
// back and reachable — lacks those acknowledged commits, so the cell waits for the primary
// instead of promoting it. Once the primary is back and the replica has received everything,
// the record is cleared and a failover loses nothing again.
func TestCommitsMadeAloneAreNeverFailedOverFrom(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two mariadbd")
	}
	c := startCell(t, 2)
	c.m.Policy.DegradeAfter = time.Second
	c.settle("bootstrap", func(d Decision) bool { return d.Reason == ReasonHealthy })
	root0 := c.db(0, "root")
	exec(t, root0, "CREATE DATABASE f")
	exec(t, root0, "CREATE TABLE f.acked (id INT PRIMARY KEY) ENGINE=InnoDB")
	for i := range 20 {
		exec(t, root0, "INSERT INTO f.acked VALUES (?)", i)
	}
	if err := c.procs[1].Kill(); err != nil {
		t.Fatal(err)
	}
	c.settle("replica gone: the primary commits alone", func(d Decision) bool { return d.Reason == ReasonNoSemiSync })
	if h, _ := c.hist.LoadHistory(context.Background()); h.SemiSyncOff.IsZero() {
		t.Fatalf("semi-sync is off but the history does not say so: %+v", h)
	}
	for i := 20; i < 120; i++ {
		exec(t, root0, "INSERT INTO f.acked VALUES (?)", i) // acknowledged with no replica
	}
	if err := c.procs[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.procs[1].Start(context.Background(), c.dirs[1], c.ports[1]); err != nil {
		t.Fatal(err)
	}
	// Well past FailoverAfter, with the replica reachable: still no failover.
	d := c.settle("primary lost after committing alone", func(d Decision) bool { return d.Reason == ReasonSoleCopyLost })
	for range 20 {
		d, _ = c.m.Reconcile(context.Background())
		if d.Primary != 0 || d.Reason != ReasonSoleCopyLost {
			t.Fatalf("the cell failed over from a primary that committed alone: %s %q", d.Reason, d.Message)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := c.procs[0].Start(context.Background(), c.dirs[0], c.ports[0]); err != nil {
		t.Fatal(err)
	}
	c.settle("primary back, replica caught up", func(d Decision) bool { return d.Reason == ReasonHealthy && d.Primary == 0 })
	if h, _ := c.hist.LoadHistory(context.Background()); !h.SemiSyncOff.IsZero() {
		t.Fatalf("healthy while the history still records commits made alone: %+v", h)
	}
	waitRows(t, c.db(1, "root"), 120)
	if err := c.procs[0].Kill(); err != nil {
		t.Fatal(err)
	}
	c.settle("failover once the replica holds everything", func(d Decision) bool { return d.Primary == 1 && d.Ready })
	if n := count(t, c.db(1, "root")); n != 120 {
		t.Fatalf("new primary holds %d acknowledged rows, want 120", n)
	}
}

func waitRows(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for count(t, db) != n {
		if time.Now().After(deadline) {
			t.Fatalf("replica has %d rows, want %d", count(t, db), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitWaiting(t *testing.T, db *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var name string
		var n int
		if err := db.QueryRow("SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'").Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no commit waiting for a semi-sync ack")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkCommit measures what the semi-sync wait costs a commit: one-row autocommit inserts
// on a primary with one replica, waiting for its acknowledgement (AFTER_SYNC) and not. Both
// pay the same fsyncs (redo log and binlog); the difference is the replica's round trip.
//
//	go test ./internal/dbfailover -run '^$' -bench Commit -benchtime 2000x
func BenchmarkCommit(b *testing.B) {
	c := startCell(b, 2)
	c.settle("bootstrap", func(d Decision) bool { return d.Reason == ReasonHealthy })
	root := c.db(0, "root")
	exec(b, root, "CREATE DATABASE IF NOT EXISTS f")
	exec(b, root, "CREATE TABLE IF NOT EXISTS f.bench (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
	for _, mode := range []struct {
		name string
		on   string
	}{{"semi-sync-after-sync", "ON"}, {"async", "OFF"}} {
		b.Run(mode.name, func(b *testing.B) {
			exec(b, root, "SET GLOBAL rpl_semi_sync_master_enabled = "+mode.on)
			for b.Loop() {
				exec(b, root, "INSERT INTO f.bench (v) VALUES (1)")
			}
		})
	}
	exec(b, root, "SET GLOBAL rpl_semi_sync_master_enabled = ON")
}

// TestSwitchoverOnRealMariaDB hands the primary role over while a writer keeps writing: every
// write acknowledged before, during and after is on the new primary, the old one replicates
// from it read-only, and a switchover to an instance that cannot take over is refused with the
// primary left writable.
func TestSwitchoverOnRealMariaDB(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three mariadbd")
	}
	c := startHealthyCell(t)

	// The writer follows the primary as the cell servers do: each write goes to whichever
	// instance takes it, and a refused or broken one is retried on the next instance.
	apps := []*sql.DB{c.db(0, "rp_app"), c.db(1, "rp_app"), c.db(2, "rp_app")}
	stop := make(chan struct{})
	var acked []int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for id := 0; ; {
			select {
			case <-stop:
				return
			default:
			}
			for _, db := range apps {
				if _, err := db.Exec("INSERT INTO f.acked VALUES (?)", id); err == nil {
					acked = append(acked, id)
					id++
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	if err := c.m.Switchover(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	d := c.settle("instance 2 primary after the switchover", func(d Decision) bool { return d.Primary == 2 && d.Reason == ReasonHealthy })
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-done
	t.Logf("%d writes acknowledged across the switchover; %s", len(acked), d.Message)
	waitRows(t, c.db(2, "root"), len(acked))
	rows, err := c.db(2, "root").Query("SELECT id FROM f.acked ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	rows.Close()
	if fmt.Sprint(got) != fmt.Sprint(acked) {
		t.Fatalf("new primary holds %d rows, the writer saw %d acknowledged", len(got), len(acked))
	}
	if _, err := apps[0].Exec("INSERT INTO f.acked VALUES (-1)"); !isReadOnlyRefusal(err) {
		t.Fatalf("app write on the old primary after the switchover: %v, want a read-only refusal", err)
	}
	h, _ := c.hist.LoadHistory(context.Background())
	if len(h.Terms) != 2 || h.Terms[0].End == nil || len(h.Refused) != 0 {
		t.Fatalf("history after a switchover: %+v", h)
	}

	// Refused: the instance is down. The primary stays where it is, and writable.
	if err := c.procs[1].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.m.Switchover(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("switchover to a dead instance: %v", err)
	}
	if err := c.m.Switchover(context.Background(), 7); err == nil {
		t.Fatal("switchover to instance 7 of 3 accepted")
	}
	exec(t, apps[2], "INSERT INTO f.acked VALUES (-2)")
}

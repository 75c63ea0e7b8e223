package baseline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/redpacketset/redpacket/internal/cpustat"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// Callers is the number of concurrent openers (the 256).
const Callers = 256

type result struct {
	opensPerSec float64
	failed      int64
	p99         time.Duration
	cpu         float64 // machine CPU busy fraction during the run
	// From MariaDB's global status over the timed run: opens per committed transaction and
	// client statements (round trips) per committed transaction.
	opensPerTx, stmtsPerTx float64
	// CPU time per successful open, from /proc: MariaDB's, and this process's (the server
	// code and the callers together). Far steadier than opens/s on a shared machine.
	dbPerOpen, appPerOpen time.Duration
}

var (
	resultsMu sync.Mutex
	results   = map[string]result{}
)

type strategy struct {
	name string
	open func(ctx context.Context, id int64, user string) error
}

// BenchmarkHotOpens runs the four strategies on one MariaDB with durable settings
// (innodb_flush_log_at_trx_commit=1; RP_BENCH_BINLOG=1 adds log-bin with sync_binlog=1), each
// on a fresh hot packet per run, and prints the ratios at the end. RP_BENCH_HOT sets the
// number of hot packets (default 1); the callers spread over them. RP_BENCH_BATCH sets (d)'s
// most opens per transaction (default 128, the server's default).
func BenchmarkHotOpens(b *testing.B) {
	opts := []testenv.MariaDBOption{testenv.WithBufferPool("256M")}
	if os.Getenv("RP_BENCH_BINLOG") == "1" {
		opts = append(opts, testenv.WithBinlog())
	}
	m := testenv.StartMariaDB(b, opts...)
	env := storetest.NewOn(b, m, storetest.Options{MaxConns: Callers + 64})
	limits := packet.DefaultLimits
	limits.MaxCount, limits.MaxTotalCents = 1<<30, 1<<50
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Limits: limits})
	hot := 1
	if v, err := strconv.Atoi(os.Getenv("RP_BENCH_HOT")); err == nil && v > 0 {
		hot = v
	}
	single, err := queue.New(Ungrouped{svc}, queue.Config{Workers: 32, Depth: 4 * Callers})
	if err != nil {
		b.Fatal(err)
	}
	defer single.Close(context.Background())
	batchMax := 128
	if v, err := strconv.Atoi(os.Getenv("RP_BENCH_BATCH")); err == nil && v > 0 {
		batchMax = v
	}
	grouped, err := queue.New(svc, queue.Config{Workers: 32, Depth: 4 * Callers, BatchMax: batchMax})
	if err != nil {
		b.Fatal(err)
	}
	defer grouped.Close(context.Background())
	bare := NewBareQueue(env.Store, env.Prefix+"_cell", batchMax)
	defer bare.Close()
	strategies := []strategy{
		{"a_naive_for_update", func(ctx context.Context, id int64, u string) error { _, err := svc.Open(ctx, id, u); return err }},
		{"b_optimistic_5_retries", func(ctx context.Context, id int64, u string) error {
			_, err := OpenOptimistic(ctx, env.Store, env.Prefix+"_cell", id, u, 5)
			return err
		}},
		{"c_fifo_queue", func(ctx context.Context, id int64, u string) error { _, err := single.Open(ctx, id, u); return err }},
		{"d_queue_group_commit", func(ctx context.Context, id int64, u string) error { _, err := grouped.Open(ctx, id, u); return err }},
		// The ceiling beside the project: the same batch bound over bare SQL.
		{"e_bare_sql_queue", bare.Open},
	}
	for _, s := range strategies {
		b.Run(s.name, func(b *testing.B) { runStrategy(b, env, svc, hot, s) })
	}
	printRatios(b)
}

var packetSeq atomic.Int64

// runStrategy opens fresh hot packets b.N times from Callers goroutines and reports opens/s,
// failed opens, p99 latency and machine CPU.
func runStrategy(b *testing.B, env *storetest.Env, svc *packet.Service, hot int, s strategy) {
	db := env.DB
	ctx := context.Background()
	ids := make([]int64, hot)
	for i := range ids {
		req := fmt.Sprintf("bench-%d", packetSeq.Add(1))
		total := int64(b.N+Callers) * 100
		p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "bencher", RequestID: req, TotalCents: total, Count: b.N + Callers, Kind: packet.KindRandom}, -1)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: req, AmountCents: total}); err != nil {
			b.Fatal(err)
		}
		ids[i] = p.ID
	}
	var failed, ok atomic.Int64
	var lmu sync.Mutex
	var lat []time.Duration
	var worker atomic.Int64
	st0 := readStatus(b, db)
	cpu0 := cpustat.Read()
	dbPid, appPid := env.MariaDB.Process.Pid(), os.Getpid()
	db0, _ := cpustat.ProcCPU(dbPid)
	app0, _ := cpustat.ProcCPU(appPid)
	b.SetParallelism((Callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		w := worker.Add(1)
		local := make([]time.Duration, 0, 1024)
		n := 0
		for pb.Next() {
			n++
			id := ids[(int(w)+n)%hot]
			u := "w" + strconv.FormatInt(w, 10) + "-" + strconv.Itoa(n)
			t0 := time.Now()
			err := s.open(ctx, id, u)
			local = append(local, time.Since(t0))
			if err != nil {
				failed.Add(1)
				if !errors.Is(err, ErrConflict) {
					b.Errorf("%s: %v", s.name, err)
				}
				continue
			}
			ok.Add(1)
		}
		lmu.Lock()
		lat = append(lat, local...)
		lmu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpustat.Busy(cpu0, cpustat.Read())
	db1, _ := cpustat.ProcCPU(dbPid)
	app1, _ := cpustat.ProcCPU(appPid)
	st1 := readStatus(b, db)
	slices.Sort(lat)
	var p99 time.Duration
	if len(lat) > 0 {
		p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	r := result{opensPerSec: float64(ok.Load()) / elapsed.Seconds(), failed: failed.Load(), p99: p99, cpu: cpu}
	// The two status reads themselves are a statement each, and the commit counter misses
	// autocommit statements; both are noise against thousands of batches.
	if n := ok.Load(); n > 0 {
		r.dbPerOpen, r.appPerOpen = (db1-db0)/time.Duration(n), (app1-app0)/time.Duration(n)
	}
	if tx := st1.commits - st0.commits; tx > 0 {
		r.opensPerTx = float64(ok.Load()) / float64(tx)
		r.stmtsPerTx = float64(st1.questions-st0.questions) / float64(tx)
	}
	b.ReportMetric(r.opensPerSec, "opens/s")
	b.ReportMetric(float64(r.failed), "failed")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(cpu*100, "cpu%")
	b.ReportMetric(r.opensPerTx, "opens/tx")
	b.ReportMetric(r.stmtsPerTx, "stmts/tx")
	b.ReportMetric(float64(r.dbPerOpen.Nanoseconds())/1000, "db-µs/open")
	b.ReportMetric(float64(r.appPerOpen.Nanoseconds())/1000, "app-µs/open")
	resultsMu.Lock()
	results[s.name] = r
	resultsMu.Unlock()
}

type status struct{ questions, commits int64 }

// readStatus reads the server's statement and commit counters: round trips per batch are
// what separates the group-commit path from the bare-SQL ceiling.
func readStatus(b *testing.B, db *sql.DB) status {
	rows, err := db.Query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_commit')")
	if err != nil {
		b.Fatalf("read status: %v", err)
	}
	defer rows.Close()
	var st status
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			b.Fatalf("read status: %v", err)
		}
		switch name {
		case "Questions":
			st.questions = v
		case "Com_commit":
			st.commits = v
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatalf("read status: %v", err)
	}
	return st
}

func printRatios(b *testing.B) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	printTable("hot-packet opens in process", []string{"a_naive_for_update", "b_optimistic_5_retries", "c_fifo_queue", "d_queue_group_commit", "e_bare_sql_queue"})
	if d, e := results["d_queue_group_commit"], results["e_bare_sql_queue"]; e.opensPerSec > 0 {
		fmt.Fprintf(os.Stdout, "d / e (group commit against the bare-SQL ceiling, same batch bound): %.2f\n", d.opensPerSec/e.opensPerSec)
	}
}

// printTable prints results of names with their ratio to the first.
func printTable(title string, names []string) {
	base, ok := results[names[0]]
	if !ok || base.opensPerSec == 0 {
		return
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%s, %d callers, GOMAXPROCS=%d\n", title, Callers, runtime.GOMAXPROCS(0))
	fmt.Fprintf(&sb, "%-26s %12s %8s %10s %6s %9s %9s %11s %12s %8s\n", "strategy", "opens/s", "failed", "p99", "cpu%", "opens/tx", "stmts/tx", "db µs/open", "app µs/open", "× first")
	for _, name := range names {
		r, ok := results[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&sb, "%-26s %12.0f %8d %10s %6.0f %9.1f %9.1f %11.1f %12.1f %8.2f\n", name, r.opensPerSec, r.failed, r.p99.Round(100*time.Microsecond), r.cpu*100, r.opensPerTx, r.stmtsPerTx,
			float64(r.dbPerOpen.Nanoseconds())/1000, float64(r.appPerOpen.Nanoseconds())/1000, r.opensPerSec/base.opensPerSec)
	}
	fmt.Fprint(os.Stdout, sb.String())
}

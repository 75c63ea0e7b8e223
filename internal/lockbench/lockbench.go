// Package lockbench runs the lock-strategy comparison of the money path at several
// concurrency levels: many callers open one hot packet through (a) one transaction per open
// with SELECT … FOR UPDATE, (b) optimistic version checks with retries, (c) the per-packet FIFO
// queue with one open per transaction, and (d) the queue with group commit. The strategies are
// the data plane's own code and its baselines — packet.Service.Open, baseline.OpenOptimistic,
// queue.Queue over baseline.Ungrouped and with BatchMax — on a private durable MariaDB this
// package starts, the same composition baseline's BenchmarkHotOpens measures at one level.
//
// It must never run against a SET's databases: it creates and drops its own schemas on a
// MariaDB of its own.
package lockbench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/idalloc"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/internal/cpustat"
	"github.com/redpacketset/redpacket/internal/lockbench/baseline"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// Strategies, in report order.
var Strategies = []Strategy{
	{Key: "naive", Label: "naive: one tx per open, SELECT … FOR UPDATE"},
	{Key: "optimistic", Label: "optimistic: version check, 5 retries"},
	{Key: "queue", Label: "FIFO queue, one open per tx"},
	{Key: "group", Label: "FIFO queue + group commit (≤128 opens per tx)"},
}

// Strategy names one way to serialise opens of a hot packet.
type Strategy struct{ Key, Label string }

// Config of a comparison run.
type Config struct {
	Levels   []int         // concurrent openers; default 8, 32, 128, 256
	Duration time.Duration // per strategy and level; default 5 s
	Dir      string        // MariaDB directory; default a temp dir removed afterwards
	BinLog   bool          // log-bin + sync_binlog=1, as a primary with replicas runs
	Log      *slog.Logger
	// Progress, when set, hears about every finished point.
	Progress func(Point)
}

// Point is one strategy at one concurrency level.
type Point struct {
	Strategy    string
	Callers     int
	Opens       int64
	Failed      int64 // optimistic opens that lost every retry
	OpensPerSec float64
	P50, P99    time.Duration
	CPU         float64 // machine-wide busy fraction during the point
}

// Machine describes where the figures were measured.
type Machine struct {
	CPUModel   string
	CPUs       int
	MariaDB    string
	Kernel     string
	LoadBefore string // 1/5/15-minute load averages when the run started (a shared machine shows here)
	Durability string
	Started    time.Time
}

// Run measures every strategy at every level.
func Run(ctx context.Context, cfg Config) ([]Point, Machine, error) {
	if len(cfg.Levels) == 0 {
		cfg.Levels = []int{8, 32, 128, 256}
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := Machine{Started: time.Now().UTC(), CPUs: runtime.NumCPU(), CPUModel: cpustat.Model(), Kernel: kernel(), LoadBefore: cpustat.LoadAvg(),
		Durability: "innodb_flush_log_at_trx_commit=1"}
	if cfg.BinLog {
		m.Durability += ", log-bin with sync_binlog=1"
	}
	dir := cfg.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "rp-lockbench-")
		if err != nil {
			return nil, m, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	maxCallers := slices.Max(cfg.Levels)
	db := &testenv.MariaDBProcess{BinLog: cfg.BinLog, BufferPoolSize: "256M", MaxConnections: maxCallers + 200, Logger: cfg.Log}
	if err := db.Start(ctx, dir, 0); err != nil {
		return nil, m, err
	}
	defer func() { _ = db.Stop() }() // the figures are taken; a failed stop loses nothing

	env, err := newEnv(ctx, db.DSN(""), maxCallers, cfg.Log)
	if err != nil {
		return nil, m, err
	}
	defer env.close()
	_ = env.pool.QueryRowContext(ctx, "SELECT VERSION()").Scan(&m.MariaDB)

	var points []Point
	for _, s := range Strategies {
		for _, n := range cfg.Levels {
			if err := ctx.Err(); err != nil {
				return points, m, err
			}
			p, err := env.measure(ctx, s.Key, n, cfg.Duration)
			if err != nil {
				return points, m, fmt.Errorf("%s at %d callers: %w", s.Key, n, err)
			}
			points = append(points, p)
			if cfg.Progress != nil {
				cfg.Progress(p)
			}
		}
	}
	return points, m, nil
}

// env is the data plane stack the strategies share.
type env struct {
	pool    *sql.DB
	st      *store.Store
	svc     *packet.Service
	alloc   *idalloc.Allocator
	single  *queue.Queue
	grouped *queue.Queue
	cell    string
	seq     atomic.Int64
}

func newEnv(ctx context.Context, dsn string, callers int, log *slog.Logger) (*env, error) {
	pool, err := store.OpenDB(dsn, callers+64)
	if err != nil {
		return nil, err
	}
	const cell, ctl = "lb_cell", "lb_control"
	layout := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: "lb_db_"}
	st, err := store.New(pool, store.Config{Layout: layout, CellSchema: cell})
	if err != nil {
		pool.Close()
		return nil, err
	}
	if err := st.EnsureSchema(ctx, time.Now()); err != nil {
		pool.Close()
		return nil, err
	}
	if err := control.EnsureSchema(ctx, pool, ctl); err != nil {
		pool.Close()
		return nil, err
	}
	alloc, err := idalloc.NewAllocator(ctx, idalloc.AllocatorConfig{DB: pool, Control: ctl, Server: "lockbench", Layout: layout, SlotCount: ids.MaxSlots, Cell: "lockbench", Logger: log})
	if err != nil {
		pool.Close()
		return nil, err
	}
	limits := packet.DefaultLimits
	limits.MaxCount, limits.MaxTotalCents = 1<<30, 1<<50
	svc := packet.New(st, alloc, packet.Config{Limits: limits, Log: log})
	single, err := queue.New(baseline.Ungrouped{Opener: svc}, queue.Config{Workers: 32, Depth: 4 * callers})
	if err != nil {
		return nil, err
	}
	grouped, err := queue.New(svc, queue.Config{Workers: 32, Depth: 4 * callers, BatchMax: 128})
	if err != nil {
		return nil, err
	}
	return &env{pool: pool, st: st, svc: svc, alloc: alloc, single: single, grouped: grouped, cell: cell}, nil
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = e.single.Close(ctx)
	_ = e.grouped.Close(ctx)
	_ = e.alloc.Close(ctx)
	e.pool.Close()
}

func (e *env) opener(key string) func(ctx context.Context, id int64, user string) error {
	switch key {
	case "naive":
		return func(ctx context.Context, id int64, u string) error { _, err := e.svc.Open(ctx, id, u); return err }
	case "optimistic":
		return func(ctx context.Context, id int64, u string) error {
			_, err := baseline.OpenOptimistic(ctx, e.st, e.cell, id, u, 5)
			return err
		}
	case "queue":
		return func(ctx context.Context, id int64, u string) error { _, err := e.single.Open(ctx, id, u); return err }
	default:
		return func(ctx context.Context, id int64, u string) error { _, err := e.grouped.Open(ctx, id, u); return err }
	}
}

// measure runs callers goroutines opening one fresh hot packet for d.
func (e *env) measure(ctx context.Context, key string, callers int, d time.Duration) (Point, error) {
	req := "lockbench-" + strconv.FormatInt(e.seq.Add(1), 10)
	const shares = 5_000_000 // more than any strategy opens in a point here
	p, _, err := e.svc.Wrap(ctx, packet.WrapRequest{Sender: "lockbench", RequestID: req, TotalCents: shares * 100, Count: shares, Kind: packet.KindRandom}, -1)
	if err != nil {
		return Point{}, fmt.Errorf("wrap hot packet: %w", err)
	}
	if _, err := e.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: req, AmountCents: shares * 100}); err != nil {
		return Point{}, fmt.Errorf("pay hot packet: %w", err)
	}
	open := e.opener(key)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, callers)
	stop := make(chan struct{})
	cpu0 := cpustat.Read()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range callers {
		wg.Go(func() {
			local := make([]time.Duration, 0, 4096)
			for n := 0; ; n++ {
				select {
				case <-stop:
					lat[w] = local
					return
				default:
				}
				u := "c" + strconv.Itoa(w) + "-" + strconv.Itoa(n)
				t0 := time.Now()
				err := open(ctx, p.ID, u)
				local = append(local, time.Since(t0))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, baseline.ErrConflict):
					failed.Add(1)
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpustat.Busy(cpu0, cpustat.Read())
	if err, _ := firstErr.Load().(error); err != nil {
		return Point{}, fmt.Errorf("open: %w", err)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pt := Point{Strategy: key, Callers: callers, Opens: ok.Load(), Failed: failed.Load(),
		OpensPerSec: float64(ok.Load()) / elapsed.Seconds(), CPU: cpu}
	if len(all) > 0 {
		pt.P50 = all[min(len(all)-1, len(all)/2)]
		pt.P99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return pt, nil
}

func kernel() string {
	raw, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(raw))
}

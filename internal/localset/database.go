package localset

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redpacketset/redpacket/internal/dbfailover"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// cellDB is one cell's database instances and memcached, supervised like the servers (a crash
// is answered with a restart after a backoff), and for a replicated cell the failover Manager
// of internal/dbfailover — the same code the operator runs — reconciling every half second
// and at once when an instance dies.
type cellDB struct {
	s     *SET
	cell  string
	procs []*testenv.MariaDBProcess
	dirs  []string
	ports []int
	cache *testenv.MemcachedProcess
	mgr   *dbfailover.Manager // nil for a single instance
	log   *slog.Logger

	kick       chan struct{}
	rebuilding sync.Map // instance index → struct{}: its supervisor leaves it to the rebuild
	rebuilds   atomic.Int64
	stopping   atomic.Bool
	stopCh     chan struct{}
	wg         sync.WaitGroup
}

// reconcileEvery is how often a replicated cell's database is reconciled.
var reconcileEvery = 500 * time.Millisecond

// failoverPolicy times the local SET's failovers: a killed primary is seen at once (its
// connection is refused), so one second of unreachability is enough to act.
var failoverPolicy = dbfailover.Policy{FailoverAfter: time.Second, DegradeAfter: 15 * time.Second}

func (s *SET) newCellDB(cs *CellState, instances int) *cellDB {
	d := &cellDB{s: s, cell: cs.Name, log: s.log.With("cell", cs.Name), kick: make(chan struct{}, 1), stopCh: make(chan struct{}),
		cache: &testenv.MemcachedProcess{MemoryMB: int(s.set.Spec.Template.Memcached.MemoryMB), Logger: s.log}}
	base := filepath.Join(s.dataDir, "cells", cs.Name)
	for i, port := range cs.MySQLPorts()[:instances] {
		p := &testenv.MariaDBProcess{BufferPoolSize: s.opts.BufferPool, Logger: s.log}
		dir := filepath.Join(base, "mysql")
		if i > 0 {
			dir = filepath.Join(base, "mysql-"+strconv.Itoa(i))
		}
		if instances > 1 {
			p.BinLog, p.ServerID, p.ExtraArgs = true, i+1, dbfailover.InstanceFlags()
		}
		d.procs, d.dirs, d.ports = append(d.procs, p), append(d.dirs, dir), append(d.ports, port)
	}
	if instances > 1 {
		var eps []dbfailover.Endpoint
		for i, port := range d.ports {
			eps = append(eps, dbfailover.Endpoint{Addr: fmt.Sprintf("127.0.0.1:%d", port), ServerID: uint32(i + 1)})
		}
		d.mgr = &dbfailover.Manager{
			Cell: dbfailover.Cell{Name: cs.Name, Instances: eps, ReplUser: "root", AppUser: AppUser,
				AdminDSN: func(addr string) string { return "root@tcp(" + addr + ")/?timeout=2s&readTimeout=15s&writeTimeout=5s" }},
			Store: cellHistory{s: s, cell: cs.Name}, Policy: failoverPolicy, Log: d.log,
		}
	}
	return d
}

// checkUpgrade refuses to turn a single-instance cell into a replicated one in place: its
// datadir has no binary log to seed replicas from.
func (d *cellDB) checkUpgrade(cs *CellState) error {
	if d.mgr == nil || cs.Database != nil {
		return nil
	}
	if _, err := os.Stat(d.dirs[0]); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(d.dirs[1]); err == nil {
		return nil
	}
	return fmt.Errorf("cell %s: spec.template.mysql.replicas is %d but the cell's data was created with one instance, which has no binary log to seed replicas from; keep replicas: 1 for this data directory or start with a fresh -data (docs/operator.md, rebuilding a replica)", d.cell, len(d.procs))
}

// start brings up memcached and every instance, and for a replicated cell reconciles until
// the primary is writable, then makes sure the servers' user exists.
func (d *cellDB) start(ctx context.Context) error {
	errs := make([]error, len(d.procs))
	var wg sync.WaitGroup
	for i, p := range d.procs {
		wg.Go(func() { errs[i] = p.Start(ctx, d.dirs[i], d.ports[i]) })
	}
	cs, _ := d.s.state.Cell(d.cell)
	cacheErr := d.cache.Start(ctx, cs.MemcachedPort)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("cell %s: mariadb instance %d: %w", d.cell, i, err)
		}
	}
	if cacheErr != nil {
		return fmt.Errorf("cell %s: memcached (port %d): %w", d.cell, cs.MemcachedPort, cacheErr)
	}
	if d.mgr != nil {
		if err := d.waitPrimary(ctx); err != nil {
			return err
		}
	}
	for i := range d.procs {
		d.wg.Go(func() { d.superviseDB(i) })
	}
	d.wg.Go(d.superviseCache)
	if d.mgr != nil {
		d.wg.Go(d.reconcileLoop)
	}
	return nil
}

func (d *cellDB) waitPrimary(ctx context.Context) error {
	for {
		dec, err := d.mgr.Reconcile(ctx)
		if err == nil && dec.Ready {
			return d.ensureAppUser(ctx, dec.Primary)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cell %s: database not ready: %s %s (last error: %v)", d.cell, dec.Reason, dec.Message, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureAppUser creates the servers' user on the primary; it replicates to the others.
func (d *cellDB) ensureAppUser(ctx context.Context, primary int) error {
	db, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/?timeout=5s", d.ports[primary]))
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS '" + AppUser + "'@'127.0.0.1'",
		"GRANT " + dbfailover.AppGrants + " ON *.* TO '" + AppUser + "'@'127.0.0.1'",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("cell %s: database user %s: %w", d.cell, AppUser, err)
		}
	}
	return nil
}

func (d *cellDB) reconcileLoop() {
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	var lastErr time.Time
	for {
		select {
		case <-d.stopCh:
			return
		case <-t.C:
		case <-d.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		dec, err := d.mgr.Reconcile(ctx)
		if err != nil && time.Since(lastErr) > 5*time.Second {
			lastErr = time.Now()
			d.log.Warn("database reconcile", "err", err)
		}
		cancel()
		if err == nil && dec.Ready {
			d.rebuildRefused(dec.Primary)
		}
	}
}

// rebuildRefused starts, one at a time, the rebuild of an instance the failover logic refused.
func (d *cellDB) rebuildRefused(primary int) {
	cs := d.s.cellState(d.cell)
	if cs.Database == nil {
		return
	}
	for i := range cs.Database.Refused {
		if i == primary || i < 0 || i >= len(d.procs) {
			continue
		}
		if _, busy := d.rebuilding.LoadOrStore(i, struct{}{}); busy {
			return
		}
		d.wg.Go(func() {
			defer d.rebuilding.Delete(i)
			start := time.Now()
			if err := d.rebuild(i, primary); err != nil {
				d.log.Error("rebuild of a refused database instance failed; retrying on the next reconcile", "instance", i, "err", err)
				return
			}
			d.rebuilds.Add(1)
			d.log.Warn("refused database instance rebuilt from the primary", "instance", i, "primary", primary, "took", time.Since(start).Round(time.Millisecond))
			d.poke()
		})
		return
	}
}

// rebuild replaces instance i's data with a copy of the primary's: stop it, start it on a
// fresh datadir, load a consistent dump (with the GTID position it was taken at) without
// binary logging — the copy's rows must not carry this instance's server_id — and only then
// clear the refusal, so the Manager repoints it like any replica. A person does the same on
// Kubernetes (docs/operator.md, rebuilding a replica).
func (d *cellDB) rebuild(i, primary int) error {
	p := d.procs[i]
	if err := p.Stop(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	if d.stopping.Load() {
		return errors.New("SET stopping")
	}
	if err := os.RemoveAll(d.dirs[i]); err != nil {
		return fmt.Errorf("remove datadir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := p.Start(ctx, d.dirs[i], d.ports[i]); err != nil {
		return fmt.Errorf("start fresh: %w", err)
	}
	src, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", d.ports[primary]))
	if err != nil {
		return err
	}
	defer src.Close()
	rows, err := src.QueryContext(ctx, "SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ('mysql','information_schema','performance_schema','sys')")
	if err != nil {
		return fmt.Errorf("list databases: %w", err)
	}
	var dbs []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		dbs = append(dbs, n)
	}
	rows.Close()
	script := fmt.Sprintf("set -o pipefail; mariadb-dump -h127.0.0.1 -P%d -uroot --single-transaction --gtid --master-data=1 --databases %s | mariadb -h127.0.0.1 -P%d -uroot --init-command='SET SESSION sql_log_bin=0'",
		d.ports[primary], strings.Join(dbs, " "), d.ports[i])
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	// Out of the terminal's foreground group like every child that outlives a moment: a ^C
	// is localset's to act on (it stops the rebuild through ctx), not the copy's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("copy from the primary: %w: %s", err, out)
	}
	dst, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", d.ports[i]))
	if err != nil {
		return err
	}
	defer dst.Close()
	conn, err := dst.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, q := range []string{
		"SET SESSION sql_log_bin = 0",
		"CREATE USER IF NOT EXISTS '" + AppUser + "'@'127.0.0.1'",
		"GRANT " + dbfailover.AppGrants + " ON *.* TO '" + AppUser + "'@'127.0.0.1'",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	d.s.stateMu.Lock()
	defer d.s.stateMu.Unlock()
	cs, _ := d.s.state.Cell(d.cell)
	if cs.Database != nil {
		delete(cs.Database.Refused, i)
	}
	return d.s.state.Save(d.s.dataDir)
}

// superviseDB restarts instance i after it exits on its own. A dead primary of a replicated
// cell is held back until the failover has promoted another instance (or for at most
// holdPrimary, when no failover is possible and a restart in place is the only way back):
// restarted at once, it would come back read-only and make the Manager wait for it instead.
func (d *cellDB) superviseDB(i int) {
	p := d.procs[i]
	restarts := 0
	for {
		started := time.Now()
		select {
		case <-d.stopCh:
			return
		case <-p.Exited():
		}
		if d.stopping.Load() {
			return
		}
		if _, ok := d.rebuilding.Load(i); ok {
			// The rebuild stopped it and starts it again itself.
			for {
				if _, ok := d.rebuilding.Load(i); !ok || d.stopping.Load() {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if p.Running() {
				continue
			}
		}
		// A crash loop backs off; an instance that ran a while restarts after a second, or a
		// replicated cell with two instances would wait out a long backoff for its only replica.
		if time.Since(started) > dbCrashLoop {
			restarts = 0
		}
		backoff := min(time.Second<<min(restarts, 5), 30*time.Second)
		restarts++
		d.log.Warn("mariadbd exited; restarting", "instance", i, "addr", fmt.Sprintf("127.0.0.1:%d", d.ports[i]), "backoff", backoff,
			"log", filepath.Join(d.dirs[i], "mariadbd.log"))
		d.poke()
		if d.mgr != nil {
			d.holdWhilePrimary(i, holdPrimary)
		}
		for {
			select {
			case <-d.stopCh:
				return
			case <-time.After(backoff):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			err := p.Start(ctx, d.dirs[i], d.ports[i])
			cancel()
			if err == nil {
				d.poke()
				break
			}
			if d.stopping.Load() {
				return
			}
			d.log.Error("mariadbd restart failed", "instance", i, "err", err)
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

// dbCrashLoop: an instance that exits sooner than this after its start is crash-looping.
var dbCrashLoop = 10 * time.Second

// holdPrimary bounds how long a dead primary waits for the failover before it is restarted.
var holdPrimary = 20 * time.Second

func (d *cellDB) holdWhilePrimary(i int, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		cs := d.s.cellState(d.cell)
		if cs.PrimaryIndex() != i {
			return
		}
		if d.mgr.Last().Reason == dbfailover.ReasonSoleCopyLost {
			// It committed without a replica: no failover will come, only its return.
			d.log.Warn("dead primary holds the only copy of commits made alone; restarting it in place", "instance", i)
			return
		}
		select {
		case <-d.stopCh:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	d.log.Warn("no failover for the dead primary; restarting it in place", "instance", i, "reason", d.mgr.Last().Message)
}

func (d *cellDB) superviseCache() {
	restarts := 0
	for {
		started := time.Now()
		select {
		case <-d.stopCh:
			return
		case <-d.cache.Exited():
		}
		if d.stopping.Load() {
			return
		}
		if time.Since(started) > 30*time.Second {
			restarts = 0
		}
		backoff := min(time.Second<<min(restarts, 5), 30*time.Second)
		restarts++
		d.log.Warn("memcached exited; restarting", "port", d.cache.Port(), "backoff", backoff)
		for {
			select {
			case <-d.stopCh:
				return
			case <-time.After(backoff):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := d.cache.Start(ctx, d.cache.Port())
			cancel()
			if err == nil || d.stopping.Load() {
				break
			}
			d.log.Error("memcached restart failed", "err", err)
		}
	}
}

func (d *cellDB) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// stop ends supervision, then memcached and every instance (cleanly: SIGTERM).
func (d *cellDB) stop() error {
	if d.stopping.Swap(true) {
		return nil
	}
	close(d.stopCh)
	d.wg.Wait()
	if d.mgr != nil {
		d.mgr.Close()
	}
	errs := []error{d.cache.Stop()}
	for _, p := range d.procs {
		errs = append(errs, p.Stop())
	}
	return errors.Join(errs...)
}

// cellHistory stores a cell's dbfailover.History in state.json, written atomically before
// Save returns (a new primary opens only after its term is on disk).
type cellHistory struct {
	s    *SET
	cell string
}

func (h cellHistory) LoadHistory(context.Context) (dbfailover.History, error) {
	cs := h.s.cellState(h.cell)
	if cs.Database == nil {
		return dbfailover.History{}, nil
	}
	return cs.Database.Clone(), nil
}

func (h cellHistory) SaveHistory(_ context.Context, hist dbfailover.History) error {
	h.s.stateMu.Lock()
	defer h.s.stateMu.Unlock()
	cs, ok := h.s.state.Cell(h.cell)
	if !ok {
		return fmt.Errorf("no cell %s in the state", h.cell)
	}
	c := hist.Clone()
	cs.Database = &c
	return h.s.state.Save(h.s.dataDir)
}

// cellState is a copy of a cell's state, read under the state lock.
func (s *SET) cellState(cell string) CellState {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	cs, _ := s.state.Cell(cell)
	out := *cs
	if cs.Database != nil {
		h := cs.Database.Clone()
		out.Database = &h
	}
	return out
}

// StateSnapshot is a copy of the state that a running failover cannot change under the caller
// (State returns the live one, whose histories the supervisor rewrites).
func (s *SET) StateSnapshot() State {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	out := *s.state
	out.Cells = make([]CellState, len(s.state.Cells))
	for i, c := range s.state.Cells {
		out.Cells[i] = c
		if c.Database != nil {
			h := c.Database.Clone()
			out.Cells[i].Database = &h
		}
	}
	return out
}

// DatabaseRebuilds counts the refused instances of a cell rebuilt from its primary.
func (s *SET) DatabaseRebuilds(cell string) int64 {
	if d := s.dbs[cell]; d != nil {
		return d.rebuilds.Load()
	}
	return 0
}

package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MariaDBProcess is one private mariadbd: its datadir, socket, pid file and error log live
// under one directory, it listens on 127.0.0.1 only, and it runs with durable settings
// (innodb_flush_log_at_trx_commit=1; optionally a binary log with sync_binlog=1) because the
// money path and its benchmarks must pay for real fsyncs.
//
// Start initialises the datadir only when the directory holds none, so a persistent
// directory survives restarts with its data. The zero value is ready to use; set the
// exported fields before Start.
type MariaDBProcess struct {
	// BinLog turns on the binary log with sync_binlog=1, as a primary with replicas runs.
	BinLog bool
	// ServerID is server_id with BinLog; default 1. Instances replicating with each other
	// need distinct ones.
	ServerID int
	// BufferPoolSize is innodb_buffer_pool_size; default "64M" keeps many servers cheap.
	BufferPoolSize string
	// MaxConnections is max_connections; default 1000 for concurrency tests.
	MaxConnections int
	// ExtraArgs are appended to mariadbd's command line.
	ExtraArgs []string
	// Logger receives start/stop events; default slog.Default().
	Logger *slog.Logger

	mu      sync.Mutex
	dir     string
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// Layout of the process directory.
const (
	mariadbDataSubdir = "data"
	mariadbMarker     = "initialised" // written once the datadir is complete
	mariadbLog        = "mariadbd.log"
)

// Start launches mariadbd on dir (created if absent) and port (0 picks a free one), waiting
// until it accepts connections. An existing initialised datadir is reused as it is.
func (p *MariaDBProcess) Start(ctx context.Context, dir string, port int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A process that crashed on its own is not running: a supervisor starts it again.
	if p.cmd != nil && p.exited != nil {
		select {
		case <-p.exited:
			p.cmd = nil
		default:
		}
	}
	if p.cmd != nil {
		return fmt.Errorf("start mariadbd in %s: already running on port %d", p.dir, p.port)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("start mariadbd: dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("start mariadbd: create dir: %w", err)
	}
	if err := ensureDatadir(ctx, abs); err != nil {
		return err
	}
	autoPort := port == 0
	for attempt := 0; ; attempt++ {
		if autoPort {
			if port, err = FreePort(); err != nil {
				return err
			}
		}
		err = p.launch(ctx, abs, port)
		if err == nil {
			return nil
		}
		// Another process may have taken the port between FreePort and the bind.
		if !autoPort || !errors.Is(err, errExitedEarly) || attempt >= 2 {
			return err
		}
	}
}

func (p *MariaDBProcess) launch(ctx context.Context, dir string, port int) error {
	bin, err := lookPath("mariadbd", "mysqld")
	if err != nil {
		return fmt.Errorf("start mariadbd: %w", err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("start mariadbd: create tmpdir: %w", err)
	}
	logPath := filepath.Join(dir, mariadbLog)
	args := []string{
		"--no-defaults",
		"--datadir=" + filepath.Join(dir, mariadbDataSubdir),
		"--tmpdir=" + tmp,
		"--socket=" + socketPath(dir),
		"--pid-file=" + filepath.Join(dir, "mariadbd.pid"),
		"--log-error=" + logPath,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--skip-name-resolve",
		"--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_unicode_ci",
		"--innodb-flush-log-at-trx-commit=1",
		"--innodb-buffer-pool-size=" + orDefault(p.BufferPoolSize, "64M"),
		"--max-connections=" + strconv.Itoa(orDefaultInt(p.MaxConnections, 1000)),
		"--performance-schema=OFF",
		"--max-allowed-packet=64M",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	if p.BinLog {
		args = append(args,
			"--log-bin="+filepath.Join(dir, "binlog"),
			"--server-id="+strconv.Itoa(orDefaultInt(p.ServerID, 1)),
			"--sync-binlog=1",
			"--binlog-format=ROW",
		)
	} else {
		args = append(args, "--skip-log-bin")
	}
	args = append(args, p.ExtraArgs...)

	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start mariadbd: open log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group keeps a terminal's ^C from killing it before the owner's
	// cleanup runs; Pdeathsig stops it if the owner dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mariadbd: %w", err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited, p.dir, p.port, p.waitErr = cmd, exited, dir, port, nil
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(exited)
	}()

	if err := waitMariaDB(ctx, p.dsnLocked(""), exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		p.cmd = nil
		return fmt.Errorf("start mariadbd on 127.0.0.1:%d (dir %s): %w\n--- %s (tail) ---\n%s",
			port, dir, err, logPath, tailFile(logPath, 3000))
	}
	p.logger().Info("mariadbd started", "addr", p.addrLocked(), "dir", dir, "binlog", p.BinLog)
	return nil
}

// waitMariaDB polls until a connection succeeds, the process exits, or the deadline passes.
func waitMariaDB(ctx context.Context, dsn string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		lastErr = db.PingContext(pctx)
		pcancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return errExitedEarly
		case <-ctx.Done():
			return fmt.Errorf("not accepting connections: %w (last error: %v)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// Stop shuts mariadbd down cleanly (SIGTERM), escalating to SIGKILL after two minutes.
// Stopping a stopped process is a no-op.
func (p *MariaDBProcess) Stop() error {
	return p.signal(syscall.SIGTERM, 2*time.Minute)
}

// Kill ends mariadbd with SIGKILL, as a crash would; a later Start runs crash recovery.
func (p *MariaDBProcess) Kill() error {
	return p.signal(syscall.SIGKILL, time.Minute)
}

func (p *MariaDBProcess) signal(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal mariadbd %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-exited:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-exited
	}
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
	p.logger().Info("mariadbd stopped", "addr", fmt.Sprintf("127.0.0.1:%d", p.port), "signal", sig.String())
	return nil
}

// Restart stops the process (if running) and starts it again on the same dir and port.
func (p *MariaDBProcess) Restart(ctx context.Context) error {
	p.mu.Lock()
	dir, port := p.dir, p.port
	p.mu.Unlock()
	if dir == "" {
		return errors.New("restart mariadbd: never started")
	}
	if err := p.Stop(); err != nil {
		return err
	}
	return p.Start(ctx, dir, port)
}

// Exited is closed when the current process ends, by a stop or a crash (nil before Start).
func (p *MariaDBProcess) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// Running reports whether the process is up (as far as this handle knows).
func (p *MariaDBProcess) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Dir is the process directory given to Start.
func (p *MariaDBProcess) Dir() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dir
}

// Port is the TCP port it listens on.
func (p *MariaDBProcess) Port() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// Pid is the running server's process ID, 0 when it is not running (benchmarks read its CPU
// time from /proc).
func (p *MariaDBProcess) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Addr is host:port.
func (p *MariaDBProcess) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrLocked()
}

// DSN is a go-sql-driver/mysql DSN for root on the given database ("" for none), with
// parseTime and client-side interpolation (one round trip per statement).
func (p *MariaDBProcess) DSN(database string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dsnLocked(database)
}

func (p *MariaDBProcess) addrLocked() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

func (p *MariaDBProcess) dsnLocked(database string) string {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "tcp"
	cfg.Addr = p.addrLocked()
	cfg.DBName = database
	cfg.ParseTime = true
	cfg.InterpolateParams = true
	cfg.Loc = time.UTC
	cfg.Timeout = 5 * time.Second
	return cfg.FormatDSN()
}

func (p *MariaDBProcess) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

// socketPath keeps the unix socket path under the kernel's 108-byte limit even when dir is
// a long test temp dir; nothing in the project connects through it.
func socketPath(dir string) string {
	p := filepath.Join(dir, "mariadbd.sock")
	if len(p) < 100 {
		return p
	}
	h := fnv.New64a()
	h.Write([]byte(dir))
	return filepath.Join(os.TempDir(), fmt.Sprintf("rp-mdb-%x.sock", h.Sum64()))
}

// ensureDatadir initialises dir/data unless a complete one is there. A half-written one (no
// marker) is discarded: it can only come from an interrupted initialisation.
func ensureDatadir(ctx context.Context, dir string) error {
	data := filepath.Join(dir, mariadbDataSubdir)
	marker := filepath.Join(dir, mariadbMarker)
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	if err := os.RemoveAll(data); err != nil {
		return fmt.Errorf("init mariadb datadir: remove partial %s: %w", data, err)
	}
	tmpl, err := datadirTemplate(ctx)
	if err != nil {
		return err
	}
	// cp keeps sparse files and may reflink; a fresh datadir from the template is the same
	// as a fresh mariadb-install-db run, minus ~4 s.
	out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", tmpl, data).CombinedOutput()
	if err != nil {
		return fmt.Errorf("init mariadb datadir: copy template: %w: %s", err, out)
	}
	if err := os.WriteFile(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("init mariadb datadir: write marker: %w", err)
	}
	return nil
}

var templateMu sync.Mutex

// datadirTemplate returns a pristine datadir made by mariadb-install-db for the installed
// server version, creating it once per machine under the temp dir. Concurrent test binaries
// race benignly: each builds in a private dir and the first rename wins.
func datadirTemplate(ctx context.Context) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	server, err := lookPath("mariadbd", "mysqld")
	if err != nil {
		return "", fmt.Errorf("init mariadb datadir: %w", err)
	}
	st, err := os.Stat(server)
	if err != nil {
		return "", fmt.Errorf("init mariadb datadir: %w", err)
	}
	root := filepath.Join(os.TempDir(), fmt.Sprintf("rp-testenv-%d", os.Geteuid()))
	final := filepath.Join(root, fmt.Sprintf("mariadb-datadir-%d-%d", st.Size(), st.ModTime().Unix()))
	if _, err := os.Stat(filepath.Join(final, ".rp-complete")); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("init mariadb datadir: %w", err)
	}
	work, err := os.MkdirTemp(root, "building-")
	if err != nil {
		return "", fmt.Errorf("init mariadb datadir: %w", err)
	}
	defer os.RemoveAll(work)
	data := filepath.Join(work, "data")
	if err := installDB(ctx, data); err != nil {
		return "", err
	}
	// The marker lives inside the template; a stray file in a datadir is harmless.
	if err := os.WriteFile(filepath.Join(data, ".rp-complete"), nil, 0o600); err != nil {
		return "", fmt.Errorf("init mariadb datadir: %w", err)
	}
	if err := os.Rename(data, final); err != nil {
		if _, statErr := os.Stat(filepath.Join(final, ".rp-complete")); statErr == nil {
			return final, nil // another process won the race
		}
		// A stale, incomplete template: replace it.
		_ = os.RemoveAll(final)
		if err := os.Rename(data, final); err != nil {
			return "", fmt.Errorf("init mariadb datadir: install template: %w", err)
		}
	}
	return final, nil
}

func installDB(ctx context.Context, data string) error {
	bin, err := lookPath("mariadb-install-db", "mysql_install_db")
	if err != nil {
		return fmt.Errorf("init mariadb datadir: %w", err)
	}
	args := []string{
		"--no-defaults",
		"--datadir=" + data,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		// Creates root@127.0.0.1 as well, which is what TCP clients are seen as under
		// --skip-name-resolve.
		"--skip-name-resolve",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("init mariadb datadir: %s: %w\n%s", bin, err, out)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orDefaultInt(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

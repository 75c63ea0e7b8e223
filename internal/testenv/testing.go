package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver for database/sql
)

// MariaDB is a private MariaDB server owned by a test (StartMariaDB) or shared by every test
// of one test binary (SharedMariaDB).
type MariaDB struct {
	Process *MariaDBProcess

	tb     testing.TB // the owner; nil for the shared server
	admin  *sql.DB
	shared bool
}

// MariaDBOption adjusts the server before it starts.
type MariaDBOption func(*MariaDBProcess)

// WithBinlog turns on the binary log with sync_binlog=1.
func WithBinlog() MariaDBOption { return func(p *MariaDBProcess) { p.BinLog = true } }

// WithBufferPool sets innodb_buffer_pool_size, e.g. "256M" for benchmarks.
func WithBufferPool(size string) MariaDBOption {
	return func(p *MariaDBProcess) { p.BufferPoolSize = size }
}

// WithMaxConnections sets max_connections.
func WithMaxConnections(n int) MariaDBOption {
	return func(p *MariaDBProcess) { p.MaxConnections = n }
}

// WithArgs appends raw mariadbd arguments.
func WithArgs(args ...string) MariaDBOption {
	return func(p *MariaDBProcess) { p.ExtraArgs = append(p.ExtraArgs, args...) }
}

// StartMariaDB starts a fresh server in a temp dir for this test and stops it (and removes
// the dir) when the test ends. It fails the test, never skips it, when MariaDB is missing.
func StartMariaDB(tb testing.TB, opts ...MariaDBOption) *MariaDB {
	tb.Helper()
	dir := tb.TempDir()
	m, err := startMariaDB(dir, opts)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	m.tb = tb
	tb.Cleanup(func() {
		m.admin.Close()
		if err := m.Process.Stop(); err != nil {
			tb.Errorf("testenv: stop mariadbd: %v", err)
		}
	})
	return m
}

func startMariaDB(dir string, opts []MariaDBOption) (*MariaDB, error) {
	p := &MariaDBProcess{}
	for _, o := range opts {
		o(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := p.Start(ctx, dir, 0); err != nil {
		return nil, err
	}
	admin, err := sql.Open("mysql", p.DSN(""))
	if err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("open admin connection: %w", err)
	}
	admin.SetMaxIdleConns(2)
	return &MariaDB{Process: p, admin: admin}, nil
}

// The shared server of this test binary, started by the first SharedMariaDB call.
var (
	mainActive atomic.Bool
	sharedOnce sync.Once
	sharedDB   *MariaDB
	sharedDir  string
	sharedErr  error
)

// SharedMariaDB returns the one server of this test binary, starting it on first use; tests
// isolate themselves with CreateDatabase. The package's TestMain must call Main, which stops
// the server after all tests. Tests must not Stop, Kill or Restart it.
func SharedMariaDB(tb testing.TB) *MariaDB {
	tb.Helper()
	if !mainActive.Load() {
		tb.Fatal("testenv: SharedMariaDB needs the package's TestMain to call testenv.Main(m)")
	}
	sharedOnce.Do(func() {
		sweepAbandonedShared()
		sharedDir, sharedErr = os.MkdirTemp("", sharedPrefix)
		if sharedErr != nil {
			return
		}
		if sharedErr = os.WriteFile(filepath.Join(sharedDir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); sharedErr != nil {
			return
		}
		sharedDB, sharedErr = startMariaDB(sharedDir, nil)
		if sharedDB != nil {
			sharedDB.shared = true
		}
	})
	if sharedErr != nil {
		tb.Fatalf("testenv: shared mariadb: %v", sharedErr)
	}
	return sharedDB
}

const (
	sharedPrefix = "rp-shared-mariadb-"
	ownerFile    = "owner.pid"
)

// sweepAbandonedShared removes shared server dirs whose test binary died without running
// Main's cleanup (a test timeout, a kill): their mariadbd already got SIGTERM through
// Pdeathsig, but the datadir copies would pile up in the temp dir.
func sweepAbandonedShared() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), sharedPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue // being created right now, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// Main runs the tests of a package that uses SharedMariaDB and stops the shared server
// afterwards:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	mainActive.Store(true)
	code := m.Run()
	if sharedDB != nil {
		sharedDB.admin.Close()
		if err := sharedDB.Process.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stop shared mariadbd: %v\n", err)
			code = 1
		}
	}
	if sharedDir != "" {
		_ = os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

// DSN is the go-sql-driver DSN for a database on this server ("" for none).
func (m *MariaDB) DSN(database string) string { return m.Process.DSN(database) }

// Addr is 127.0.0.1:port.
func (m *MariaDB) Addr() string { return m.Process.Addr() }

// Stop shuts the server down cleanly; Restart brings it back on the same data.
func (m *MariaDB) Stop() {
	m.ownerHelper()
	if err := m.Process.Stop(); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// Kill ends the server with SIGKILL, as a crash; Restart runs crash recovery.
func (m *MariaDB) Kill() {
	m.ownerHelper()
	if err := m.Process.Kill(); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// Restart stops the server if it runs and starts it again on the same datadir and port.
func (m *MariaDB) Restart() {
	m.ownerHelper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := m.Process.Restart(ctx); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

func (m *MariaDB) ownerHelper() {
	if m.shared {
		panic("testenv: the shared MariaDB must not be stopped or restarted by a test; use StartMariaDB")
	}
	m.tb.Helper()
}

var dbSeq atomic.Int64

// UniqueName returns a fresh identifier that starts with prefix, usable as a schema name or
// as a schema prefix (at most 40 characters, so suffixes still fit MySQL's 64).
func UniqueName(prefix string) string {
	prefix = strings.ToLower(unsafeIdent.ReplaceAllString(prefix, "_"))
	if len(prefix) > 24 {
		prefix = prefix[:24]
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s_%d_%s", prefix, dbSeq.Add(1), hex.EncodeToString(b[:]))
}

var unsafeIdent = regexp.MustCompile(`[^A-Za-z0-9_]`)

// CreateDatabase creates an empty schema with a unique name starting with prefix and drops
// it when the test ends, so tests can share one server.
func (m *MariaDB) CreateDatabase(tb testing.TB, prefix string) string {
	tb.Helper()
	name := UniqueName(prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.admin.ExecContext(ctx, "CREATE DATABASE `"+name+"`"); err != nil {
		tb.Fatalf("testenv: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := m.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`"); err != nil && m.Process.Running() {
			tb.Logf("testenv: drop database %s: %v", name, err)
		}
	})
	return name
}

// OpenDB opens a *sql.DB on a database of this server and closes it when the test ends.
func (m *MariaDB) OpenDB(tb testing.TB, database string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("mysql", m.DSN(database))
	if err != nil {
		tb.Fatalf("testenv: open %s: %v", database, err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// Memcached is a private memcached owned by a test.
type Memcached struct {
	Process *MemcachedProcess
	tb      testing.TB
}

// StartMemcached starts memcached on a free port for this test and stops it when the test
// ends. It fails the test, never skips it, when memcached is missing.
func StartMemcached(tb testing.TB) *Memcached {
	tb.Helper()
	p := &MemcachedProcess{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Start(ctx, 0); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if err := p.Stop(); err != nil {
			tb.Errorf("testenv: stop memcached: %v", err)
		}
	})
	return &Memcached{Process: p, tb: tb}
}

// Addr is 127.0.0.1:port.
func (m *Memcached) Addr() string { return m.Process.Addr() }

// Kill ends memcached with SIGKILL; Restart brings it back, empty, on the same port.
func (m *Memcached) Kill() {
	m.tb.Helper()
	if err := m.Process.Kill(); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// Restart starts memcached again on the same port (stopping it first if it runs).
func (m *Memcached) Restart() {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Process.Restart(ctx); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// StartReplicaSet starts n MariaDB processes for one replicated cell, each with its binary
// log, the server_id serverID gives its index, and args (the failover settings), all in
// parallel; they are killed when the test ends. Replication itself is left to the code under
// test.
func StartReplicaSet(tb testing.TB, n int, serverID func(i int) int, args []string) []*MariaDBProcess {
	tb.Helper()
	base := tb.TempDir()
	procs := make([]*MariaDBProcess, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range procs {
		procs[i] = &MariaDBProcess{BinLog: true, ServerID: serverID(i), BufferPoolSize: "32M", MaxConnections: 100, ExtraArgs: args}
		wg.Go(func() { errs[i] = procs[i].Start(context.Background(), filepath.Join(base, strconv.Itoa(i)), 0) })
	}
	wg.Wait()
	tb.Cleanup(func() {
		for _, p := range procs {
			_ = p.Kill()
		}
	})
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("testenv: instance %d: %v", i, err)
		}
	}
	return procs
}

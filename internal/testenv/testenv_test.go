package testenv_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func variable(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var n, v string
	if err := db.QueryRow("SHOW GLOBAL VARIABLES LIKE ?", name).Scan(&n, &v); err != nil {
		t.Fatalf("show %s: %v", name, err)
	}
	return v
}

func TestSharedMariaDBSettingsAndIsolation(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	if m2 := testenv.SharedMariaDB(t); m2 != m {
		t.Fatal("SharedMariaDB started a second server")
	}
	a := m.CreateDatabase(t, "iso-test")
	b := m.CreateDatabase(t, "iso-test")
	if a == b {
		t.Fatalf("CreateDatabase returned %q twice", a)
	}
	db := m.OpenDB(t, a)
	for name, want := range map[string]string{
		"innodb_flush_log_at_trx_commit": "1",
		"max_connections":                "1000",
		"bind_address":                   "127.0.0.1",
		"log_bin":                        "OFF",
	} {
		if got := variable(t, db, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, err := db.Exec("CREATE TABLE t (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := db.Exec("INSERT INTO t VALUES (?, ?)", 1, now); err != nil {
		t.Fatal(err)
	}
	var got time.Time // parseTime must be on for this scan to work
	if err := db.QueryRow("SELECT at FROM t WHERE id = 1").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !got.Equal(now) {
		t.Errorf("round trip time %v, want %v", got, now)
	}
	var n int
	if err := m.OpenDB(t, b).QueryRow("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()").Scan(&n); err != nil || n != 0 {
		t.Errorf("second database not empty: n=%d err=%v", n, err)
	}
}

func TestMariaDBKillRestartKeepsCommittedData(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.WithBinlog())
	name := m.CreateDatabase(t, "crash")
	db := m.OpenDB(t, name)
	if v := variable(t, db, "sync_binlog"); v != "1" {
		t.Errorf("sync_binlog = %q, want 1", v)
	}
	if v := variable(t, db, "log_bin"); v != "ON" {
		t.Errorf("log_bin = %q, want ON", v)
	}
	if _, err := db.Exec("CREATE TABLE t (id BIGINT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 50; i++ {
		if _, err := db.Exec("INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
	}
	addr := m.Addr()
	m.Kill()
	if err := db.Ping(); err == nil {
		t.Fatal("ping succeeded after Kill")
	}
	m.Restart()
	if m.Addr() != addr {
		t.Errorf("restart moved from %s to %s", addr, m.Addr())
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 50 {
		t.Errorf("after crash recovery %d rows, want 50", n)
	}
	m.Stop()
	m.Restart()
	if err := db.QueryRow("SELECT COUNT(*) FROM t").Scan(&n); err != nil || n != 50 {
		t.Errorf("after clean restart n=%d err=%v", n, err)
	}
}

func TestMariaDBProcessReusesPersistentDir(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	p := &testenv.MariaDBProcess{}
	if err := p.Start(ctx, dir, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	if err := p.Start(ctx, dir, 0); err == nil {
		t.Fatal("second Start on a running process succeeded")
	}
	db, err := sql.Open("mysql", p.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE keep"); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}

	// A new handle on the same dir, as a local SET restarted from scratch would do.
	q := &testenv.MariaDBProcess{}
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx, dir, port); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Stop() })
	if q.Port() != port {
		t.Errorf("port %d, want %d", q.Port(), port)
	}
	db2, err := sql.Open("mysql", q.DSN("keep"))
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if err := db2.Ping(); err != nil {
		t.Fatalf("database made before the restart is gone: %v", err)
	}
}

func TestMemcachedKillRestart(t *testing.T) {
	m := testenv.StartMemcached(t)
	c := memcache.New(m.Addr())
	c.Timeout = 200 * time.Millisecond
	if err := c.Set(&memcache.Item{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if it, err := c.Get("k"); err != nil || string(it.Value) != "v" {
		t.Fatalf("get: %v %v", it, err)
	}
	m.Kill()
	if _, err := c.Get("k"); err == nil {
		t.Fatal("get succeeded with memcached killed")
	}
	m.Restart()
	// A restarted memcached is empty; pooled connections to the dead one may fail once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Get("k")
		if errors.Is(err, memcache.ErrCacheMiss) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restart: %v", err)
		}
	}
}

func TestEventually(t *testing.T) {
	n := 0
	testenv.Eventually(t, time.Second, "the third call", func() error {
		if n++; n < 3 {
			return fmt.Errorf("call %d", n)
		}
		return nil
	})
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	testenv.Eventually(t, time.Second, "a value", testenv.Received(ch))
	testenv.Eventually(t, time.Second, "true", testenv.Holds(func() bool { return true }))
}

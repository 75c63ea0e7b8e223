package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/internal/testenv"
)

// passwordUser creates a MariaDB user that can log in only with a password and returns a DSN
// for it without the password, the way the operator passes it.
func passwordUser(t *testing.T, m *testenv.MariaDB) (dsnNoPassword, password string) {
	t.Helper()
	root := m.OpenDB(t, "")
	user := testenv.UniqueName("pw")
	password = "s3cret-" + user
	for _, q := range []string{
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", user, password),
		fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO '%s'@'%%'", user),
	} {
		if _, err := root.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = root.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)) })
	cfg, err := mysql.ParseDSN(m.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Passwd = user, ""
	return cfg.FormatDSN(), password
}

func pingDSN(t *testing.T, dsn string) error {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// TestPasswordOutsideArgv: the database password comes from a file or the environment and is
// merged into the DSN, so no flag has to carry it (a flag is in /proc/PID/cmdline for every
// user of the node).
func TestPasswordOutsideArgv(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	dsn, password := passwordUser(t, m)
	if err := pingDSN(t, dsn); err == nil {
		t.Fatal("the user logs in without its password; the test proves nothing")
	}

	t.Run("from a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "password")
		// A Secret mounted as a file may end in a newline; it is not part of the password.
		if err := os.WriteFile(file, []byte(password+"\n"), 0o400); err != nil {
			t.Fatal(err)
		}
		args := []string{"-mysql-dsn", dsn, "-mysql-password-file", file}
		cfg, err := parseFlags(args)
		if err != nil {
			t.Fatal(err)
		}
		if err := pingDSN(t, cfg.MySQLDSN); err != nil {
			t.Fatalf("DSN with the file's password: %v", err)
		}
		if strings.Contains(strings.Join(args, " "), password) {
			t.Fatal("the password is in argv")
		}
	})

	t.Run("from the environment", func(t *testing.T) {
		t.Setenv(passwordEnv, password)
		cfg, err := parseFlags([]string{"-mysql-dsn", dsn})
		if err != nil {
			t.Fatal(err)
		}
		if err := pingDSN(t, cfg.MySQLDSN); err != nil {
			t.Fatalf("DSN with %s: %v", passwordEnv, err)
		}
	})

	t.Run("a bad source is an error, not a password-less login", func(t *testing.T) {
		if _, err := parseFlags([]string{"-mysql-dsn", dsn, "-mysql-password-file", filepath.Join(t.TempDir(), "missing")}); err == nil {
			t.Error("a missing password file was accepted")
		}
		empty := filepath.Join(t.TempDir(), "empty")
		if err := os.WriteFile(empty, []byte("\n"), 0o400); err != nil {
			t.Fatal(err)
		}
		if _, err := parseFlags([]string{"-mysql-dsn", dsn, "-mysql-password-file", empty}); err == nil {
			t.Error("an empty password file was accepted")
		}
		withPassword := strings.Replace(dsn, "@", ":inline@", 1)
		if _, err := parseFlags([]string{"-mysql-dsn", withPassword, "-mysql-password-file", empty}); err == nil {
			t.Error("a DSN with a password and a password file: which one wins is not guessed")
		}
	})
}

// TestReadinessIncludesMemcached: with -ready-memcached the server is ready only while the
// memcached beside it answers, which is how the pod's readiness covers its sidecar (no kubelet
// probe can reach memcached on the pod's loopback).
func TestReadinessIncludesMemcached(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	mc := testenv.StartMemcached(t)
	cfg := testConfig(t, m)
	cfg.Memcached = mc.Addr()
	cfg.ReadyMemcached = true
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.Default(), ready) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		db := m.OpenDB(t, "")
		for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
		}
	}()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("server did not start")
	}
	readyz := func() (int, string) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitReady := func(want int) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body := readyz()
			if code == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz %d %s, want %d", code, body, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitReady(http.StatusOK)
	mc.Kill()
	if body := waitReady(http.StatusServiceUnavailable); !strings.Contains(body, "memcached") {
		t.Errorf("unready without naming memcached: %s", body)
	}
	if code, _ := readyz(); code != http.StatusServiceUnavailable {
		t.Error("ready again with memcached still down")
	}
	mc.Restart()
	waitReady(http.StatusOK)
	// Liveness never depends on memcached: a down cache must not get the server restarted.
	mc.Kill()
	waitReady(http.StatusServiceUnavailable)
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz %d with memcached down", resp.StatusCode)
	}
}

// TestReadyMemcachedNeedsAnAddress: the flag without a memcached would make the server never
// ready (or, worse, silently ignore it).
func TestReadyMemcachedNeedsAnAddress(t *testing.T) {
	if _, err := parseFlags([]string{"-memcached", "", "-ready-memcached"}); err == nil {
		t.Error("-ready-memcached accepted without -memcached")
	}
}

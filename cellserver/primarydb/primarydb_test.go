package primarydb_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/cellserver/primarydb"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/internal/dbfailover"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestFollowsTheWritableInstance runs the connector over two real instances: it writes to the
// writable one, moves to the other when the first is fenced (the refused statement is retried,
// never lost or doubled), reports a bad connection when none is writable (the API's 503), and
// never reports a COMMIT whose connection died as a success.
func TestFollowsTheWritableInstance(t *testing.T) {
	a, b := testenv.StartMariaDB(t), testenv.StartMariaDB(t)
	rootA, rootB := a.OpenDB(t, ""), b.OpenDB(t, "")
	for _, root := range []*sql.DB{rootA, rootB} {
		for _, q := range []string{
			"CREATE USER IF NOT EXISTS 'pdb_app'@'127.0.0.1'",
			"GRANT " + dbfailover.AppGrants + " ON *.* TO 'pdb_app'@'127.0.0.1'",
			"CREATE DATABASE IF NOT EXISTS pdb",
			"CREATE TABLE IF NOT EXISTS pdb.t (id INT PRIMARY KEY) ENGINE=InnoDB",
		} {
			mustExec(t, root, q)
		}
	}
	t.Cleanup(func() {
		for _, root := range []*sql.DB{rootA, rootB} {
			_, _ = root.Exec("SET GLOBAL read_only = 0")
			_, _ = root.Exec("DROP DATABASE IF EXISTS pdb")
			_, _ = root.Exec("DROP USER IF EXISTS 'pdb_app'@'127.0.0.1'")
		}
	})
	mustExec(t, rootB, "SET GLOBAL read_only = 1")

	cfg, err := store.SessionConfig("pdb_app@tcp(127.0.0.1:1)/?timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := primarydb.New(cfg, []string{b.Addr(), a.Addr()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := store.OpenConnector(conn, 4)
	defer db.Close()
	mustExec(t, db, "INSERT INTO pdb.t VALUES (1)")
	if conn.Primary() != a.Addr() {
		t.Fatalf("primary %q, want the writable %s", conn.Primary(), a.Addr())
	}

	// Fence A, open B: the pooled connection to A is refused (nothing written) and the
	// statement is retried on a new connection, which finds B.
	mustExec(t, rootA, "SET GLOBAL read_only = 1")
	mustExec(t, rootB, "SET GLOBAL read_only = 0")
	mustExec(t, db, "INSERT INTO pdb.t VALUES (2)")
	if conn.Primary() != b.Addr() {
		t.Fatalf("primary %q after the switch, want %s", conn.Primary(), b.Addr())
	}
	for _, c := range []struct {
		root *sql.DB
		want int
	}{{rootA, 1}, {rootB, 1}} {
		var n int
		if err := c.root.QueryRow("SELECT COUNT(*) FROM pdb.t").Scan(&n); err != nil || n != c.want {
			t.Fatalf("rows %d (%v), want %d on each instance: a refused write must be neither lost nor doubled", n, err, c.want)
		}
	}

	// No instance writable (a failover in progress): a bad connection, which the API answers 503.
	mustExec(t, rootB, "SET GLOBAL read_only = 1")
	_, err = db.Exec("INSERT INTO pdb.t VALUES (3)")
	if !errors.Is(err, driver.ErrBadConn) {
		t.Fatalf("write with no writable instance: %v, want an error that is driver.ErrBadConn", err)
	}
	mustExec(t, rootB, "SET GLOBAL read_only = 0")

	// A COMMIT whose connection dies has an unknown outcome: it must be an error, never nil.
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO pdb.t VALUES (4)"); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := tx.QueryRow("SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, err := rootB.Exec("KILL ?", id); err != nil {
		t.Fatal(err)
	}
	err = tx.Commit()
	if err == nil {
		t.Fatal("COMMIT on a killed connection reported success")
	}
	if !errors.Is(err, driver.ErrBadConn) && !errors.Is(err, mysql.ErrInvalidConn) {
		var me *mysql.MySQLError
		if !errors.As(err, &me) || (me.Number != 2006 && me.Number != 2013 && me.Number != 1053) {
			t.Errorf("COMMIT on a killed connection: %v (%T), want a lost-connection error the API answers 503", err, err)
		}
	}
}

func mustExec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

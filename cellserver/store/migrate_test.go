package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// The DDL cells were created with before identifier columns became byte-exact: ASCII
// columns with the charset's default, case-insensitive collation.
const (
	oldPacketDDL = `CREATE TABLE %s (
  id BIGINT NOT NULL PRIMARY KEY,
  sender VARCHAR(64) CHARACTER SET ascii NOT NULL,
  request_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
  kind TINYINT NOT NULL,
  status TINYINT NOT NULL,
  total_cents BIGINT NOT NULL,
  share_count INT NOT NULL,
  remaining_cents BIGINT NOT NULL,
  remaining_count INT NOT NULL,
  refunded_cents BIGINT NOT NULL DEFAULT 0,
  grp VARCHAR(64) CHARACTER SET ascii NOT NULL DEFAULT '',
  greeting VARCHAR(128) NOT NULL DEFAULT '',
  payment_txn_id VARCHAR(64) CHARACTER SET ascii NULL,
  created_ms BIGINT NOT NULL,
  paid_ms BIGINT NOT NULL DEFAULT 0,
  expires_ms BIGINT NOT NULL,
  settled_ms BIGINT NOT NULL DEFAULT 0,
  version BIGINT NOT NULL DEFAULT 0,
  CONSTRAINT money_conserved CHECK (remaining_count >= 0 AND remaining_cents >= remaining_count
    AND refunded_cents >= 0 AND remaining_cents + refunded_cents <= total_cents)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`
	oldReceiptDDL = `CREATE TABLE %s (
  packet_id BIGINT NOT NULL,
  seq INT NOT NULL,
  user_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
  amount_cents BIGINT NOT NULL,
  opened_ms BIGINT NOT NULL,
  PRIMARY KEY (packet_id, seq),
  UNIQUE KEY packet_user (packet_id, user_id),
  CONSTRAINT share_positive CHECK (amount_cents >= 1)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`
)

var oldCellDDL = []string{
	`CREATE TABLE %s.wrap_requests (
  sender VARCHAR(64) CHARACTER SET ascii NOT NULL,
  request_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
  packet_id BIGINT NOT NULL,
  PRIMARY KEY (sender, request_id)
) ENGINE=InnoDB`,
	`CREATE TABLE %s.payments (
  payment_txn_id VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  packet_id BIGINT NOT NULL,
  amount_cents BIGINT NOT NULL
) ENGINE=InnoDB`,
	`CREATE TABLE %s.expiry (
  packet_id BIGINT NOT NULL PRIMARY KEY,
  expires_ms BIGINT NOT NULL,
  KEY due (expires_ms)
) ENGINE=InnoDB`,
	`CREATE TABLE %s.outbox (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  kind TINYINT NOT NULL,
  idem_key VARCHAR(100) CHARACTER SET ascii NOT NULL,
  packet_id BIGINT NOT NULL,
  account VARCHAR(64) CHARACTER SET ascii NOT NULL,
  amount_cents BIGINT NOT NULL,
  share_count INT NOT NULL DEFAULT 0,
  grp VARCHAR(64) CHARACTER SET ascii NOT NULL DEFAULT '',
  at_ms BIGINT NOT NULL,
  delivered TINYINT NOT NULL DEFAULT 0,
  attempts INT NOT NULL DEFAULT 0,
  next_ms BIGINT NOT NULL DEFAULT 0,
  last_error VARCHAR(255) NULL,
  UNIQUE KEY idem (idem_key),
  KEY pending (delivered, id)
) ENGINE=InnoDB`,
	`CREATE TABLE %s.history (
  user_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
  role TINYINT NOT NULL,
  packet_id BIGINT NOT NULL,
  at_ms BIGINT NOT NULL,
  amount_cents BIGINT NOT NULL,
  share_count INT NOT NULL DEFAULT 0,
  grp VARCHAR(64) CHARACTER SET ascii NOT NULL DEFAULT '',
  PRIMARY KEY (user_id, role, packet_id),
  KEY page (user_id, role, at_ms, packet_id)
) ENGINE=InnoDB`,
}

// oldCell creates a cell's schemas with the old DDL: cold tables and the day tables of the
// given days, as a cell running the previous release left them.
func oldCell(t *testing.T, db *sql.DB, layout shard.Layout, cell string, days ...time.Time) {
	t.Helper()
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Exec("DROP DATABASE IF EXISTS " + cell)
		for i := 0; i < layout.Databases; i++ {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + layout.DBName(i))
		}
	})
	exec("CREATE DATABASE " + cell)
	for _, ddl := range oldCellDDL {
		exec(fmt.Sprintf(ddl, cell))
	}
	for i := 0; i < layout.Databases; i++ {
		exec("CREATE DATABASE " + layout.DBName(i))
	}
	for _, tb := range layout.All() {
		db := layout.DBName(tb.DB)
		exec(fmt.Sprintf(oldPacketDDL, fmt.Sprintf("%s.t_%d_cold", db, tb.Table)))
		exec(fmt.Sprintf(oldReceiptDDL, fmt.Sprintf("%s.r_%d_cold", db, tb.Table)))
		for _, d := range days {
			exec(fmt.Sprintf(oldPacketDDL, layout.Physical("t", tb, d)))
			exec(fmt.Sprintf(oldReceiptDDL, layout.Physical("r", tb, d)))
		}
	}
}

var autoIncrement = regexp.MustCompile(` AUTO_INCREMENT=\d+`)

func showCreate(t *testing.T, db *sql.DB, table string) string {
	t.Helper()
	var name, ddl string
	if err := db.QueryRow("SHOW CREATE TABLE "+table).Scan(&name, &ddl); err != nil {
		t.Fatalf("show create table %s: %v", table, err)
	}
	return autoIncrement.ReplaceAllString(ddl, "")
}

func TestEnsureSchemaMigratesCaseInsensitiveCell(t *testing.T) {
	ctx := context.Background()
	m := testenv.SharedMariaDB(t)
	prefix := testenv.UniqueName("rp")
	layout := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: prefix + "_db_"}
	cell := prefix + "_cell"
	db, err := store.OpenDB(m.DSN(""), 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	now := time.Now()
	old := now.Add(-3 * 24 * time.Hour)
	oldCell(t, db, layout, cell, old, now, now.Add(24*time.Hour))

	reg := prometheus.NewRegistry()
	st, err := store.New(db, store.Config{Layout: layout, CellSchema: cell, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	clock := old
	nowFn := func() time.Time { return clock }
	svc := packet.New(st, &storetest.IDs{Now: nowFn}, packet.Config{Now: nowFn, Expiry: 7 * 24 * time.Hour})

	// Money the previous release stored: a packet in a day table three days old and one of
	// today, each opened by alice, and alice's history.
	wrapPayOpen := func(req, txn string) store.Packet {
		t.Helper()
		p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "Bob", RequestID: req, TotalCents: 1000, Count: 10, Kind: packet.KindFixed}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: txn, AmountCents: 1000}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Open(ctx, p.ID, "alice"); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p1 := wrapPayOpen("req-1", "TXN-1")
	clock = now
	p2 := wrapPayOpen("req-2", "TXN-2")
	if err := st.RecordHistory(ctx, store.HistoryItem{User: "alice", Role: store.RoleReceived, PacketID: p2.ID, At: now, AmountCents: 100}); err != nil {
		t.Fatal(err)
	}
	// The fixture really is the old behaviour: Alice finds alice's receive record.
	if r, err := st.Receipt(ctx, p1.ID, "Alice"); err != nil || r.User != "Alice" || r.AmountCents != 100 {
		t.Fatalf("old schema: receipt of Alice = %+v, %v; want alice's, as the old collation merged them", r, err)
	}

	if err := st.EnsureSchema(ctx, now); err != nil {
		t.Fatalf("ensure schema over the old cell: %v", err)
	}
	// 16 packet tables × 4 columns, 16 receipt tables × 1, and 8 in the cell schema.
	if n := migratedColumns(t, reg); n != 16*4+16+8 {
		t.Fatalf("first ensure migrated %v identifier columns, want %d", n, 16*4+16+8)
	}
	if err := st.EnsureSchema(ctx, now); err != nil {
		t.Fatalf("second ensure schema: %v", err)
	}
	if n := migratedColumns(t, reg); n != 16*4+16+8 {
		t.Fatalf("second ensure altered again: %v columns in all", n)
	}
	var left int
	if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN (?, ?, ?) AND DATA_TYPE <> 'varbinary'"+
		" AND COLUMN_NAME IN ('sender', 'request_id', 'grp', 'payment_txn_id', 'user_id', 'idem_key', 'account')",
		cell, layout.DBName(0), layout.DBName(1)).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d identifier columns left non-binary (%v)", left, err)
	}

	// Every row is kept and still works.
	for _, p := range []store.Packet{p1, p2} {
		got, err := st.Get(ctx, p.ID)
		if err != nil || got.Sender != "Bob" || got.Status != store.StatusActive || got.RemainingCents != 900 {
			t.Fatalf("packet %d after migration: %+v %v", p.ID, got, err)
		}
		out, err := svc.Open(ctx, p.ID, "alice")
		if err != nil || !out.Repeat || out.AmountCents != 100 {
			t.Fatalf("alice again on %d: %+v %v", p.ID, out, err)
		}
	}
	again, created, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "Bob", RequestID: "req-1", TotalCents: 1000, Count: 10, Kind: packet.KindFixed}, 3)
	if err != nil || created || again.ID != p1.ID {
		t.Fatalf("Bob's retry of req-1: %+v created=%v %v, want packet %d", again, created, err, p1.ID)
	}
	if hs, err := st.History(ctx, "alice", store.RoleReceived, time.Time{}, 0, 10); err != nil || len(hs) != 1 || hs[0].PacketID != p2.ID {
		t.Fatalf("alice's history: %+v %v", hs, err)
	}

	// And case variants are now distinct everywhere.
	for _, p := range []store.Packet{p1, p2} {
		if _, err := st.Receipt(ctx, p.ID, "Alice"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Alice's receipt on %d before she opened: %v", p.ID, err)
		}
		out, err := svc.Open(ctx, p.ID, "Alice")
		if err != nil || out.Repeat {
			t.Fatalf("Alice opening %d: %+v %v", p.ID, out, err)
		}
	}
	bobs, created, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "bob", RequestID: "req-1", TotalCents: 1000, Count: 10, Kind: packet.KindFixed}, 3)
	if err != nil || !created || bobs.ID == p1.ID {
		t.Fatalf("bob with req-1: %+v created=%v %v", bobs, created, err)
	}
	if _, err := svc.Pay(ctx, bobs.ID, packet.PayRequest{PaymentTxnID: "txn-1", AmountCents: 1000}); err != nil {
		t.Fatalf("txn-1 after TXN-1: %v", err)
	}
	if hs, err := st.History(ctx, "Alice", store.RoleReceived, time.Time{}, 0, 10); err != nil || len(hs) != 0 {
		t.Fatalf("Alice's history: %+v %v", hs, err)
	}

	// The migrated tables are exactly what a new cell creates.
	fresh := storetest.New(t, storetest.Options{Layout: shard.Layout{Databases: 2, TablesPerDB: 2}, Now: now})
	tb := shard.Table{DB: 1, Table: 1}
	pairs := [][2]string{
		{layout.Physical("t", tb, old), fresh.Store.Layout().Physical("t", tb, now)},
		{layout.Physical("r", tb, old), fresh.Store.Layout().Physical("r", tb, now)},
		{layout.DBName(0) + ".t_0_cold", fresh.Store.Layout().DBName(0) + ".t_0_cold"},
		{layout.DBName(0) + ".r_0_cold", fresh.Store.Layout().DBName(0) + ".r_0_cold"},
	}
	for _, name := range []string{"wrap_requests", "payments", "expiry", "outbox", "history"} {
		pairs = append(pairs, [2]string{cell + "." + name, fresh.Prefix + "_cell." + name})
	}
	dayName := regexp.MustCompile("`[tr]_1_\\d\\d`")
	for _, p := range pairs {
		migrated, created := showCreate(t, db, p[0]), showCreate(t, fresh.DB, p[1])
		migrated, created = dayName.ReplaceAllString(migrated, "`day`"), dayName.ReplaceAllString(created, "`day`")
		if migrated != created {
			t.Errorf("%s after migration:\n%s\nwant, as a new cell creates it:\n%s", p[0], migrated, created)
		}
	}
}

func migratedColumns(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "redpacket_store_identifier_columns_migrated_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no redpacket_store_identifier_columns_migrated_total metric")
	return 0
}

package main

import (
	"context"
	"database/sql"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// dropSchemas drops the schemas of cfg when the test ends; db must outlive the cleanup.
func dropSchemas(t *testing.T, db *sql.DB, cfg Config) {
	t.Helper()
	t.Cleanup(func() {
		for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
		}
	})
}

// TestReconcileRepairsPacketPaidLate: a packet paid at the end of its payment window is open
// for a whole expiry after that, so it can be settled (and its effects be lost) nearly two
// expiries after its creation. The server's reconciliation must still cover it and requeue its
// lost credit.
func TestReconcileRepairsPacketPaidLate(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	cfg.ReconcileEvery = 20 * time.Millisecond
	ctx := context.Background()

	now := time.Now()
	created := now.Add(-(2*cfg.Expiry + time.Hour))
	var at time.Time
	clock := func() time.Time { return at }
	db, err := store.OpenDB(m.DSN(""), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	dropSchemas(t, db, cfg)
	layout := shard.Layout{Databases: cfg.ShardDatabases, TablesPerDB: cfg.ShardTables, DatabasePrefix: cfg.ShardDBPrefix}
	st, err := store.New(db, store.Config{Layout: layout, CellSchema: cfg.CellSchema})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureSchema(ctx, created); err != nil {
		t.Fatal(err)
	}
	svc := packet.New(st, &storetest.IDs{Now: clock}, packet.Config{Now: clock, Expiry: cfg.Expiry})
	at = created
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "late", RequestID: "late", TotalCents: 600, Count: 3, Kind: packet.KindRandom}, 5)
	if err != nil {
		t.Fatal(err)
	}
	at = created.Add(cfg.Expiry - time.Minute) // paid at the end of the payment window
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "late", AmountCents: 600}); err != nil {
		t.Fatal(err)
	}
	at = at.Add(cfg.Expiry - time.Minute) // opened at the end of the open window
	o, err := svc.Open(ctx, p.ID, "reader")
	if err != nil {
		t.Fatal(err)
	}
	at = at.Add(2 * time.Minute)
	if done, err := svc.ExpireDue(ctx, 10); err != nil || len(done) != 1 {
		t.Fatalf("settle: %+v %v", done, err)
	}
	// The credit is lost on its way to the wallet: marked delivered, never applied.
	if _, err := db.Exec("UPDATE "+cfg.CellSchema+".outbox SET delivered = 1 WHERE kind = ? AND packet_id = ?", int(store.OutboxCredit), p.ID); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	ready := make(chan string, 1)
	go func() { done <- Run(runCtx, cfg, slog.Default(), ready) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("server did not start")
	}
	ledger, err := wallet.NewLedger(db, cfg.WalletSchema)
	if err != nil {
		t.Fatal(err)
	}
	key := "credit:" + strconv.FormatInt(p.ID, 10) + ":reader"
	for deadline := time.Now().Add(20 * time.Second); ; {
		ts, err := ledger.PacketTransfers(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range ts {
			if tr.Key == key {
				if tr.AmountCents != o.AmountCents {
					t.Fatalf("repaired credit of %d cents, opened %d", tr.AmountCents, o.AmountCents)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("credit %s of a packet created %s ago never repaired (ledger has %+v)", key, now.Sub(created), ts)
		}
		time.Sleep(20 * time.Millisecond) // polling the ledger, not synchronising
	}
}

// TestRefusesToStartWithAnotherLayout: the cell records its shard layout at first start; a
// server configured with another layout would look for the cell's packets in other tables,
// so it must refuse to start, saying why, and touch nothing.
func TestRefusesToStartWithAnotherLayout(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	db, err := store.OpenDB(m.DSN(""), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	dropSchemas(t, db, cfg)
	start := func(cfg Config) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		ready := make(chan string, 1)
		go func() { done <- Run(ctx, cfg, slog.Default(), ready) }()
		select {
		case <-ready:
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run after a clean start: %v", err)
			}
			return nil
		case err := <-done:
			return err
		case <-time.After(90 * time.Second):
			t.Fatal("server neither started nor failed")
			return nil
		}
	}
	if err := start(cfg); err != nil {
		t.Fatalf("first start: %v", err)
	}
	if err := start(cfg); err != nil {
		t.Fatalf("restart with the same layout: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"more databases", func(c *Config) { c.ShardDatabases = 3 }},
		{"fewer tables", func(c *Config) { c.ShardTables = 1 }},
	} {
		other := cfg
		tc.mutate(&other)
		err := start(other)
		if err == nil || !strings.Contains(err.Error(), "shard layout") || !strings.Contains(err.Error(), "spec.template.shards") {
			t.Fatalf("%s: start gave %v, want a refusal naming the shard layout and spec.template.shards", tc.name, err)
		}
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?", cfg.ShardDBPrefix+"02").Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused start created database %s02 (%d, %v)", cfg.ShardDBPrefix, n, err)
	}
}

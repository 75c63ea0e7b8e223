package setwide

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestAuditCatchesSetWideViolations writes, straight into two cells' databases, each breach of
// the set-wide invariants the gateway now prevents, and checks the audit names every one, while
// the same cells without them audit clean of set-wide findings.
func TestAuditCatchesSetWideViolations(t *testing.T) {
	db := testenv.SharedMariaDB(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	type cellDB struct {
		name, prefix string
		st           *store.Store
	}
	var cells []cellDB
	for _, name := range []string{"a", "b"} {
		prefix := testenv.UniqueName("audit_" + name)
		sqlDB, err := store.OpenDB(db.DSN(""), 4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sqlDB.Close() })
		st, err := store.New(sqlDB, store.Config{Layout: shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: prefix + "_db_"}, CellSchema: prefix + "_cell"})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.EnsureSchema(ctx, now); err != nil {
			t.Fatal(err)
		}
		l, err := wallet.NewLedger(sqlDB, prefix+"_wallet")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.EnsureSchema(ctx); err != nil {
			t.Fatal(err)
		}
		cells = append(cells, cellDB{name, prefix, st})
	}
	id := func(slot, seq int) int64 {
		v, err := ids.Compose(ids.Parts{Created: now, Slot: slot, Seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	wrap := func(c cellDB, id int64, sender, req string) {
		t.Helper()
		p := store.Packet{ID: id, Sender: sender, RequestID: req, Kind: store.KindFixed, TotalCents: 100, Count: 1, CreatedAt: ids.CreatedAt(id)}
		if _, _, err := c.st.Wrap(ctx, p, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	pay := func(c cellDB, id int64, txn string) {
		t.Helper()
		if _, err := c.st.Pay(ctx, id, txn, 100, now, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	audit := func() []string {
		cfg := loadgen.AuditConfig{Layout: shard.Layout{Databases: 2, TablesPerDB: 2}, From: now.Add(-time.Minute), To: now.Add(time.Minute), DrainTimeout: time.Second}
		for _, c := range cells {
			cfg.Cells = append(cfg.Cells, loadgen.CellDB{Name: c.name, DSN: db.DSN(""), CellSchema: c.prefix + "_cell", WalletSchema: c.prefix + "_wallet", ShardDBPrefix: c.prefix + "_db_"})
		}
		rep, err := loadgen.Audit(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var setWide []string
		for _, v := range rep.Violations {
			if strings.Contains(v, "stored in both") || strings.Contains(v, "paid two packets") || strings.Contains(v, "names two packets") {
				setWide = append(setWide, v)
			}
		}
		return setWide
	}
	// Clean: distinct IDs, keys and payments, and identifiers differing only in case.
	wrap(cells[0], id(1, 1), "alice", "r1")
	wrap(cells[1], id(2, 1), "Alice", "r1")
	pay(cells[0], id(1, 1), "tx-1")
	pay(cells[1], id(2, 1), "TX-1")
	if got := audit(); len(got) != 0 {
		t.Fatalf("clean cells: %v", got)
	}
	wrap(cells[0], id(3, 1), "bob", "same-id")
	wrap(cells[1], id(3, 1), "carol", "same-id-elsewhere") // one packet ID in two cells
	wrap(cells[0], id(4, 1), "dave", "r-dup")
	wrap(cells[1], id(5, 1), "dave", "r-dup") // one wrap key naming two packets
	wrap(cells[0], id(6, 1), "erin", "p1")
	wrap(cells[1], id(7, 1), "erin", "p2")
	pay(cells[0], id(6, 1), "tx-twice")
	pay(cells[1], id(7, 1), "tx-twice") // one payment activating two packets
	got := strings.Join(audit(), "\n")
	for _, want := range []string{"stored in both", `wrap request "r-dup" of sender "dave" names two packets`, `payment "tx-twice" paid two packets`} {
		if !strings.Contains(got, want) {
			t.Errorf("audit misses %q; set-wide findings:\n%s", want, got)
		}
	}
}

// Package storetest gives tests a Store of their own on the test binary's shared MariaDB:
// its own schema prefix (so tests never see each other's rows), a small layout, and
// cleanup of every schema it created. It must never be imported by non-test code.
package storetest

import (
	"context"
	"database/sql"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// Env is a test's store and the pool under it.
type Env struct {
	Store   *store.Store
	DB      *sql.DB
	Prefix  string
	MariaDB *testenv.MariaDB
	Layout  shard.Layout
}

// Twin is a second store over the same cell's data and pool: another server of the cell.
func (e *Env) Twin(tb testing.TB, reg prometheus.Registerer) *store.Store {
	tb.Helper()
	st, err := store.New(e.DB, store.Config{Layout: e.Layout, CellSchema: e.Prefix + "_cell", Registerer: reg})
	if err != nil {
		tb.Fatalf("twin store: %v", err)
	}
	return st
}

// Options tune New; the zero value is a 2×2 layout with 7-day retention.
type Options struct {
	Layout   shard.Layout
	Observer store.Observer
	MaxConns int
	Now      time.Time
	// Registerer receives the store's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// New creates a fresh store on the shared MariaDB; the package's TestMain must call
// testenv.Main.
func New(tb testing.TB, o Options) *Env {
	tb.Helper()
	m := testenv.SharedMariaDB(tb)
	return NewOn(tb, m, o)
}

// NewOn creates a fresh store on a given server.
func NewOn(tb testing.TB, m *testenv.MariaDB, o Options) *Env {
	tb.Helper()
	prefix := testenv.UniqueName("rp")
	if o.Layout.Databases == 0 {
		o.Layout = shard.Layout{Databases: 2, TablesPerDB: 2}
	}
	o.Layout.DatabasePrefix = prefix + "_db_"
	if o.MaxConns == 0 {
		o.MaxConns = 64
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	db, err := store.OpenDB(m.DSN(""), o.MaxConns)
	if err != nil {
		tb.Fatalf("open db: %v", err)
	}
	st, err := store.New(db, store.Config{Layout: o.Layout, CellSchema: prefix + "_cell", Observer: o.Observer, Registerer: o.Registerer})
	if err != nil {
		tb.Fatalf("new store: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.EnsureSchema(ctx, o.Now); err != nil {
		tb.Fatalf("ensure schema: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if m.Process.Running() {
			_, _ = db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+prefix+"_cell")
			for i := 0; i < o.Layout.Databases; i++ {
				_, _ = db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+o.Layout.DBName(i))
			}
		}
		db.Close()
	})
	return &Env{Store: st, DB: db, Prefix: prefix, MariaDB: m, Layout: o.Layout}
}

// IDs issues valid, unique packet IDs for tests without the control schema: the counter
// fills the worker and sequence fields, so a test binary can issue a million per second.
type IDs struct {
	n   atomic.Int64
	Now func() time.Time
}

// Next returns a fresh ID in slot (any slot when slot < 0).
func (g *IDs) Next(_ context.Context, slot int) (int64, error) {
	n := g.n.Add(1)
	if slot < 0 {
		slot = int(n % ids.MaxSlots)
	}
	now := time.Now()
	if g.Now != nil {
		now = g.Now()
	}
	return ids.Compose(ids.Parts{Created: now, Worker: int(n/(ids.MaxSeq+1)) % (ids.MaxWorker + 1), Seq: int(n % (ids.MaxSeq + 1)), Slot: slot})
}

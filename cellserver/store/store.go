// Package store owns the cell's MySQL data: the sharded packet and receive-record day tables
// (db_xx.t_y_dd and db_xx.r_y_dd), their cold archives, and the per-cell schema that holds
// idempotency keys, the expiry index, the transactional outbox and user history.
//
// Every money-moving verb is one local transaction that first locks the packet row
// (SELECT … FOR UPDATE, or for an open on a row this store committed last, the conditional
// UPDATE itself: openhint.go) and writes receive records, outbox rows and a conditional
// UPDATE of the remaining amount, so correctness never rests on anything outside MySQL.
// The store must never decide business rules beyond what keeps the money invariants
// (docs/design.md §4): the split rule comes in as a ShareFunc from the packet package.
//
// How docs/design.md §4 is held by the database itself, not only by this code:
//   - conservation: the packet row's CHECK (remaining ≥ remaining count ≥ 0, remaining +
//     refunded ≤ total) and every receive record's CHECK (amount ≥ 1); opens and the refund
//     are conditional UPDATEs on the values read under the row lock;
//   - one open per user: UNIQUE (packet_id, user_id) on receive records;
//   - exactly-once effects: UNIQUE idem_key on the outbox, and the wallet's own unique key;
//   - idempotent wrap and pay: primary keys (sender, request_id) and (payment_txn_id);
//   - identifiers as byte strings: every ID, key and account column is VARBINARY, so the
//     keys above tell "Alice" from "alice" as Go does (older cells are migrated by
//     EnsureSchema).
//
// Placement: a packet's shard follows from its ID alone (slot → logical table, creation
// second → day table), so no lookup table sits on the hot path. The per-cell schema sits on
// the same MariaDB server, and MariaDB transactions span schemas on one server, so a wrap,
// pay, open or refund commits its shard rows and its per-cell rows atomically.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store/exactid"
)

// Observer receives the outcome of every call against a logical table (nil on success), so a
// breaker can trip on a failing table. Domain refusals are reported as success.
type Observer interface {
	Observe(table shard.Table, err error)
}

// Config places the cell's data.
type Config struct {
	Layout shard.Layout
	// CellSchema holds per-cell tables (idempotency, expiry index, outbox, history).
	CellSchema string
	// Retention is how long settled rows stay in the day tables before moving to cold
	// tables. It must stay below 28 days so a day table is emptied before it is reused.
	Retention time.Duration
	Observer  Observer
	// Registerer receives the store's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// Store is safe for concurrent use.
type Store struct {
	db       *sql.DB
	layout   shard.Layout
	cell     string
	keep     time.Duration
	obs      Observer
	tblErrs  *prometheus.CounterVec
	migrated prometheus.Counter
	sweep    sweepMetrics
	memo     rowMemo
	guesses  *prometheus.CounterVec
	lane     guessLane
	guessM   guessMetrics
}

var identRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,48}$`)

// New wraps an open *sql.DB (see OpenDB for the settings the store relies on).
func New(db *sql.DB, cfg Config) (*Store, error) {
	if err := cfg.Layout.Validate(); err != nil {
		return nil, err
	}
	if cfg.CellSchema == "" {
		cfg.CellSchema = DefaultCellSchema
	}
	if !identRe.MatchString(cfg.CellSchema) || (cfg.Layout.DatabasePrefix != "" && !identRe.MatchString(cfg.Layout.DatabasePrefix)) {
		return nil, fmt.Errorf("store: schema names must be letters, digits and '_' (cell %q, prefix %q)", cfg.CellSchema, cfg.Layout.DatabasePrefix)
	}
	if cfg.Retention == 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.Retention < 24*time.Hour || cfg.Retention > 27*24*time.Hour {
		return nil, fmt.Errorf("store: retention %s outside 1..27 days: a day table is reused after 28", cfg.Retention)
	}
	s := &Store{db: db, layout: cfg.Layout, cell: cfg.CellSchema, keep: cfg.Retention, obs: cfg.Observer,
		tblErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_store_table_errors_total",
			Help: "Failed calls per logical table (db_xx.t_y), the signal the breaker and masking act on.",
		}, []string{"table"}),
		migrated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_store_identifier_columns_migrated_total",
			Help: "Identifier columns of an older cell rewritten to compare byte for byte (docs/operator.md, upgrades).",
		}),
		guesses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_store_open_guesses_total",
			Help: "Open batches by the remembered packet row: hit (one round trip), stale or repeat (rolled back, run locked), none (run locked).",
		}, []string{"result"}),
		sweep: newSweepMetrics(), guessM: newGuessMetrics()}
	if cfg.Registerer != nil {
		for _, c := range append(append(s.sweep.collectors(), s.guessM.collectors()...), s.tblErrs, s.migrated, s.guesses) {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("store: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// OpenDB opens a pool with the session settings the money path relies on:
// READ COMMITTED (each statement after the row lock sees the latest committed receive
// records, and no gap locks on the receipt inserts), client-side interpolation (one round
// trip per statement instead of prepare+execute+close) and multi-statements (an open batch
// sends its three writes in one round trip).
func OpenDB(dsn string, maxConns int) (*sql.DB, error) {
	cfg, err := SessionConfig(dsn)
	if err != nil {
		return nil, err
	}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mysql connector: %w", err)
	}
	return OpenConnector(connector, maxConns), nil
}

// SessionConfig is dsn with the session settings OpenDB describes, for a connector of one's
// own (cellserver/primarydb, which dials the cell's writable instance).
func SessionConfig(dsn string) (*mysql.Config, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse mysql dsn: %w", err)
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	// tx_isolation is the MariaDB 10.x name; 11.1+ still accepts it.
	cfg.Params["tx_isolation"] = "'READ-COMMITTED'"
	cfg.InterpolateParams = true
	// Multi-statements let a batch send several statements in one round trip. They widen no
	// injection path here: values are always placeholders the driver escapes, and the only
	// names spliced into SQL are schema and table names checked against identRe.
	cfg.MultiStatements = true
	return cfg, nil
}

// OpenConnector opens a pool over connector (made from SessionConfig) with OpenDB's sizing.
func OpenConnector(connector driver.Connector, maxConns int) *sql.DB {
	db := sql.OpenDB(connector)
	if maxConns > 0 {
		db.SetMaxOpenConns(maxConns)
		db.SetMaxIdleConns(maxConns)
	}
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db
}

// DB is the underlying pool (the wallet and benchmarks share it).
func (s *Store) DB() *sql.DB { return s.db }

// Layout is the sharding layout.
func (s *Store) Layout() shard.Layout { return s.layout }

// TableOf is the logical table holding a packet.
func (s *Store) TableOf(id int64) shard.Table { return s.layout.Of(ids.Slot(id)) }

// Tables names the physical packet and receive-record tables of a packet.
func (s *Store) Tables(id int64) (packets, receipts string) {
	t := s.TableOf(id)
	created := ids.CreatedAt(id)
	return s.layout.Physical("t", t, created), s.layout.Physical("r", t, created)
}

func (s *Store) coldTables(t shard.Table) (packets, receipts string) { return coldTables(s.layout, t) }

func coldTables(l shard.Layout, t shard.Table) (packets, receipts string) {
	db := l.DBName(t.DB)
	return fmt.Sprintf("%s.t_%d_cold", db, t.Table), fmt.Sprintf("%s.r_%d_cold", db, t.Table)
}

// shardDDL is one shard table EnsureSchema creates.
type shardDDL struct {
	t    shard.Table
	name string // db_07.t_3_17
	q    string
	what string // "cold" or the day
}

// shardTables are the shard tables EnsureSchema creates at now: per logical table its cold
// packet and receipt tables, and both kinds for the day of now and the next day.
func shardTables(l shard.Layout, now time.Time) []shardDDL {
	var out []shardDDL
	for _, t := range l.All() {
		cp, cr := coldTables(l, t)
		out = append(out, shardDDL{t, cp, fmt.Sprintf(packetDDL, cp), "cold"}, shardDDL{t, cr, fmt.Sprintf(receiptDDL, cr), "cold"})
		for _, day := range []time.Time{now, now.Add(24 * time.Hour)} {
			d := day.UTC().Format(time.DateOnly)
			tp, tr := l.Physical("t", t, day), l.Physical("r", t, day)
			out = append(out, shardDDL{t, tp, fmt.Sprintf(packetDDL, tp), d}, shardDDL{t, tr, fmt.Sprintf(receiptDDL, tr), d})
		}
	}
	return out
}

// ShardTables names ("db_07.t_3_17") the shard tables a server's EnsureSchema creates when
// it starts at now. A first start of a full-layout cell creates thousands; the local SET
// counts the ones that exist to show how far that has got.
func ShardTables(l shard.Layout, now time.Time) []string {
	ts := shardTables(l, now)
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.name
	}
	return out
}

func (s *Store) cellTable(name string) string { return s.cell + "." + name }

// ProbeTable reads one row of a logical table's current day tables (packets and receipts)
// and reports the outcome as a call on that table. A masked table gets no creates, and often
// no reads, so without a probe nothing would ever show it healthy again and its mask would
// hold for ever ("silence keeps a mask", docs/designdoc/masking.md); a table still missing or
// failing reports the error and keeps it.
func (s *Store) ProbeTable(ctx context.Context, t shard.Table, now time.Time) error {
	var errs []error
	for _, kind := range []string{"t", "r"} {
		var one int
		err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.layout.Physical(kind, t, now)+" LIMIT 1").Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
		s.observe(t, err)
		if err != nil {
			errs = append(errs, fmt.Errorf("probe %s: %w", s.layout.Physical(kind, t, now), err))
		}
	}
	return errors.Join(errs...)
}

// observe reports the outcome of a call on a logical table; refusals are successes.
func (s *Store) observe(t shard.Table, err error) {
	if err != nil && (IsRefusal(err) || errors.Is(err, context.Canceled)) {
		err = nil
	}
	if err != nil {
		s.tblErrs.WithLabelValues(s.layout.Name(t)).Inc()
	}
	if s.obs != nil {
		s.obs.Observe(t, err)
	}
}

const packetDDL = `CREATE TABLE IF NOT EXISTS %s (
  id BIGINT NOT NULL PRIMARY KEY,
  sender VARBINARY(64) NOT NULL,
  request_id VARBINARY(64) NOT NULL,
  kind TINYINT NOT NULL,
  status TINYINT NOT NULL,
  total_cents BIGINT NOT NULL,
  share_count INT NOT NULL,
  remaining_cents BIGINT NOT NULL,
  remaining_count INT NOT NULL,
  refunded_cents BIGINT NOT NULL DEFAULT 0,
  grp VARBINARY(64) NOT NULL DEFAULT '',
  greeting VARCHAR(128) NOT NULL DEFAULT '',
  payment_txn_id VARBINARY(64) NULL,
  created_ms BIGINT NOT NULL,
  paid_ms BIGINT NOT NULL DEFAULT 0,
  expires_ms BIGINT NOT NULL,
  settled_ms BIGINT NOT NULL DEFAULT 0,
  version BIGINT NOT NULL DEFAULT 0,
  CONSTRAINT money_conserved CHECK (remaining_count >= 0 AND remaining_cents >= remaining_count
    AND refunded_cents >= 0 AND remaining_cents + refunded_cents <= total_cents)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`

const receiptDDL = `CREATE TABLE IF NOT EXISTS %s (
  packet_id BIGINT NOT NULL,
  seq INT NOT NULL,
  user_id VARBINARY(64) NOT NULL,
  amount_cents BIGINT NOT NULL,
  opened_ms BIGINT NOT NULL,
  PRIMARY KEY (packet_id, seq),
  UNIQUE KEY packet_user (packet_id, user_id),
  CONSTRAINT share_positive CHECK (amount_cents >= 1)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`

// Idempotency rows live in the per-cell schema, not in the packet's shard: a wrap retry
// arrives without a packet ID (the ID is what the first attempt allocated), and a payment
// transaction ID must be unique across every packet of the cell, so only a table keyed by
// the request's own key finds them without scanning shards. The schema is on the same
// server, so the rows commit in the same local transaction as the packet.
var cellDDL = []string{
	`CREATE TABLE IF NOT EXISTS %s.wrap_requests (
  sender VARBINARY(64) NOT NULL,
  request_id VARBINARY(64) NOT NULL,
  packet_id BIGINT NOT NULL,
  PRIMARY KEY (sender, request_id)
) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS %s.payments (
  payment_txn_id VARBINARY(64) NOT NULL PRIMARY KEY,
  packet_id BIGINT NOT NULL,
  amount_cents BIGINT NOT NULL
) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS %s.expiry (
  packet_id BIGINT NOT NULL PRIMARY KEY,
  expires_ms BIGINT NOT NULL,
  KEY due (expires_ms)
) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS %s.outbox (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  kind TINYINT NOT NULL,
  idem_key VARBINARY(100) NOT NULL,
  packet_id BIGINT NOT NULL,
  account VARBINARY(64) NOT NULL,
  amount_cents BIGINT NOT NULL,
  share_count INT NOT NULL DEFAULT 0,
  grp VARBINARY(64) NOT NULL DEFAULT '',
  at_ms BIGINT NOT NULL,
  delivered TINYINT NOT NULL DEFAULT 0,
  attempts INT NOT NULL DEFAULT 0,
  next_ms BIGINT NOT NULL DEFAULT 0,
  last_error VARCHAR(255) NULL,
  UNIQUE KEY idem (idem_key),
  KEY pending (delivered, id)
) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS %s.history (
  user_id VARBINARY(64) NOT NULL,
  role TINYINT NOT NULL,
  packet_id BIGINT NOT NULL,
  at_ms BIGINT NOT NULL,
  amount_cents BIGINT NOT NULL,
  share_count INT NOT NULL DEFAULT 0,
  grp VARBINARY(64) NOT NULL DEFAULT '',
  PRIMARY KEY (user_id, role, packet_id),
  KEY page (user_id, role, at_ms, packet_id)
) ENGINE=InnoDB`,
}

// Identifier columns are VARBINARY: IDs are byte strings and must compare byte for byte
// (docs/design.md §4.2; why binary strings and not a _bin collation: package exactid). The
// definitions here are the ones in the DDL above, so a migrated table ends up exactly as a
// new one.
var (
	packetIDColumns = map[string]string{
		"sender":         "VARBINARY(64) NOT NULL",
		"request_id":     "VARBINARY(64) NOT NULL",
		"grp":            "VARBINARY(64) NOT NULL DEFAULT ''",
		"payment_txn_id": "VARBINARY(64) NULL",
	}
	receiptIDColumns = map[string]string{"user_id": "VARBINARY(64) NOT NULL"}
	cellIDColumns    = map[string]map[string]string{
		"wrap_requests": {"sender": "VARBINARY(64) NOT NULL", "request_id": "VARBINARY(64) NOT NULL"},
		"payments":      {"payment_txn_id": "VARBINARY(64) NOT NULL"},
		"outbox": {"idem_key": "VARBINARY(100) NOT NULL", "account": "VARBINARY(64) NOT NULL",
			"grp": "VARBINARY(64) NOT NULL DEFAULT ''"},
		"history": {"user_id": "VARBINARY(64) NOT NULL", "grp": "VARBINARY(64) NOT NULL DEFAULT ''"},
	}
	packetTables  = regexp.MustCompile(`^t_[0-9]+_([0-9]{2}|cold)$`)
	receiptTables = regexp.MustCompile(`^r_[0-9]+_([0-9]{2}|cold)$`)
)

// idFamilies covers every table of the cell that holds identifiers, every day table
// included: a packet created under the old DDL is opened in its own day table for days.
func (s *Store) idFamilies() []exactid.Family {
	shards := make([]string, s.layout.Databases)
	for i := range shards {
		shards[i] = s.layout.DBName(i)
	}
	fams := []exactid.Family{
		{Schemas: shards, Tables: packetTables, Columns: packetIDColumns},
		{Schemas: shards, Tables: receiptTables, Columns: receiptIDColumns},
	}
	for table, cols := range cellIDColumns {
		fams = append(fams, exactid.Family{Schemas: []string{s.cell}, Tables: regexp.MustCompile("^" + table + "$"), Columns: cols})
	}
	return fams
}

// EnsureSchema creates, idempotently, the per-cell schema, every logical database, their
// cold tables and the day tables for the day of now and the next day, so the first packet
// after midnight never waits for DDL. It then makes identifier columns that a cell created
// by an earlier release left case-insensitive byte-exact (one information_schema query when
// none is left). That check runs on every call, not once per process: a server of the
// previous release may still create tomorrow's tables during a rolling upgrade.
func (s *Store) EnsureSchema(ctx context.Context, now time.Time) error {
	if _, err := s.db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+s.cell); err != nil {
		return fmt.Errorf("create cell schema %s: %w", s.cell, err)
	}
	for _, ddl := range cellDDL {
		if _, err := s.db.ExecContext(ctx, fmt.Sprintf(ddl, s.cell)); err != nil {
			return fmt.Errorf("create cell table in %s: %w", s.cell, err)
		}
	}
	if err := s.ensureSweepColumns(ctx); err != nil {
		return err
	}
	for db := 0; db < s.layout.Databases; db++ {
		if _, err := s.db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+s.layout.DBName(db)); err != nil {
			return fmt.Errorf("create database %s: %w", s.layout.DBName(db), err)
		}
	}
	// The full layout is 1,000 logical tables × (2 cold + 2 days × 2 kinds): thousands of
	// statements on a first start, so they run on a few connections at once.
	work := shardTables(s.layout, now)
	jobs := make(chan shardDDL)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for i := 0; i < min(8, len(work)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if _, err := s.db.ExecContext(ctx, j.q); err != nil {
					s.observe(j.t, err)
					select {
					case errs <- fmt.Errorf("create %s tables of %s: %w", j.what, s.layout.Name(j.t), err):
					default:
					}
				}
			}
		}()
	}
feed:
	for _, j := range work {
		select {
		case jobs <- j:
		case err := <-errs:
			errs <- err
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	altered, err := exactid.Migrate(ctx, s.db, s.cell, s.idFamilies(), 8)
	for _, a := range altered {
		s.migrated.Add(float64(len(a.Columns)))
	}
	if err != nil {
		return fmt.Errorf("cell %s: %w", s.cell, err)
	}
	return nil
}

// isDuplicate reports a unique-key violation (MySQL error 1062).
func isDuplicate(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1062
}

// isMissingTable reports an unknown table (1146): a day table not created yet means no packet
// was stored there.
func isMissingTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}

func rollback(tx *sql.Tx) { _ = tx.Rollback() }

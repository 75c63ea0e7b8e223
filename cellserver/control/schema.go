// Package control owns a cell's control schema (rp_control by default): the small set of
// tables in the cell's MySQL, apart from the sharded packet data, through which the cell's
// servers and the operator coordinate without talking to each other.
//
//   - id_workers: the worker numbers packet-ID allocators lease, with each worker's
//     high-water second so a new holder never repeats an ID its predecessor issued.
//   - masks: slot ranges in which no new packet may be created, with their history.
//   - table_errors: per server, per logical table, per time window, errors and calls — what
//     the operator's masking policy reads.
//   - shard_layout: the shard layout the cell was created with; servers with another refuse
//     to start.
//   - routing_readers: per server, the newest routing epoch of the table it holds, written
//     whenever it loads one — what the operator's hand-over gate reads.
//   - routing_announce: one row, the newest routing epoch the operator announced, written
//     before the table holding it is published — what a server that has not loaded it yet
//     reads to know it must stop issuing near its effective time.
//   - routing_published: one row, the newest routing table the operator recorded (in the
//     set's status) and published, so a server loads a new epoch from its own cell's database
//     within a poll rather than when the kubelet gets round to refreshing the mounted
//     ConfigMap (a minute or more), and a gateway gets it from any server.
//
// Every function is a plain call over a *sql.DB, so the servers and the operator (which holds
// the cell's DB credentials) share one implementation. This package decides nothing: it never
// chooses what to mask or when to lift, and it never touches the sharded data schemas.
package control

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"

	"github.com/redpacketset/redpacket/cellserver/store/exactid"
)

// DefaultSchema is the control schema's name when none is configured.
const DefaultSchema = "rp_control"

// Workers is the number of worker numbers a cell leases out (0..Workers-1). It equals
// ids.MaxWorker+1; the ID layout cannot be imported here because the allocator imports us.
const Workers = 256

var schemaName = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// qualify returns the backquoted schema.table, refusing schema names that would need escaping.
func qualify(schema, table string) (string, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	if !schemaName.MatchString(schema) {
		return "", fmt.Errorf("control schema name %q: only letters, digits and _ are allowed", schema)
	}
	return "`" + schema + "`.`" + table + "`", nil
}

// EnsureSchema creates the control schema, its tables and the worker rows if they are
// missing. It is idempotent and safe to run from every server at start-up concurrently.
func EnsureSchema(ctx context.Context, db *sql.DB, schema string) error {
	if schema == "" {
		schema = DefaultSchema
	}
	if _, err := qualify(schema, "x"); err != nil {
		return err
	}
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS `" + schema + "` CHARACTER SET utf8mb4",
		// lease_token identifies one acquisition, so a holder whose lease expired and was
		// taken over can never renew or release its successor's lease.
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`id_workers` (" +
			" worker SMALLINT UNSIGNED NOT NULL PRIMARY KEY," +
			" holder VARCHAR(255) NOT NULL DEFAULT ''," +
			" lease_token BIGINT NOT NULL DEFAULT 0," +
			" lease_expires DATETIME(6) NULL," +
			" acquired_at DATETIME(6) NULL," +
			" renewals BIGINT NOT NULL DEFAULT 0," +
			" high_water_unix BIGINT NOT NULL DEFAULT 0" +
			") ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`masks` (" +
			" id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY," +
			" slot_start INT NOT NULL," +
			" slot_end INT NOT NULL," +
			" reason VARCHAR(512) NOT NULL," +
			" source VARCHAR(32) NOT NULL," +
			" since DATETIME(6) NOT NULL," +
			" lifted_at DATETIME(6) NULL," +
			" KEY masks_active (lifted_at, slot_start)" +
			") ENGINE=InnoDB",
		// The names are the keys errors add up under, so they compare byte for byte, as
		// every identifier of the cell does (package exactid says why binary strings).
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`table_errors` (" +
			" logical_table VARBINARY(64) NOT NULL," +
			" window_start DATETIME NOT NULL," +
			" server VARBINARY(255) NOT NULL," +
			" errors BIGINT NOT NULL DEFAULT 0," +
			" calls BIGINT NOT NULL DEFAULT 0," +
			" updated_at DATETIME(6) NOT NULL," +
			" PRIMARY KEY (logical_table, window_start, server)," +
			" KEY table_errors_window (window_start)" +
			") ENGINE=InnoDB",
		// One row: the shard layout the cell was created with (CheckLayout).
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`shard_layout` (" +
			" id TINYINT NOT NULL PRIMARY KEY," +
			" db_count INT NOT NULL," +
			" tables_per_db INT NOT NULL," +
			" db_prefix VARCHAR(64) NOT NULL," +
			" recorded_at DATETIME(6) NOT NULL," +
			" recorded_by VARCHAR(255) NOT NULL" +
			") ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`routing_readers` (" +
			" server VARCHAR(255) NOT NULL PRIMARY KEY," +
			" epoch BIGINT NOT NULL," +
			" effective_time DATETIME NOT NULL," +
			" loaded_at DATETIME(6) NOT NULL" +
			") ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`routing_announce` (" +
			" id TINYINT NOT NULL PRIMARY KEY," +
			" epoch BIGINT NOT NULL," +
			" effective_time DATETIME NOT NULL," +
			" updated_at DATETIME(6) NOT NULL" +
			") ENGINE=InnoDB",
		// The encoded table (routing.Table.Marshal) whose newest epoch is epoch.
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.`routing_published` (" +
			" id TINYINT NOT NULL PRIMARY KEY," +
			" epoch BIGINT NOT NULL," +
			" body MEDIUMBLOB NOT NULL," +
			" updated_at DATETIME(6) NOT NULL" +
			") ENGINE=InnoDB",
	}
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("ensure control schema %s: %w", schema, err)
		}
	}
	// A schema created by an earlier release has these columns case-insensitive.
	if _, err := exactid.Migrate(ctx, db, schema, []exactid.Family{{Schemas: []string{schema}, Tables: regexp.MustCompile(`^table_errors$`),
		Columns: map[string]string{"logical_table": "VARBINARY(64) NOT NULL", "server": "VARBINARY(255) NOT NULL"}}}, 1); err != nil {
		return fmt.Errorf("ensure control schema %s: %w", schema, err)
	}
	var b strings.Builder
	b.WriteString("INSERT IGNORE INTO `" + schema + "`.`id_workers` (worker) VALUES ")
	for w := 0; w < Workers; w++ {
		if w > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "(%d)", w)
	}
	if _, err := db.ExecContext(ctx, b.String()); err != nil {
		return fmt.Errorf("ensure control schema %s: seed workers: %w", schema, err)
	}
	return nil
}

package dbfailover

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"time"
)

// The SQL of each step, on one instance. Every function is idempotent: a step cut short by a
// crash is simply run again by the next Reconcile.

// observe reads one instance. A server_id other than the one the cell gives this instance is
// an error: it is not the instance the history speaks of.
func observe(ctx context.Context, db *sql.DB, ep Endpoint, idx int) (Instance, error) {
	in := Instance{Index: idx, Addr: ep.Addr, ServerID: ep.ServerID}
	var cur, state string
	var readOnly, semi int
	var sid uint32
	err := db.QueryRowContext(ctx, "SELECT @@global.read_only, @@global.rpl_semi_sync_master_enabled, @@global.gtid_current_pos, @@global.gtid_binlog_state, @@global.server_id").
		Scan(&readOnly, &semi, &cur, &state, &sid)
	if err != nil {
		return in, fmt.Errorf("read variables: %w", err)
	}
	if ep.ServerID != 0 && sid != ep.ServerID {
		return in, fmt.Errorf("server_id %d, the cell expects %d at %s", sid, ep.ServerID, ep.Addr)
	}
	in.ServerID, in.ReadOnly, in.SemiSyncPrimary = sid, readOnly != 0, semi != 0
	if in.CurrentPos, err = ParsePosition(cur); err != nil {
		return in, fmt.Errorf("gtid_current_pos: %w", err)
	}
	if in.BinlogState, err = ParseGTIDList(state); err != nil {
		return in, fmt.Errorf("gtid_binlog_state: %w", err)
	}
	if in.Replication, err = slaveStatus(ctx, db); err != nil {
		return in, err
	}
	in.Reachable = true
	return in, nil
}

func slaveStatus(ctx context.Context, db *sql.DB) (*Replication, error) {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, fmt.Errorf("show slave status: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	if !rows.Next() {
		return nil, rows.Err()
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, fmt.Errorf("show slave status: %w", err)
	}
	f := map[string]string{}
	for i, c := range cols {
		f[c] = string(vals[i])
	}
	r := &Replication{
		SourceAddr: net.JoinHostPort(f["Master_Host"], f["Master_Port"]),
		// "Preparing" (10.11: connected, asking for the dump) is running too: repointing a
		// replica in that state is what left a primary's dump thread hung.
		IORunning:  f["Slave_IO_Running"] != "" && f["Slave_IO_Running"] != "No",
		SQLRunning: f["Slave_SQL_Running"] == "Yes",
	}
	if r.IOPos, err = ParsePosition(f["Gtid_IO_Pos"]); err != nil {
		return nil, fmt.Errorf("Gtid_IO_Pos: %w", err)
	}
	r.SQLError, r.IOError = f["Last_SQL_Error"], f["Last_IO_Error"]
	if f["Master_Host"] == "" {
		return nil, nil // RESET SLAVE ALL leaves no row; an empty host is the same
	}
	return r, nil
}

// fence makes an instance refuse writes: read_only first (waiting at most lockWait for commits
// in flight), then the sessions of the cell servers are killed so they reconnect and find the
// real primary, then the semi-sync wait is dropped (a replica must not wait for acks of what
// its SQL thread applies). A commit waiting for an ack on a fenced instance is killed with its
// session: its client hears an error, never a success.
func fence(ctx context.Context, db *sql.DB, appUser string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, _ = conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 3")
	if _, err := conn.ExecContext(ctx, "SET GLOBAL read_only = 1"); err != nil {
		// Commits stuck waiting for an ack hold read_only back: kill them, then retry.
		if kerr := killSessions(ctx, conn, appUser); kerr != nil {
			return fmt.Errorf("set read_only: %w (and killing sessions: %v)", err, kerr)
		}
		if _, err := conn.ExecContext(ctx, "SET GLOBAL read_only = 1"); err != nil {
			return fmt.Errorf("set read_only: %w", err)
		}
	}
	if err := killSessions(ctx, conn, appUser); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, "SET GLOBAL rpl_semi_sync_master_enabled = OFF"); err != nil {
		return fmt.Errorf("semi-sync off: %w", err)
	}
	return nil
}

func killSessions(ctx context.Context, conn *sql.Conn, user string) error {
	if user == "" {
		return nil
	}
	return killWhere(ctx, conn, "user = ? AND id <> CONNECTION_ID()", user)
}

// killWhere ends every thread of the processlist that cond selects; a thread that ended
// meanwhile answers "unknown thread", which is fine.
func killWhere(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, cond string, args ...any) error {
	rows, err := q.QueryContext(ctx, "SELECT id FROM information_schema.PROCESSLIST WHERE "+cond, args...)
	if err != nil {
		return fmt.Errorf("list threads where %s: %w", cond, err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		_, _ = q.ExecContext(ctx, fmt.Sprintf("KILL %d", id))
	}
	return rows.Err()
}

func setSemiSync(ctx context.Context, db *sql.DB, on bool) error {
	v := "OFF"
	if on {
		v = "ON"
	}
	if _, err := db.ExecContext(ctx, "SET GLOBAL rpl_semi_sync_master_enabled = "+v); err != nil {
		return fmt.Errorf("semi-sync %s: %w", v, err)
	}
	return nil
}

// open makes the instance the writable primary: no replication left, then read_only off.
func open(ctx context.Context, db *sql.DB) error {
	for _, q := range []string{"STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// repoint makes the instance replicate from src by GTID. It starts from everything it holds
// (gtid_slave_pos := gtid_current_pos): a deposed primary's own writes are in its binlog, not in
// its slave position, and Decide has checked that none of them is errant.
func repoint(ctx context.Context, db *sql.DB, src, user, password string) error {
	host, port, err := net.SplitHostPort(src)
	if err != nil {
		return fmt.Errorf("source address %q: %w", src, err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	stmts := []string{
		"STOP SLAVE",
		"SET GLOBAL gtid_slave_pos = @@global.gtid_current_pos",
		fmt.Sprintf("CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
			quote(host), port, quote(user), quote(password)),
		"START SLAVE",
	}
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(q, " MASTER_PASSWORD", 2)[0], err)
		}
	}
	return nil
}

// killDumps ends the primary's binlog dump threads, so a replica that reconnects gets a fresh
// one instead of waiting behind a hung one. Every replica reconnects within
// MASTER_CONNECT_RETRY (1 s); only a stalled replica's restart calls it.
func killDumps(ctx context.Context, db *sql.DB) error {
	return killWhere(ctx, db, "command LIKE 'Binlog Dump%'")
}

// stopReceiving stops a replica's IO thread so it takes nothing more from the lost primary,
// then waits until its SQL thread has applied everything it received.
func stopReceiving(ctx context.Context, db *sql.DB, wait time.Duration) error {
	if _, err := db.ExecContext(ctx, "STOP SLAVE IO_THREAD"); err != nil {
		return fmt.Errorf("stop io thread: %w", err)
	}
	r, err := slaveStatus(ctx, db)
	if err != nil || r == nil {
		return err
	}
	if !r.SQLRunning {
		// Stopped (by an error): nothing more will be applied; ChooseCandidate judges it.
		return nil
	}
	var got int
	if err := db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", r.IOPos.String(), wait.Seconds()).Scan(&got); err != nil {
		return fmt.Errorf("wait for relay log %s: %w", r.IOPos, err)
	}
	if got != 0 {
		return fmt.Errorf("relay log not applied up to %s within %s", r.IOPos, wait)
	}
	return nil
}

func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

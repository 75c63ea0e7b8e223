// Package primarydb connects a cell server to whichever of its cell's database instances is
// the writable primary. The server is given every instance's address; each new connection
// goes to the last primary seen if it is still writable (read_only=0), else to the first
// instance that is. A connection whose statement is refused because its instance went
// read-only — a fenced old primary — is dropped and the statement retried on a fresh
// connection, which finds the new primary.
//
// Why this and not a stable address: the failover logic (internal/dbfailover) opens an
// instance for writes only after fencing every other it can reach, and every instance starts
// read-only, so "the writable one" is the primary by construction, with no address to move,
// no proxy on the data path and no propagation delay (a ConfigMap mounted in a pod takes up to
// a minute to change). It holds only because the server's database user lacks READ ONLY ADMIN
// (dbfailover.AppGrants): for such a user read_only refuses every write.
//
// This package never retries anything whose outcome is unknown: a connection lost during a
// COMMIT returns the driver's error unchanged, which the API answers with 503 (the client
// retries, and every call is idempotent). Only a read-only refusal — the server did nothing —
// is turned into driver.ErrBadConn, the signal database/sql retries on.
package primarydb

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/go-sql-driver/mysql"
)

// Connector is a database/sql driver.Connector over the cell's instances.
type Connector struct {
	addrs []string
	log   *slog.Logger

	connectors map[string]driver.Connector
	primary    atomic.Pointer[string]
}

// New returns a connector that dials cfg (its Addr is ignored) at each of addrs.
func New(cfg *mysql.Config, addrs []string, log *slog.Logger) (*Connector, error) {
	if len(addrs) == 0 {
		return nil, errors.New("primarydb: no database instance address")
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Connector{addrs: slices.Clone(addrs), log: log, connectors: map[string]driver.Connector{}}
	for _, a := range addrs {
		cc := cfg.Clone()
		cc.Addr = a
		mc, err := mysql.NewConnector(cc)
		if err != nil {
			return nil, fmt.Errorf("primarydb: connector for %s: %w", a, err)
		}
		c.connectors[a] = mc
	}
	return c, nil
}

// Primary is the address of the last writable instance a connection found ("" before one).
func (c *Connector) Primary() string {
	if p := c.primary.Load(); p != nil {
		return *p
	}
	return ""
}

// Driver implements driver.Connector.
func (c *Connector) Driver() driver.Driver { return &mysql.MySQLDriver{} }

// Connect dials the writable instance. With none writable (a failover in progress) it fails
// with an error that wraps driver.ErrBadConn, which the API answers with 503.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	order := c.addrs
	if p := c.Primary(); p != "" {
		order = append([]string{p}, slices.DeleteFunc(slices.Clone(c.addrs), func(a string) bool { return a == p })...)
	}
	var errs []error
	for _, a := range order {
		dc, err := c.connectors[a].Connect(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
			continue
		}
		ro, err := readOnly(ctx, dc)
		if err != nil || ro {
			dc.Close()
			if err == nil {
				err = errors.New("read-only")
			}
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
			continue
		}
		if prev := c.primary.Swap(&a); prev == nil || *prev != a {
			c.log.Info("database primary found", "addr", a)
		}
		return &conn{Conn: dc, addr: a, c: c}, nil
	}
	return nil, &noPrimaryError{msg: fmt.Sprintf("no writable database instance among %v: %v", c.addrs, errors.Join(errs...))}
}

func readOnly(ctx context.Context, c driver.Conn) (bool, error) {
	q, ok := c.(driver.QueryerContext)
	if !ok {
		return false, errors.New("driver connection cannot query")
	}
	rows, err := q.QueryContext(ctx, "SELECT @@global.read_only", nil)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		if err == io.EOF {
			return false, errors.New("no read_only row")
		}
		return false, err
	}
	switch v := dest[0].(type) {
	case int64:
		return v != 0, nil
	case []byte:
		return string(v) != "0", nil
	}
	return false, fmt.Errorf("read_only: unexpected %T", dest[0])
}

// noPrimaryError: no instance is writable now. It is a bad connection to database/sql (so a
// pool that lost its primary dials again on the next call) and to the API (503).
type noPrimaryError struct{ msg string }

func (e *noPrimaryError) Error() string        { return "primarydb: " + e.msg }
func (e *noPrimaryError) Is(target error) bool { return target == driver.ErrBadConn }

// readOnlyError is a statement refused because the instance is read-only: nothing was done,
// so database/sql may retry it on a new connection.
type readOnlyError struct{ err error }

func (e *readOnlyError) Error() string {
	return "primarydb: instance turned read-only (fenced): " + e.err.Error()
}
func (e *readOnlyError) Unwrap() error        { return e.err }
func (e *readOnlyError) Is(target error) bool { return target == driver.ErrBadConn }

// IsReadOnly reports MariaDB's refusals of a write on a read-only instance (1290 with
// --read-only, 1836 read-only mode).
func IsReadOnly(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1290 || me.Number == 1836)
}

// conn is one connection to the primary as it was when dialled.
type conn struct {
	driver.Conn
	addr string
	c    *Connector
	bad  atomic.Bool
}

func (cn *conn) check(err error) error {
	if err != nil && IsReadOnly(err) {
		cn.bad.Store(true)
		if p := cn.c.primary.Load(); p != nil && *p == cn.addr {
			cn.c.primary.CompareAndSwap(p, nil)
		}
		return &readOnlyError{err: err}
	}
	return err
}

// IsValid: a connection to an instance that is no longer the primary goes back to no pool.
func (cn *conn) IsValid() bool {
	if cn.bad.Load() || cn.c.Primary() != cn.addr {
		return false
	}
	if v, ok := cn.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (cn *conn) ResetSession(ctx context.Context) error {
	if !cn.IsValid() {
		return driver.ErrBadConn
	}
	if r, ok := cn.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (cn *conn) Ping(ctx context.Context) error {
	if !cn.IsValid() {
		return driver.ErrBadConn
	}
	if p, ok := cn.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (cn *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := cn.Conn.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

func (cn *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := cn.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := e.ExecContext(ctx, query, args)
	return r, cn.check(err)
}

func (cn *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := cn.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := q.QueryContext(ctx, query, args)
	return r, cn.check(err)
}

func (cn *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var st driver.Stmt
	var err error
	if p, ok := cn.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = cn.Conn.Prepare(query)
	}
	if err != nil {
		return nil, cn.check(err)
	}
	return &stmt{Stmt: st, cn: cn}, nil
}

func (cn *conn) Prepare(query string) (driver.Stmt, error) {
	return cn.PrepareContext(context.Background(), query)
}

func (cn *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var tx driver.Tx
	var err error
	if b, ok := cn.Conn.(driver.ConnBeginTx); ok {
		tx, err = b.BeginTx(ctx, opts)
	} else {
		tx, err = cn.Conn.Begin() //nolint:staticcheck // the fallback database/sql itself uses
	}
	if err != nil {
		return nil, cn.check(err)
	}
	return tx, nil
}

// stmt passes read-only refusals of prepared statements through check.
type stmt struct {
	driver.Stmt
	cn *conn
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		r, err := e.ExecContext(ctx, args)
		return r, s.cn.check(err)
	}
	return nil, errors.New("primarydb: statement without ExecContext")
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := s.Stmt.(driver.StmtQueryContext); ok {
		r, err := q.QueryContext(ctx, args)
		return r, s.cn.check(err)
	}
	return nil, errors.New("primarydb: statement without QueryContext")
}

func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

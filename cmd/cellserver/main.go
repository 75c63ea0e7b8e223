// Command cellserver is the server of one SET cell: it issues packet IDs in the cell's slots,
// runs the packet lifecycle on the cell's MariaDB through the per-packet queue, guards
// overflow with the memcached beside it, relays the outbox to the wallet, settles expired
// packets, and serves the JSON API under /v1.
//
// Every flag has a default that runs against a local MariaDB, so `cellserver` alone serves a
// one-cell development setup. SIGTERM drains: readiness turns false, in-flight requests
// finish, queued opens commit, and the outbox is relayed before the process exits.
//
// It wires the cellserver packages together and must never hold a money rule itself (those
// are packet's and store's), issue an ID in a slot its cell does not own at that second, or
// answer for a packet another cell owns (routing.Table.CheckOwner).
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/httpapi"
	"github.com/redpacketset/redpacket/cellserver/idalloc"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/primarydb"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
)

// passwordEnv holds the database password when no -mysql-password-file is given.
const passwordEnv = "RP_MYSQL_PASSWORD"

// Config is everything the flags set.
type Config struct {
	Listen         string
	MySQLDSN       string
	MySQLInstances []string
	ReadyMemcached bool
	MySQLMaxConns  int
	Memcached      string
	RoutingFile    string
	RoutingPoll    time.Duration
	Cell           string
	ServerName     string
	Region         int
	Slots          int
	ShardDatabases int
	ShardTables    int
	ShardDBPrefix  string
	CellSchema     string
	ControlSchema  string
	WalletSchema   string
	WalletDSN      string
	QueueWorkers   int
	QueueDepth     int
	BatchMax       int
	GuardLimit     int
	Expiry         time.Duration
	Retention      time.Duration
	MaxTotalCents  int64
	MaxCount       int
	SigningKeyFile string
	SigningWindow  time.Duration
	Authorities    []string
	DrainTimeout   time.Duration
	SweepEvery     time.Duration
	ReconcileEvery time.Duration
}

func parseFlags(args []string) (Config, error) {
	host, _ := os.Hostname()
	var c Config
	fs := flag.NewFlagSet("cellserver", flag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", ":8080", "HTTP listen address")
	fs.StringVar(&c.MySQLDSN, "mysql-dsn", "root@tcp(127.0.0.1:3306)/", "the cell's MariaDB (go-sql-driver DSN, no default database needed)")
	fs.Func("mysql-instances", "host:port of every database instance of the cell, comma-separated: the server writes only to the one that is writable (read_only=0) and follows it through a failover (cellserver/primarydb); empty = -mysql-dsn's address only", func(v string) error {
		for a := range strings.SplitSeq(v, ",") {
			if a = strings.TrimSpace(a); a == "" {
				return errors.New("empty address")
			}
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("%q: %w", a, err)
			}
			c.MySQLInstances = append(c.MySQLInstances, a)
		}
		return nil
	})
	var passwordFile string
	fs.StringVar(&passwordFile, "mysql-password-file", "", "file holding the password of -mysql-dsn's user (a mounted Secret); without it $"+passwordEnv+" is used when set. Keeps the password out of argv")
	fs.BoolVar(&c.ReadyMemcached, "ready-memcached", false, "report not ready while -memcached does not answer (in a pod, the readiness of the memcached beside the server)")
	fs.IntVar(&c.MySQLMaxConns, "mysql-max-conns", 64, "connection pool size; bounds this server's share of the cell DB")
	fs.StringVar(&c.Memcached, "memcached", "127.0.0.1:11211", "the memcached beside this server (guard counters, remaining-count cache); empty = local guard only")
	fs.StringVar(&c.RoutingFile, "routing-file", "", "routing.json from the routing ConfigMap; empty = this cell owns every slot")
	fs.DurationVar(&c.RoutingPoll, "routing-poll", routing.DefaultWatchInterval, "how often the routing file, and the table published in the control schema, are checked for a new version")
	fs.StringVar(&c.Cell, "cell", "cell-0", "this cell's name in the routing table")
	fs.StringVar(&c.ServerName, "server-name", host, "this server's name (worker lease holder, error-count publisher)")
	fs.IntVar(&c.Region, "region", 0, "home region encoded in packet IDs (0..3)")
	fs.IntVar(&c.Slots, "slots", ids.MaxSlots, "slot count of the set when no routing file gives it")
	fs.IntVar(&c.ShardDatabases, "shard-databases", shard.Default.Databases, "logical databases (db_xx) per cell")
	fs.IntVar(&c.ShardTables, "shard-tables", shard.Default.TablesPerDB, "tables (t_y) per logical database")
	fs.StringVar(&c.ShardDBPrefix, "shard-db-prefix", "db_", "name prefix of the logical databases")
	fs.StringVar(&c.CellSchema, "cell-schema", store.DefaultCellSchema, "per-cell schema: idempotency keys, expiry index, outbox, history")
	fs.StringVar(&c.ControlSchema, "control-schema", control.DefaultSchema, "control schema: worker leases, masks, error counts")
	fs.StringVar(&c.WalletSchema, "wallet-schema", wallet.DefaultSchema, "schema of the reference wallet ledger the outbox relays to")
	fs.StringVar(&c.WalletDSN, "wallet-dsn", "", "MariaDB of the reference wallet ledger; empty = the cell's own")
	fs.IntVar(&c.QueueWorkers, "queue-workers", 32, "per-packet FIFO workers (each holds at most one DB connection)")
	fs.IntVar(&c.QueueDepth, "queue-depth", 1024, "requests waiting per worker before overflow takes the guarded path")
	fs.IntVar(&c.BatchMax, "batch-max", 128, "most opens of one packet committed in one transaction")
	fs.IntVar(&c.GuardLimit, "guard-limit", 8, "concurrent direct DB transactions per packet on the overflow path")
	fs.DurationVar(&c.Expiry, "expiry", 24*time.Hour, "how long a paid packet stays open (and an unpaid one waits for payment)")
	fs.DurationVar(&c.Retention, "retention", 7*24*time.Hour, "settled packets move to cold tables after this")
	fs.Int64Var(&c.MaxTotalCents, "max-total-cents", packet.DefaultLimits.MaxTotalCents, "largest packet total")
	fs.IntVar(&c.MaxCount, "max-count", packet.DefaultLimits.MaxCount, "most shares in one packet")
	fs.StringVar(&c.SigningKeyFile, "signing-key-file", "", "HMAC key file; when set every /v1 request must be signed")
	fs.DurationVar(&c.SigningWindow, "signing-window", signing.DefaultWindow, "accepted clock skew of signed requests")
	fs.Func("authority", "host:port callers address this server by, repeatable or comma-separated; signed requests for any other server are refused (default: the address each connection arrived at, which is how the gateway reaches servers by IP)", func(v string) error {
		for a := range strings.SplitSeq(v, ",") {
			if a = strings.TrimSpace(a); a == "" {
				return errors.New("empty authority")
			}
			c.Authorities = append(c.Authorities, a)
		}
		return nil
	})
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 25*time.Second, "how long shutdown waits for queues and outbox")
	fs.DurationVar(&c.SweepEvery, "sweep-every", time.Second, "expiry sweeper period")
	fs.DurationVar(&c.ReconcileEvery, "reconcile-every", 0, "compare packets created in the last 2×expiry+1d (payment window, open window, a day's margin) with the wallet ledger and requeue missing effects; 0 = off (one server per cell is enough)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if c.ServerName == "" {
		return Config{}, errors.New("-server-name is required (no hostname)")
	}
	if c.ReadyMemcached && c.Memcached == "" {
		return Config{}, errors.New("-ready-memcached needs -memcached")
	}
	password, err := readPassword(passwordFile)
	if err != nil {
		return Config{}, err
	}
	if c.MySQLDSN, err = withPassword(c.MySQLDSN, password); err != nil {
		return Config{}, err
	}
	return c, nil
}

// readPassword is the password from file, else from $RP_MYSQL_PASSWORD; "" when neither is
// given. A named file that is missing or empty is an error: falling back to a password-less
// login would fail later with a misleading "access denied".
func readPassword(file string) (string, error) {
	if file == "" {
		return os.Getenv(passwordEnv), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("-mysql-password-file: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("-mysql-password-file %s is empty", file)
	}
	return p, nil
}

// withPassword sets the password of a go-sql-driver DSN.
func withPassword(dsn, password string) (string, error) {
	if password == "" {
		return dsn, nil
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("-mysql-dsn: %w", err)
	}
	if cfg.Passwd != "" {
		return "", errors.New("-mysql-dsn has a password and another is given by -mysql-password-file or $" + passwordEnv + ": give one")
	}
	cfg.Passwd = password
	return cfg.FormatDSN(), nil
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(log)
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, cfg, log, nil); err != nil {
		log.Error("cellserver failed", "err", err)
		os.Exit(1)
	}
}

// openCellDB opens the pool on the cell's database: on -mysql-dsn's address, or with
// -mysql-instances on whichever instance is the writable primary.
func openCellDB(cfg Config, log *slog.Logger) (*sql.DB, error) {
	if len(cfg.MySQLInstances) == 0 {
		return store.OpenDB(cfg.MySQLDSN, cfg.MySQLMaxConns)
	}
	mc, err := store.SessionConfig(cfg.MySQLDSN)
	if err != nil {
		return nil, err
	}
	conn, err := primarydb.New(mc, cfg.MySQLInstances, log)
	if err != nil {
		return nil, err
	}
	return store.OpenConnector(conn, cfg.MySQLMaxConns), nil
}

// Run serves until ctx ends, then drains. ready, when not nil, receives the bound address once
// the server accepts requests (tests listen on :0).
func Run(ctx context.Context, cfg Config, log *slog.Logger, ready chan<- string) error {
	layout := shard.Layout{Databases: cfg.ShardDatabases, TablesPerDB: cfg.ShardTables, DatabasePrefix: cfg.ShardDBPrefix}
	if err := layout.Validate(); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	db, err := openCellDB(cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	startCtx, cancelStart := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelStart()
	if err := prepareControl(startCtx, db, cfg, layout, log); err != nil {
		return err
	}
	var watcher *routing.Watcher
	if cfg.RoutingFile != "" {
		if watcher, err = routing.NewWatcher(cfg.RoutingFile, cfg.RoutingPoll, log); err != nil {
			return fmt.Errorf("routing: %w", err)
		}
	}
	c, closeCell, err := assemble(ctx, startCtx, cfg, layout, db, watcher, reg, log)
	defer closeCell()
	if err != nil {
		return err
	}
	api, err := newAPI(cfg, c, db, reg, log)
	if err != nil {
		return err
	}
	bg := c.startBackground(cfg, db, watcher, log)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		bg.abort()
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("cellserver serving", "addr", ln.Addr().String(), "cell", cfg.Cell, "server", cfg.ServerName, "worker", c.alloc.Worker())
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		bg.abort()
		return fmt.Errorf("serve: %w", err)
	}
	c.drain(cfg, srv, bg, log)
	return nil
}

// prepareControl waits for the database and checks the control schema before anything else
// reads or creates a table.
func prepareControl(ctx context.Context, db *sql.DB, cfg Config, layout shard.Layout, log *slog.Logger) error {
	if err := waitDB(ctx, db, log); err != nil {
		return err
	}
	if err := control.EnsureSchema(ctx, db, cfg.ControlSchema); err != nil {
		return fmt.Errorf("control schema: %w", err)
	}
	// Before any table is created or read: with another layout this server would create
	// empty tables and look for the cell's packets in them.
	if _, err := control.CheckLayout(ctx, db, cfg.ControlSchema, layout, cfg.ServerName); err != nil {
		return fmt.Errorf("shard layout: %w", err)
	}
	return nil
}

// cell is the data plane of this server, wired together.
type cell struct {
	brk       *breaker.Breaker
	st        *store.Store
	ledger    *wallet.Ledger
	alloc     *idalloc.Allocator
	svc       *packet.Service
	q         *queue.Queue
	relay     *wallet.Relay
	pingCache func() error
	// routes is the routing table in force (nil without -routing-file): served to gateways.
	routes   func() *routing.Table
	draining atomic.Bool // readiness fails from the first moment of a drain
}

// assemble builds the data plane on db: breaker, store (with its schema), wallet ledger, ID
// allocator, guard and grab cache, packet service, queue and outbox relay. The returned close
// releases what it opened, in reverse order; it is safe to call after an error.
func assemble(ctx, startCtx context.Context, cfg Config, layout shard.Layout, db *sql.DB, watcher *routing.Watcher, reg *prometheus.Registry, log *slog.Logger) (*cell, func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	var routes func() *routing.Table
	var confirmed func() time.Time
	if watcher != nil {
		routes, confirmed = watcher.Current, watcher.Confirmed
	}
	c := &cell{routes: routes}
	var err error
	c.brk, err = breaker.New(breaker.Config{Layout: layout, DB: db, Schema: cfg.ControlSchema, Server: cfg.ServerName, Registerer: reg, Logger: log})
	if err != nil {
		return nil, closeAll, err
	}
	c.st, err = store.New(db, store.Config{Layout: layout, CellSchema: cfg.CellSchema, Retention: cfg.Retention, Observer: c.brk, Registerer: reg})
	if err != nil {
		return nil, closeAll, err
	}
	// A first start of the full 100×10 layout creates ~6,000 tables (~25 s on a 2-core
	// test box); later starts only check them.
	schemaCtx, cancelSchema := context.WithTimeout(ctx, 10*time.Minute)
	err = c.st.EnsureSchema(schemaCtx, time.Now())
	cancelSchema()
	if err != nil {
		return nil, closeAll, err
	}
	walletDB := db
	if cfg.WalletDSN != "" {
		if walletDB, err = store.OpenDB(cfg.WalletDSN, 16); err != nil {
			return nil, closeAll, fmt.Errorf("wallet db: %w", err)
		}
		closers = append(closers, func() { walletDB.Close() })
	}
	if c.ledger, err = wallet.NewLedger(walletDB, cfg.WalletSchema); err != nil {
		return nil, closeAll, err
	}
	if err := c.ledger.EnsureSchema(startCtx); err != nil {
		return nil, closeAll, err
	}
	c.alloc, err = idalloc.NewAllocator(startCtx, idalloc.AllocatorConfig{DB: db, Control: cfg.ControlSchema, Server: cfg.ServerName,
		Region: cfg.Region, Layout: layout, SlotCount: cfg.Slots, Cell: cfg.Cell, Routing: routes, RoutingConfirmed: confirmed, Breaker: c.brk,
		Registerer: reg, Logger: log})
	if err != nil {
		return nil, closeAll, fmt.Errorf("id allocator: %w", err)
	}
	closers = append(closers, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.alloc.Close(cctx); err != nil {
			log.Warn("release id lease", "err", err)
		}
	})

	g, cache, pingCache, closeGuard, err := newGuard(cfg, reg, log)
	if err != nil {
		return nil, closeAll, err
	}
	closers = append(closers, closeGuard)
	c.pingCache = sustained(pingCache, memcachedGrace, time.Now)
	limits := packet.DefaultLimits
	limits.MaxTotalCents, limits.MaxCount = cfg.MaxTotalCents, cfg.MaxCount
	pcfg := packet.Config{Limits: limits, Expiry: cfg.Expiry, Cache: cache, Log: log, Region: cfg.Region}
	if watcher != nil {
		pcfg.Owns = func(id int64) error { return watcher.Current().CheckOwner(cfg.Cell, id) }
		pcfg.Home = func(key string, now time.Time) error { return watcher.Current().CheckHome(key, cfg.Cell, now) }
	}
	c.svc = packet.New(c.st, c.alloc, pcfg)
	for _, col := range c.svc.Collectors() {
		if err := reg.Register(col); err != nil {
			return nil, closeAll, fmt.Errorf("register packet metrics: %w", err)
		}
	}
	if c.q, err = queue.New(c.svc, queue.Config{Workers: cfg.QueueWorkers, Depth: cfg.QueueDepth, BatchMax: cfg.BatchMax, Guard: g, Registerer: reg}); err != nil {
		return nil, closeAll, err
	}
	if c.relay, err = wallet.NewRelay(c.st, c.ledger, c.st, wallet.RelayConfig{Log: log, Registerer: reg}); err != nil {
		return nil, closeAll, err
	}
	// A packet waits Expiry for payment and is then open for Expiry again.
	if err := registerStatusGauges(reg, c.st, watcher, 2*cfg.Expiry); err != nil {
		return nil, closeAll, err
	}
	return c, closeAll, nil
}

// newAPI is the HTTP API over the cell: ready while not draining and while the database (and,
// with -ready-memcached, memcached) answers; /v1 signed when a key is configured.
func newAPI(cfg Config, c *cell, db *sql.DB, reg *prometheus.Registry, log *slog.Logger) (*httpapi.API, error) {
	apiCfg := httpapi.Config{Service: c.svc, Queue: c.q, Registerer: reg, Gatherer: reg, Log: log, Routing: c.routes,
		Ready: func(ctx context.Context) error {
			if c.draining.Load() {
				return errors.New("draining")
			}
			if err := db.PingContext(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			if cfg.ReadyMemcached {
				if err := c.pingCache(); err != nil {
					return fmt.Errorf("memcached %s: %w", cfg.Memcached, err)
				}
			}
			return nil
		}}
	if cfg.SigningKeyFile != "" {
		key, err := signing.LoadKey(cfg.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("signing key: %w", err)
		}
		// The verifier answers only to this server's own authority, so a request signed for a
		// sibling server of the cell is refused here even though its ID is not in this
		// server's replay cache (cellserver/signing).
		refused := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_signing_refused_total",
			Help: "Signed-request refusals per reason; wrong_server is a replay from a sibling server or a caller using an address missing from -authority.",
		}, []string{"reason"})
		if err := reg.Register(refused); err != nil {
			return nil, fmt.Errorf("register signing metrics: %w", err)
		}
		apiCfg.V1Middleware = signing.NewVerifier(key, cfg.SigningWindow, signing.WithAuthorities(cfg.Authorities...),
			signing.WithOnReject(func(reason string) { refused.WithLabelValues(reason).Inc() })).Middleware
	}
	return httpapi.New(apiCfg)
}

// background is the server's loops: routing reload and epoch reports, breaker, sweeper,
// table maintenance, reconciliation, and the outbox relay, which stops last.
type background struct {
	stopLoops func()
	wg        sync.WaitGroup
	stopRelay func()
	relayDone chan struct{}
}

// abort stops every loop without waiting: the server did not start serving.
func (b *background) abort() {
	b.stopLoops()
	b.stopRelay()
}

func (c *cell) startBackground(cfg Config, db *sql.DB, watcher *routing.Watcher, log *slog.Logger) *background {
	b := &background{relayDone: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	b.stopLoops = stop
	spawn := func(f func(context.Context)) { b.wg.Add(1); go func() { defer b.wg.Done(); f(ctx) }() }
	if watcher != nil {
		spawn(watcher.Run)
		spawn(func(ctx context.Context) { reportEpochs(ctx, db, cfg.ControlSchema, cfg.ServerName, watcher, log) })
		spawn(func(ctx context.Context) { followPublished(ctx, db, cfg.ControlSchema, watcher, cfg.RoutingPoll, log) })
	}
	spawn(c.brk.Run)
	spawn(func(ctx context.Context) {
		probeMasked(ctx, c.alloc.Masks, c.st.ProbeTable, c.st.Layout(), maskProbeEvery, log)
	})
	spawn(func(ctx context.Context) { c.svc.RunSweeper(ctx, cfg.SweepEvery) })
	spawn(func(ctx context.Context) { c.st.Maintain(ctx, time.Hour, time.Now, log) })
	if cfg.ReconcileEvery > 0 {
		spawn(func(ctx context.Context) {
			// The packet service waits Expiry for payment and then keeps a packet open for
			// Expiry again.
			reconcileLoop(ctx, c.st, c.ledger, cfg.ReconcileEvery, wallet.ReconcileWindow(cfg.Expiry, cfg.Expiry), log)
		})
	}
	relayCtx, stopRelay := context.WithCancel(context.Background())
	b.stopRelay = stopRelay
	go func() { defer close(b.relayDone); c.relay.Run(relayCtx) }()
	return b
}

// drain stops being ready, finishes in-flight requests, commits what is queued, stops the
// loops, relays the outbox and publishes the last error counts, within -drain-timeout.
func (c *cell) drain(cfg Config, srv *http.Server, bg *background, log *slog.Logger) {
	log.Info("draining")
	c.draining.Store(true)
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := c.q.Close(dctx); err != nil {
		log.Warn("queue drain", "err", err)
	}
	bg.stopLoops()
	bg.wg.Wait()
	bg.stopRelay()
	<-bg.relayDone
	if err := c.relay.Drain(dctx); err != nil {
		log.Warn("outbox drain incomplete; the next server relays the rest", "err", err)
	}
	if err := c.brk.Publish(dctx); err != nil {
		log.Warn("publish error counts", "err", err)
	}
	log.Info("drained")
}

// reconcileLoop repairs drift between the cell's records and the ledger every interval.
func reconcileLoop(ctx context.Context, st *store.Store, l *wallet.Ledger, every, window time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		n, rep, err := wallet.Reconcile(ctx, st, l, now.Add(-window), now)
		switch {
		case err != nil:
			log.Error("reconcile", "err", err)
		case !rep.OK():
			log.Error("reconcile found drift it cannot repair", "violations", len(rep.Violations), "first", rep.Violations[0])
		case n > 0:
			log.Warn("reconcile requeued missing effects", "count", n)
		}
	}
}

// waitDB polls the database until it answers: in a pod the server may start before MySQL.
func waitDB(ctx context.Context, db interface{ PingContext(context.Context) error }, log *slog.Logger) error {
	for {
		err := db.PingContext(ctx)
		if err == nil {
			return nil
		}
		log.Warn("waiting for database", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("database not reachable: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// memcachedGrace is how long the memcached beside the server may go unanswered before the
// server reports not ready. One slow answer on a loaded node must not take the server (for a
// gateway, often its whole cell) out of rotation: the grab guard falls back to local counts
// meanwhile, and the database stays the authority on every share.
const memcachedGrace = 5 * time.Second

// sustained wraps a check so that it fails only once the check has not passed for grace, and
// until it first passes: a sidecar that never came up keeps the pod unready, one that stutters
// does not.
func sustained(check func() error, grace time.Duration, now func() time.Time) func() error {
	var mu sync.Mutex
	var lastOK time.Time
	return func() error {
		err := check()
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			lastOK = now()
			return nil
		}
		if !lastOK.IsZero() && now().Sub(lastOK) < grace {
			return nil
		}
		return err
	}
}

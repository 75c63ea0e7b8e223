package localset

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/serverargs"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/controllers/plan"
	"github.com/redpacketset/redpacket/controllers/setplan"
	"github.com/redpacketset/redpacket/internal/dbfailover"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// Options configure Up.
type Options struct {
	// Set is the RedPacketSet to run, defaults applied (LoadManifest does that).
	Set *rpv1.RedPacketSet
	// DataDir holds everything of this SET; created if absent.
	DataDir string
	// MaxServersPerCell caps the planner's servers per cell to what one machine runs; default 2.
	MaxServersPerCell int
	// BinDir holds prebuilt cellserver and gateway binaries; empty builds them from ModuleDir
	// into DataDir/bin.
	BinDir string
	// ModuleDir is the repository root; empty searches upwards from the working directory.
	ModuleDir string
	// InstallDeps runs hack/install-deps.sh when mariadbd or memcached is missing.
	InstallDeps bool
	// ReadyTimeout bounds the wait for every component to be ready; default 10 minutes (the
	// first start of a cell with the full 100×10 layout creates thousands of tables).
	ReadyTimeout time.Duration
	// BufferPool is each MariaDB's innodb_buffer_pool_size; default "128M".
	BufferPool string
	// GatewayDrainDelay is the gateway's -drain-delay; default 1s (no load balancer to leave).
	GatewayDrainDelay time.Duration
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

// Component is one running piece, for the table `localset up` prints.
type Component struct {
	Kind string // mariadb, memcached, cellserver, gateway
	Name string
	Cell string
	Zone string
	Addr string // host:port or URL
	Log  string
}

// SET is a running local SET.
type SET struct {
	opts      Options
	set       *rpv1.RedPacketSet
	plan      plan.Plan
	state     *State
	table     *routing.Table
	running   []string // cells that run (every cell any epoch names)
	planned   map[string]int
	started   map[string]int
	bin       string
	goEnv     []string // GOMAXPROCS of the servers and the gateway (goMaxProcsEnv)
	lock      *os.File
	log       *slog.Logger
	dbs       map[string]*cellDB
	servers   map[string][]*proc
	zones     map[*proc]string
	gateway   *proc
	mu        sync.Mutex // guards dbs while cells start in parallel
	stateMu   sync.Mutex // guards state (failover histories are saved while the SET runs)
	stopOnce  sync.Once
	stopErr   error
	dataDir   string
	keyPath   string
	routePath string
}

// Up plans the set, starts every component in dependency order (databases, caches, servers,
// gateway), waits until each is ready, and returns the running SET. On error everything it
// started is stopped again.
func Up(ctx context.Context, opts Options) (_ *SET, err error) {
	if opts.Set == nil {
		return nil, errors.New("localset: Options.Set is required")
	}
	if opts.DataDir == "" {
		return nil, errors.New("localset: Options.DataDir is required")
	}
	if opts.MaxServersPerCell <= 0 {
		opts.MaxServersPerCell = 2
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 10 * time.Minute
	}
	if opts.BufferPool == "" {
		opts.BufferPool = "128M"
	}
	if opts.GatewayDrainDelay <= 0 {
		opts.GatewayDrainDelay = time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	dir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"", "logs", "cells"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	s := &SET{opts: opts, set: opts.Set, log: opts.Log, dataDir: dir,
		keyPath: filepath.Join(dir, KeyFile), routePath: filepath.Join(dir, RoutingFile),
		dbs:     map[string]*cellDB{},
		servers: map[string][]*proc{}, zones: map[*proc]string{}, planned: map[string]int{}, started: map[string]int{}}
	if s.lock, err = lockDir(dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	if err := s.startAll(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// prepare plans, assigns ports, writes routing.json and the signing key, and builds binaries.
func (s *SET) prepare(ctx context.Context) error {
	names, err := s.planCells()
	if err != nil {
		return err
	}
	if err := s.decideRouting(names); err != nil {
		return err
	}
	if err := s.assignState(); err != nil {
		return err
	}
	if err := s.publishRouting(); err != nil {
		return err
	}
	if err := ensureKey(s.keyPath); err != nil {
		return err
	}
	return s.buildBinaries(ctx)
}

// planCells runs the operator's planner on the manifest and returns the planned cells' names.
func (s *SET) planCells() ([]string, error) {
	p, err := plan.Compute(setplan.PlanInput(s.set))
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	s.plan = p
	names := make([]string, len(p.Cells))
	for i, c := range p.Cells {
		names[i] = c.Name
		s.planned[c.Name] = c.Servers
	}
	return names, nil
}

// decideRouting continues the data directory's routing table (if any) with the planned cells.
func (s *SET) decideRouting(names []string) error {
	var prev *routing.Table
	if _, err := os.Stat(s.routePath); err == nil {
		if prev, err = routing.Load(s.routePath); err != nil {
			return fmt.Errorf("the data directory's routing table is unreadable (fix or remove %s): %w", s.routePath, err)
		}
		if prev.Set != s.set.Name {
			return fmt.Errorf("data directory %s holds set %q, the manifest names %q: use another -data", s.dataDir, prev.Set, s.set.Name)
		}
	}
	var err error
	s.table, s.running, err = NextRouting(prev, s.set.Name, int(s.set.Spec.SlotCount), names, time.Now(), s.set.RebalanceDelayOrDefault())
	return err
}

// assignState sizes every running cell, keeps the ports and layout of an earlier run, and
// saves the state.
func (s *SET) assignState() error {
	prev, err := LoadState(s.dataDir)
	if errors.Is(err, ErrNoState) {
		prev = nil
	} else if err != nil {
		return err
	}
	layout := LayoutState{Databases: int(s.set.Spec.Template.Shards.Databases), TablesPerDB: int(s.set.Spec.Template.Shards.TablesPerDatabase), Prefix: "db_"}
	if prev != nil && prev.Layout != layout {
		return fmt.Errorf("shards: the data directory's cells use %d×%d, the manifest asks %d×%d; the layout of existing cells cannot change",
			prev.Layout.Databases, prev.Layout.TablesPerDB, layout.Databases, layout.TablesPerDB)
	}
	var need []CellNeed
	for _, c := range s.running {
		planned, ok := s.planned[c]
		if !ok {
			planned = 1 // draining: serves old packets only
			s.planned[c] = planned
		}
		s.started[c] = min(planned, s.opts.MaxServersPerCell)
		need = append(need, CellNeed{Name: c, Servers: s.started[c]})
	}
	st, err := AssignPorts(prev, need, testenv.FreePort)
	if err != nil {
		return err
	}
	if n := s.dbInstances(); n > 1 {
		for _, c := range s.running {
			if err := AssignReplicaPorts(st, c, n, testenv.FreePort); err != nil {
				return err
			}
		}
	}
	st.Set, st.SlotCount, st.Layout = s.set.Name, int(s.set.Spec.SlotCount), layout
	st.CellSchema, st.ControlSchema, st.WalletSchema = store.DefaultCellSchema, control.DefaultSchema, wallet.DefaultSchema
	st.MaxCount, st.MaxTotalCents = int(s.set.Spec.Limits.MaxCount), s.set.Spec.Limits.MaxTotalCents
	if st.CreatedAt.IsZero() {
		st.CreatedAt = time.Now().UTC().Truncate(time.Second)
	}
	if err := st.Save(s.dataDir); err != nil {
		return err
	}
	s.state = st
	return nil
}

// publishRouting writes routing.json with each running cell's started servers as endpoints.
func (s *SET) publishRouting() error {
	s.table.Endpoints = map[string][]string{}
	for _, c := range s.running {
		cs, _ := s.state.Cell(c)
		s.table.Endpoints[c] = cs.ServerURLs()[:s.started[c]]
	}
	data, err := s.table.Marshal()
	if err != nil {
		return err
	}
	if err := writeAtomic(s.routePath, data, 0o644); err != nil {
		return fmt.Errorf("write routing table: %w", err)
	}
	return nil
}

// buildBinaries installs missing Debian packages when asked and builds the cell server and
// gateway, unless the options name prebuilt ones.
func (s *SET) buildBinaries(ctx context.Context) error {
	if s.opts.InstallDeps {
		if err := installDeps(ctx, s.opts.ModuleDir, s.log); err != nil {
			return err
		}
	}
	s.bin = s.opts.BinDir
	if s.bin == "" {
		s.bin = filepath.Join(s.dataDir, "bin")
		if err := Build(ctx, s.opts.ModuleDir, s.bin, s.log); err != nil {
			return err
		}
	}
	return nil
}

// startAll brings the tiers up bottom to top, each tier's members in parallel.
func (s *SET) startAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReadyTimeout)
	defer cancel()
	n := s.dbInstances()
	err := parallel(s.running, func(c string) error {
		cs, _ := s.state.Cell(c)
		d := s.newCellDB(cs, n)
		if err := d.checkUpgrade(cs); err != nil {
			return err
		}
		s.setDB(c, d)
		return d.start(ctx)
	})
	if err != nil {
		return err
	}

	zones := s.set.Spec.Zones
	for _, c := range s.running {
		cs, _ := s.state.Cell(c)
		for i := range s.started[c] {
			p := &proc{
				name:    fmt.Sprintf("%s-server-%d", c, i),
				path:    filepath.Join(s.bin, "cellserver"),
				args:    s.serverArgs(cs, i),
				logPath: filepath.Join(s.dataDir, "logs", fmt.Sprintf("%s-server-%d.log", c, i)),
				log:     s.log,
			}
			s.servers[c] = append(s.servers[c], p)
			s.zones[p] = zones[i%len(zones)]
		}
	}
	var all []*proc
	for _, c := range s.running {
		all = append(all, s.servers[c]...)
	}
	s.goEnv = goMaxProcsEnv(runtime.NumCPU(), len(all)+1, os.Getenv("GOMAXPROCS")) // the servers and the gateway
	for _, p := range all {
		p.env = s.goEnv
	}
	// What the servers will create is read from the databases, not guessed from whether a
	// datadir exists: a first start interrupted half way, or a restart on a new day, creates
	// some tables; a plain restart creates none and says nothing about tables.
	now := time.Now()
	counts, err := s.countAll(ctx, s.running, now)
	if err != nil {
		// Only what localset says depends on the count; the servers create what is missing.
		s.log.Warn("could not count the cells' shard tables", "err", err)
		counts = nil
	}
	var creating []string
	for _, c := range counts {
		if !c.complete() {
			creating = append(creating, c.cell)
		}
	}
	msg, attrs := startMessage(counts, s.state.Layout)
	s.log.Info(msg, append([]any{"servers", len(all)}, attrs...)...)
	var ready atomic.Int64
	stopProgress := progress(s.log, "waiting for cell servers to become ready", func() []any {
		if len(creating) > 0 {
			// Until the first server of a cell is ready, its tables are what it is doing.
			creating = s.logTableProgress(ctx, s.log, creating, now)
		}
		return []any{"ready", ready.Load(), "of", len(all)}
	})
	err = parallel(all, func(p *proc) error {
		if err := p.start(); err != nil {
			return err
		}
		if err := waitReady(ctx, p, serverURL(p.args)+"/readyz"); err != nil {
			return err
		}
		ready.Add(1)
		return nil
	})
	stopProgress()
	if err != nil {
		return err
	}

	s.gateway = &proc{
		name: "gateway",
		path: filepath.Join(s.bin, "gateway"),
		args: []string{
			"-listen=127.0.0.1:" + strconv.Itoa(s.state.GatewayPort),
			"-routing-file=" + s.routePath,
			"-signing-key-file=" + s.keyPath,
			"-region=" + strconv.Itoa(int(s.set.Spec.Region)),
			"-drain-delay=" + s.opts.GatewayDrainDelay.String(),
			"-probe-interval=500ms",
		},
		logPath: filepath.Join(s.dataDir, "logs", "gateway.log"),
		log:     s.log,
		env:     s.goEnv,
	}
	if err := s.gateway.start(); err != nil {
		return err
	}
	return waitReady(ctx, s.gateway, s.state.GatewayURL()+"/readyz")
}

func (s *SET) setDB(cell string, d *cellDB) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dbs[cell] = d
}

// dbInstances is spec.template.mysql.replicas: database instances per cell.
func (s *SET) dbInstances() int { return max(int(s.set.Spec.Template.MySQL.Replicas), 1) }

// serverArgs are the flags the operator's server Deployment passes, pointed at local files.
func (s *SET) serverArgs(cs *CellState, i int) []string {
	t := s.set.Spec.Template
	lim := s.set.Spec.Limits
	args := serverargs.Args{
		Listen:         "127.0.0.1:" + strconv.Itoa(cs.ServerPorts[i]),
		MySQLDSN:       s.serverDSN(cs),
		Memcached:      "127.0.0.1:" + strconv.Itoa(cs.MemcachedPort),
		RoutingFile:    s.routePath,
		Cell:           cs.Name,
		ServerName:     fmt.Sprintf("%s-server-%d", cs.Name, i),
		Slots:          int(s.set.Spec.SlotCount),
		Region:         int(s.set.Spec.Region),
		ShardDatabases: s.state.Layout.Databases,
		ShardTables:    s.state.Layout.TablesPerDB,
		ShardDBPrefix:  s.state.Layout.Prefix,
		CellSchema:     s.state.CellSchema,
		ControlSchema:  s.state.ControlSchema,
		WalletSchema:   s.state.WalletSchema,
		QueueWorkers:   int(t.Queue.Workers),
		QueueDepth:     int(t.Queue.Depth),
		BatchMax:       int(t.Queue.BatchMax),
		GuardLimit:     int(t.Guard.Limit),
		Expiry:         lim.ExpiryOrDefault(),
		MaxTotalCents:  lim.MaxTotalCents,
		MaxCount:       int(lim.MaxCount),
		SigningKeyFile: s.keyPath,
	}
	if s.dbInstances() > 1 {
		args.MySQLInstances = cs.InstanceAddrs()
	}
	return args.Flags()
}

// serverDSN is root on the single instance, or on a replicated cell the servers' own user
// (which read_only refuses) with every instance's address after it in the flags.
func (s *SET) serverDSN(cs *CellState) string {
	if s.dbInstances() == 1 {
		return cs.DSN()
	}
	return cs.dsnFor(AppUser, cs.MySQLPort)
}

func serverURL(args []string) string {
	for _, a := range args {
		if addr, ok := strings.CutPrefix(a, "-listen="); ok {
			return "http://" + addr
		}
	}
	return ""
}

// Stop ends the SET in reverse order: the gateway first (no new requests), then the servers
// (each drains its queues and outbox on SIGTERM), then memcached and MariaDB. It is safe to
// call more than once.
func (s *SET) Stop() error {
	s.stopOnce.Do(func() {
		// Each tier is logged as it starts and ends, so the order of a stop can be read back
		// from the log (and is, by the tests).
		var errs []error
		if s.gateway != nil {
			s.log.Info("stop: gateway (no new requests)")
			errs = append(errs, s.gateway.stop(s.opts.GatewayDrainDelay+20*time.Second))
			s.log.Info("stop: gateway stopped")
		}
		var all []*proc
		for _, ps := range s.servers {
			all = append(all, ps...)
		}
		if len(all) > 0 {
			s.log.Info("stop: cell servers (each drains its queues and outbox)", "servers", len(all))
			errs = append(errs, parallel(all, func(p *proc) error { return p.stop(40 * time.Second) }))
			s.log.Info("stop: cell servers stopped")
		}
		cells := slices.Collect(func(yield func(string) bool) {
			for c := range s.dbs {
				if !yield(c) {
					return
				}
			}
		})
		if len(cells) > 0 {
			s.log.Info("stop: memcached and MariaDB", "cells", len(cells))
			errs = append(errs, parallel(cells, func(c string) error {
				return s.dbs[c].stop()
			}))
			s.log.Info("stop: memcached and MariaDB stopped")
		}
		if s.lock != nil {
			_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
			s.lock.Close()
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// State is the data directory's state (ports, layout, schemas).
func (s *SET) State() *State { return s.state }

// GatewayURL is where clients send requests.
func (s *SET) GatewayURL() string { return s.state.GatewayURL() }

// Routing is the routing table the SET runs with.
func (s *SET) Routing() *routing.Table { return s.table }

// Plan is the planner's sizing of the manifest.
func (s *SET) Plan() plan.Plan { return s.plan }

// Servers reports, per running cell, the planned and the started server count.
func (s *SET) Servers(cell string) (planned, started int) { return s.planned[cell], s.started[cell] }

// Zones are the manifest's zones.
func (s *SET) Zones() []string { return slices.Clone(s.set.Spec.Zones) }

// Cells are the running cells, manifest order first.
func (s *SET) Cells() []string { return slices.Clone(s.running) }

// KillServer sends SIGKILL to a cell server, as a crash would; the supervisor restarts it
// after a backoff, as Kubernetes would.
func (s *SET) KillServer(cell string, i int) error {
	ps := s.servers[cell]
	if i < 0 || i >= len(ps) {
		return fmt.Errorf("no server %d in cell %s", i, cell)
	}
	return ps[i].signal(syscall.SIGKILL)
}

// KillDatabase sends SIGKILL to database instance i of a cell, as a crash would; the
// supervisor fails over (replicated cells) and restarts it.
func (s *SET) KillDatabase(cell string, i int) error {
	d := s.dbs[cell]
	if d == nil || i < 0 || i >= len(d.procs) {
		return fmt.Errorf("no database instance %d in cell %s", i, cell)
	}
	return d.procs[i].Kill()
}

// KillMemcached sends SIGKILL to a cell's memcached; the supervisor restarts it.
func (s *SET) KillMemcached(cell string) error {
	d := s.dbs[cell]
	if d == nil {
		return fmt.Errorf("no cell %s", cell)
	}
	return d.cache.Kill()
}

// DatabasePrimary is the cell's primary database instance as recorded.
func (s *SET) DatabasePrimary(cell string) int { return s.cellState(cell).PrimaryIndex() }

// DatabaseState is the last failover decision of a replicated cell (zero for one instance).
func (s *SET) DatabaseState(cell string) dbfailover.Decision {
	if d := s.dbs[cell]; d != nil && d.mgr != nil {
		return d.mgr.Last()
	}
	return dbfailover.Decision{}
}

// Components lists every piece with where it listens and logs.
func (s *SET) Components() []Component {
	var out []Component
	for _, c := range s.running {
		cs, _ := s.state.Cell(c)
		if d := s.dbs[c]; d != nil && len(d.procs) > 1 {
			primary := s.cellState(c).PrimaryIndex()
			for i := range d.procs {
				role := "replica"
				if i == primary {
					role = "primary"
				}
				out = append(out, Component{Kind: "mariadb", Name: fmt.Sprintf("%s-mysql-%d (%s)", c, i, role), Cell: c,
					Addr: fmt.Sprintf("127.0.0.1:%d", d.ports[i]), Log: filepath.Join(d.dirs[i], "mariadbd.log")})
			}
		} else {
			dbDir := filepath.Join(s.dataDir, "cells", c, "mysql")
			out = append(out, Component{Kind: "mariadb", Name: c + "-mysql", Cell: c, Addr: fmt.Sprintf("127.0.0.1:%d", cs.MySQLPort), Log: filepath.Join(dbDir, "mariadbd.log")})
		}
		out = append(out, Component{Kind: "memcached", Name: c + "-memcached", Cell: c, Addr: fmt.Sprintf("127.0.0.1:%d", cs.MemcachedPort)})
		for _, p := range s.servers[c] {
			out = append(out, Component{Kind: "cellserver", Name: p.name, Cell: c, Zone: s.zones[p], Addr: serverURL(p.args), Log: p.logPath})
		}
	}
	if s.gateway != nil {
		out = append(out, Component{Kind: "gateway", Name: "gateway", Addr: s.GatewayURL(), Log: s.gateway.logPath})
	}
	return out
}

// lockDir takes an exclusive lock on the data directory, so two SETs never share datadirs.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another localset (lock: %w)", dir, err)
	}
	return f, nil
}

// ensureKey creates the signing key once; later runs reuse it.
func ensureKey(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("signing key: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	return writeAtomic(path, []byte(hex.EncodeToString(raw)+"\n"), 0o600)
}

// writeAtomic replaces path so readers (the routing watchers) never see a half-written file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ModuleRoot finds the repository root upwards from the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/redpacketset/redpacket\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the redpacket repository (no go.mod for github.com/redpacketset/redpacket above the working directory)")
		}
		dir = parent
	}
}

// Build compiles cellserver and gateway into binDir.
func Build(ctx context.Context, moduleDir, binDir string, log *slog.Logger) error {
	if moduleDir == "" {
		var err error
		if moduleDir, err = ModuleRoot(); err != nil {
			return fmt.Errorf("build binaries: %w", err)
		}
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("build binaries: %w", err)
	}
	goBin := testenv.GoTool()
	log.Info("building cellserver and gateway (the first build takes a minute or two)", "into", binDir)
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", binDir+string(filepath.Separator), "./cmd/cellserver", "./cmd/gateway")
	cmd.Dir = moduleDir
	stop := progress(log, "still building cellserver and gateway", nil)
	out, err := cmd.CombinedOutput()
	stop()
	if err != nil {
		return fmt.Errorf("go build ./cmd/cellserver ./cmd/gateway: %w\n%s", err, out)
	}
	return nil
}

// installDeps runs the repository's installer when a daemon is missing.
func installDeps(ctx context.Context, moduleDir string, log *slog.Logger) error {
	if haveBinary("mariadbd", "mysqld") && haveBinary("memcached") {
		return nil
	}
	if moduleDir == "" {
		var err error
		if moduleDir, err = ModuleRoot(); err != nil {
			return fmt.Errorf("install dependencies: %w", err)
		}
	}
	log.Info("mariadbd or memcached missing: running hack/install-deps.sh")
	cmd := exec.CommandContext(ctx, filepath.Join(moduleDir, "hack", "install-deps.sh"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hack/install-deps.sh: %w", err)
	}
	return nil
}

func haveBinary(names ...string) bool {
	for _, n := range names {
		if _, err := exec.LookPath(n); err == nil {
			return true
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"} {
			if st, err := os.Stat(filepath.Join(d, n)); err == nil && st.Mode()&0o111 != 0 {
				return true
			}
		}
	}
	return false
}

// progressEvery is how often a long step says it is still going.
var progressEvery = 10 * time.Second

// progress logs msg every progressEvery, with the elapsed time and attrs' values, until the
// returned stop is called: a first start compiles and creates tables for minutes, and a
// silent terminal looks hung.
func progress(log *slog.Logger, msg string, attrs func() []any) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				args := []any{"elapsed", time.Since(start).Round(time.Second)}
				if attrs != nil {
					args = append(args, attrs()...)
				}
				log.Info(msg, args...)
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// parallel runs f for every item at once and joins the errors.
func parallel[T any](items []T, f func(T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { errs[i] = f(it) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

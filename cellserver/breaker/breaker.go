// Package breaker is a cell server's local fuse per logical table (docs/design.md §2, "Who decides
// a mask"): it counts each logical table's calls and failures, trips at once when a table
// keeps failing so the ID allocator stops issuing IDs in that table's slots, lets a probe
// through after a cool-down, and publishes its per-window counts to the cell's control
// schema, where the operator's masking policy reads them.
//
// It owns only this server's view. It must never write masks (the operator decides durable
// masks), never block or fail a caller because publishing fails, and never count domain
// refusals (a packet already opened is not a table fault) — callers pass only real failures.
package breaker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// Config sets up a Breaker.
type Config struct {
	Layout shard.Layout
	Policy Policy
	// Clock defaults to time.Now; tests inject a fake one.
	Clock func() time.Time

	// Publishing to the control schema; DB nil disables it (Run then only waits).
	DB           *sql.DB
	Schema       string        // control schema, default control.DefaultSchema
	Server       string        // this server's name in table_errors
	PublishEvery time.Duration // default 2s
	// MaxPending bounds the windows kept per table while the control schema is unreachable; older
	// windows are dropped first (default 64).
	MaxPending int

	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Breaker is safe for concurrent use; Observe and Tripped are cheap enough for every call on
// the money path (one uncontended mutex per logical table, no allocation).
type Breaker struct {
	cfg    Config
	layout shard.Layout
	policy Policy
	clock  func() time.Time
	log    *slog.Logger
	tables []*entry // indexed by DB*TablesPerDB+Table

	errorsTotal *prometheus.CounterVec
	callsTotal  *prometheus.CounterVec
	tripsTotal  *prometheus.CounterVec
	openGauge   *prometheus.GaugeVec
	publishFail prometheus.Counter
}

type entry struct {
	name    string
	mu      sync.Mutex
	st      tableState
	pending []windowCounts // not yet published, oldest first; usually one window
	errors  prometheus.Counter
	calls   prometheus.Counter
	trips   prometheus.Counter
	open    prometheus.Gauge
}

type windowCounts struct {
	window        time.Time
	errors, calls int64
}

// addLocked adds counts for a window, keeping the list ordered and at most limit long.
func (e *entry) addLocked(w time.Time, errs, calls int64, limit int) {
	n := len(e.pending)
	switch {
	case n > 0 && e.pending[n-1].window.Equal(w):
		e.pending[n-1].errors += errs
		e.pending[n-1].calls += calls
		return
	case n == 0 || e.pending[n-1].window.Before(w):
		e.pending = append(e.pending, windowCounts{w, errs, calls})
	default: // an older window put back after a failed publish
		i := 0
		for i < n && e.pending[i].window.Before(w) {
			i++
		}
		if i < n && e.pending[i].window.Equal(w) {
			e.pending[i].errors += errs
			e.pending[i].calls += calls
			return
		}
		e.pending = append(e.pending[:i], append([]windowCounts{{w, errs, calls}}, e.pending[i:]...)...)
	}
	// The operator's policy looks at recent windows, so the oldest are dropped first.
	if len(e.pending) > limit {
		e.pending = append(e.pending[:0], e.pending[len(e.pending)-limit:]...)
	}
}

// New builds a Breaker with every table closed.
func New(cfg Config) (*Breaker, error) {
	if err := cfg.Layout.Validate(); err != nil {
		return nil, fmt.Errorf("breaker: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.PublishEvery <= 0 {
		cfg.PublishEvery = 2 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DB != nil && cfg.Server == "" {
		return nil, errors.New("breaker: Server name is required to publish error counts")
	}
	b := &Breaker{
		cfg:    cfg,
		layout: cfg.Layout,
		policy: cfg.Policy.withDefaults(),
		clock:  cfg.Clock,
		log:    cfg.Logger,
		errorsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_breaker_table_errors_total",
			Help: "Failed calls per logical table (db_xx.t_y) seen by this server's breaker.",
		}, []string{"table"}),
		callsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_breaker_table_calls_total",
			Help: "All calls per logical table seen by this server's breaker.",
		}, []string{"table"}),
		tripsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_breaker_trips_total",
			Help: "Times a logical table's local breaker tripped.",
		}, []string{"table"}),
		openGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "redpacket_breaker_open",
			Help: "1 while a logical table's local breaker stops new IDs (open or half-open).",
		}, []string{"table"}),
		publishFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_breaker_publish_failures_total",
			Help: "Failed attempts to publish error counts to the control schema.",
		}),
	}
	for _, t := range b.layout.All() {
		name := b.layout.Name(t)
		b.tables = append(b.tables, &entry{
			name:   name,
			errors: b.errorsTotal.WithLabelValues(name),
			calls:  b.callsTotal.WithLabelValues(name),
			trips:  b.tripsTotal.WithLabelValues(name),
			open:   b.openGauge.WithLabelValues(name),
		})
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{b.errorsTotal, b.callsTotal, b.tripsTotal, b.openGauge, b.publishFail} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("breaker: register metrics: %w", err)
			}
		}
	}
	return b, nil
}

func (b *Breaker) index(t shard.Table) (int, bool) {
	if t.DB < 0 || t.DB >= b.layout.Databases || t.Table < 0 || t.Table >= b.layout.TablesPerDB {
		return 0, false
	}
	return t.DB*b.layout.TablesPerDB + t.Table, true
}

// Observe records the outcome of one call against a logical table: nil for success, the
// error for a failure. A cancelled context is the caller giving up, not the table failing,
// so it is not counted. Tables outside the layout are ignored.
func (b *Breaker) Observe(t shard.Table, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	i, ok := b.index(t)
	if !ok {
		return
	}
	now := b.clock()
	failed := err != nil
	e := b.tables[i]
	var errs int64
	if failed {
		errs = 1
	}
	e.mu.Lock()
	tr, changed := e.st.observe(now, failed, b.policy)
	if b.cfg.DB != nil {
		e.addLocked(now.Truncate(b.policy.Window), errs, 1, b.cfg.MaxPending)
	}
	e.mu.Unlock()

	e.calls.Inc()
	if failed {
		e.errors.Inc()
	}
	if changed {
		b.changed(e, tr, err)
	}
}

// Tripped reports whether new IDs must avoid the table's slots now. After the cool-down it
// answers false once (the probe) and true again until an outcome is observed.
func (b *Breaker) Tripped(t shard.Table) bool {
	i, ok := b.index(t)
	if !ok {
		return false
	}
	e := b.tables[i]
	e.mu.Lock()
	tripped, tr, changed := e.st.tripped(b.clock(), b.policy)
	e.mu.Unlock()
	if changed {
		b.changed(e, tr, nil)
	}
	return tripped
}

// State returns a table's current state without granting a probe.
func (b *Breaker) State(t shard.Table) State {
	i, ok := b.index(t)
	if !ok {
		return Closed
	}
	e := b.tables[i]
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.state
}

// TableStatus is one table's state for status pages and logs.
type TableStatus struct {
	Table  string
	State  State
	Errors int64 // in the current window
	Calls  int64
}

// Snapshot lists every table that is not closed or saw calls in the current window.
func (b *Breaker) Snapshot() []TableStatus {
	now := b.clock()
	var out []TableStatus
	for _, e := range b.tables {
		e.mu.Lock()
		e.st.roll(now, b.policy)
		s := TableStatus{Table: e.name, State: e.st.state, Errors: e.st.errors, Calls: e.st.calls}
		e.mu.Unlock()
		if s.State != Closed || s.Calls > 0 {
			out = append(out, s)
		}
	}
	return out
}

func (b *Breaker) changed(e *entry, tr transition, err error) {
	switch {
	case tr.to == Open && tr.from == Closed:
		e.trips.Inc()
		e.open.Set(1)
		b.log.Warn("breaker tripped: no new IDs in this logical table", "table", e.name, "error", err)
	case tr.to == Open:
		b.log.Warn("breaker probe failed: table stays tripped", "table", e.name, "error", err)
	case tr.to == HalfOpen:
		b.log.Info("breaker half-open: probing table", "table", e.name)
	case tr.to == Closed:
		e.open.Set(0)
		b.log.Info("breaker closed: table recovered", "table", e.name)
	}
}

// Run publishes the window counts every PublishEvery until ctx ends, then publishes once
// more. Publishing failures are logged and retried with the next batch; they never reach
// callers of Observe.
func (b *Breaker) Run(ctx context.Context) {
	if b.cfg.DB == nil {
		<-ctx.Done()
		return
	}
	tick := time.NewTicker(b.cfg.PublishEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := b.Publish(fctx); err != nil {
				b.log.Warn("final publish of error counts failed", "error", err)
			}
			cancel()
			return
		case <-tick.C:
			pctx, cancel := context.WithTimeout(ctx, b.cfg.PublishEvery)
			if err := b.Publish(pctx); err != nil {
				b.log.Warn("publish error counts to control schema failed", "error", err)
			}
			cancel()
		}
	}
}

// Publish sends the counts gathered since the last successful publish to the control
// schema. On failure they are put back (up to MaxPending windows per table) for the next
// attempt.
func (b *Breaker) Publish(ctx context.Context) error {
	if b.cfg.DB == nil {
		return nil
	}
	type taken struct {
		e       *entry
		pending []windowCounts
	}
	var batch []taken
	var rows []control.WindowCount
	for _, e := range b.tables {
		e.mu.Lock()
		p := e.pending
		e.pending = nil
		e.mu.Unlock()
		if len(p) == 0 {
			continue
		}
		batch = append(batch, taken{e, p})
		for _, w := range p {
			rows = append(rows, control.WindowCount{Table: e.name, WindowStart: w.window, Errors: w.errors, Calls: w.calls})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	err := control.RecordErrors(ctx, b.cfg.DB, b.cfg.Schema, b.cfg.Server, rows)
	if err == nil {
		return nil
	}
	b.publishFail.Inc()
	for _, t := range batch {
		t.e.mu.Lock()
		for _, w := range t.pending {
			t.e.addLocked(w.window, w.errors, w.calls, b.cfg.MaxPending)
		}
		t.e.mu.Unlock()
	}
	return fmt.Errorf("publish error counts: %w", err)
}

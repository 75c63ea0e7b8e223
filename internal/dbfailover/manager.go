package dbfailover

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	_ "github.com/go-sql-driver/mysql" // the driver the admin DSNs name
)

// Endpoint is one instance of the cell as the deployment names it.
type Endpoint struct {
	Addr     string // host:port, as the other instances and the cell servers reach it
	ServerID uint32 // its configured server_id
}

// Cell is what the Manager needs to reach a cell's instances.
type Cell struct {
	Name      string
	Instances []Endpoint
	// AdminDSN is a go-sql-driver DSN for addr with a user that may set read_only, manage
	// replication and kill sessions.
	AdminDSN func(addr string) string
	// ReplUser and ReplPassword are what replicas log in to their source as.
	ReplUser, ReplPassword string
	// AppUser is the cell servers' user: its sessions are killed on a fenced instance.
	AppUser string
}

// HistoryStore keeps a cell's History durably (state.json locally; the RedPacketCell status
// on Kubernetes). Save must be durable before it returns: a new primary opens only after its
// term is recorded.
type HistoryStore interface {
	LoadHistory(ctx context.Context) (History, error)
	SaveHistory(ctx context.Context, h History) error
}

// Event is something a person should see (a Kubernetes event, a log line locally).
type Event struct {
	Reason  string // Failover, Refused, Fenced, SemiSyncOff, SemiSyncOn, CaughtUp, ReplicationRestarted
	Message string
	Warning bool
}

// Manager runs the cell's failover logic. Reconcile is safe to call from one goroutine at a
// time (it holds a lock); call it periodically and whenever an instance is known to have died.
type Manager struct {
	Cell   Cell
	Store  HistoryStore
	Policy Policy
	Log    *slog.Logger
	// OnEvent receives events; nil drops them (they are logged either way).
	OnEvent func(Event)
	// Now is the clock; nil is time.Now.
	Now func() time.Time

	mu        sync.Mutex
	dbs       map[string]*sql.DB
	downSince map[int]time.Time
	progress  map[int]progress
	last      Decision
}

// progress is what an instance held when the gatherer last saw it change.
type progress struct {
	received string
	since    time.Time
}

// Reconcile gathers every instance, decides, and applies the steps, then gathers and decides
// again (up to a few rounds) so the returned Decision describes the cell after the steps.
func (m *Manager) Reconcile(ctx context.Context) (Decision, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d Decision
	for round := 0; round < 4; round++ {
		h, err := m.Store.LoadHistory(ctx)
		if err != nil {
			return d, fmt.Errorf("cell %s: load database history: %w", m.Cell.Name, err)
		}
		insts := m.observeAll(ctx)
		d = Decide(Observation{Instances: insts, History: h, Now: m.now()}, m.Policy)
		if d.Reason != m.last.Reason || d.Primary != m.last.Primary {
			m.log().Info("cell database", "cell", m.Cell.Name, "reason", d.Reason, "primary", d.Primary, "message", d.Message)
		}
		m.last = d
		if len(d.Steps) == 0 {
			return d, nil
		}
		if err := m.apply(ctx, d, insts); err != nil {
			return d, fmt.Errorf("cell %s: %w", m.Cell.Name, err)
		}
	}
	return d, nil
}

// switchoverCatchUp bounds how long writes stop during a switchover while the new primary
// applies what the old one committed last.
const switchoverCatchUp = 30 * time.Second

// Switchover hands the primary role to instance to, for maintenance: the primary is fenced
// (no write commits on it from then on; the servers' sessions are ended and reconnect), to
// applies everything the primary committed, and only then is its term recorded. Reconcile
// then opens it and repoints the others, the old primary among them. Nothing acknowledged can
// be lost: the new term starts at the old primary's final position, which to holds. If to does
// not catch up in time the old primary is reopened (its semi-sync wait back on first) and the
// switchover fails with the reason. A lost primary is a failover's job, not a switchover's.
func (m *Manager) Switchover(ctx context.Context, to int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if to < 0 || to >= len(m.Cell.Instances) {
		return fmt.Errorf("cell %s: switchover to instance %d: the cell has instances 0..%d", m.Cell.Name, to, len(m.Cell.Instances)-1)
	}
	h, err := m.Store.LoadHistory(ctx)
	if err != nil {
		return fmt.Errorf("cell %s: load database history: %w", m.Cell.Name, err)
	}
	cur, ok := h.Current()
	switch {
	case !ok:
		return fmt.Errorf("cell %s: switchover: no primary has been opened yet", m.Cell.Name)
	case cur.Primary == to:
		return nil
	}
	if why, refused := h.Refused[to]; refused {
		return fmt.Errorf("cell %s: switchover to instance %d: it is refused until rebuilt (%s)", m.Cell.Name, to, why)
	}
	insts := m.observeAll(ctx)
	p, target := insts[cur.Primary], insts[to]
	switch {
	case !p.Reachable:
		return fmt.Errorf("cell %s: switchover: primary %d is unreachable (%s); the failover logic replaces a lost primary", m.Cell.Name, cur.Primary, p.Err)
	case !target.Reachable:
		return fmt.Errorf("cell %s: switchover to instance %d: unreachable (%s)", m.Cell.Name, to, target.Err)
	case Errant(target, h) != "":
		return fmt.Errorf("cell %s: switchover to instance %d: errant transactions: %s", m.Cell.Name, to, Errant(target, h))
	}
	if r := target.Replication; r == nil || r.SourceAddr != p.Addr || !r.IORunning || !r.SQLRunning {
		return fmt.Errorf("cell %s: switchover to instance %d: it is not replicating from primary %d", m.Cell.Name, to, cur.Primary)
	}
	start := m.now()
	pdb, ep := m.db(p.Addr), m.Cell.Instances[cur.Primary]
	if err := fence(ctx, pdb, m.Cell.AppUser); err != nil {
		return fmt.Errorf("cell %s: switchover: fence primary %d: %w", m.Cell.Name, cur.Primary, err)
	}
	final, err := observe(ctx, pdb, ep, cur.Primary)
	if err == nil {
		var got int
		wctx, cancel := context.WithTimeout(ctx, switchoverCatchUp+5*time.Second)
		err = m.db(target.Addr).QueryRowContext(wctx, "SELECT MASTER_GTID_WAIT(?, ?)", final.CurrentPos.String(), switchoverCatchUp.Seconds()).Scan(&got)
		cancel()
		if err == nil && got != 0 {
			err = fmt.Errorf("instance %d did not apply %s within %s", to, final.CurrentPos, switchoverCatchUp)
		}
	}
	if err != nil {
		// Back as it was: the wait on before the first write, or a write could commit alone.
		if rerr := setSemiSync(ctx, pdb, true); rerr == nil {
			rerr = open(ctx, pdb)
			err = errors.Join(err, rerr)
		} else {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("cell %s: switchover to instance %d abandoned, primary %d reopened: %w", m.Cell.Name, to, cur.Primary, err)
	}
	next := Promote(h, Candidate{Index: to, Pos: final.CurrentPos}, m.Cell.Instances[to].ServerID, m.now())
	if err := m.Store.SaveHistory(ctx, next); err != nil {
		return fmt.Errorf("cell %s: switchover: record term %d: %w", m.Cell.Name, len(next.Terms), err)
	}
	m.event(Event{Reason: "Switchover", Message: fmt.Sprintf("primary %d (%s) handed over to instance %d (%s) at %s (term %d); writes stopped for %s",
		cur.Primary, p.Addr, to, target.Addr, final.CurrentPos, len(next.Terms), m.now().Sub(start).Round(time.Millisecond))})
	return nil
}

// Last is the most recent decision.
func (m *Manager) Last() Decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// Close closes the admin connections.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, db := range m.dbs {
		db.Close()
	}
	m.dbs = nil
}

// Observe gathers every instance without deciding anything (status tools, tests).
func (m *Manager) Observe(ctx context.Context) []Instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.observeAll(ctx)
}

func (m *Manager) observeAll(ctx context.Context) []Instance { return m.observeExcept(ctx, -1) }

// observeExcept gathers every instance but skip (none when -1), which is reported unreachable
// without being asked: a failover does not wait on the lost primary's address again (on
// Kubernetes a deleted pod's address takes the whole dial timeout to fail).
func (m *Manager) observeExcept(ctx context.Context, skip int) []Instance {
	out := make([]Instance, len(m.Cell.Instances))
	var wg sync.WaitGroup
	for i, ep := range m.Cell.Instances {
		if i == skip {
			out[i] = Instance{Index: i, Addr: ep.Addr, ServerID: ep.ServerID, Err: "not asked: its term is being ended"}
			continue
		}
		db := m.db(ep.Addr)
		wg.Go(func() {
			octx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			in, err := observe(octx, db, ep, i)
			if err != nil {
				in = Instance{Index: i, Addr: ep.Addr, ServerID: ep.ServerID, Err: err.Error()}
			}
			out[i] = in
		})
	}
	wg.Wait()
	if m.downSince == nil {
		m.downSince = map[int]time.Time{}
	}
	now := m.now()
	if m.progress == nil {
		m.progress = map[int]progress{}
	}
	for i := range out {
		if out[i].Reachable {
			delete(m.downSince, i)
			got := out[i].Received().String()
			if pr, ok := m.progress[i]; ok && pr.received == got {
				out[i].StalledSince = pr.since
			} else {
				m.progress[i] = progress{received: got, since: now}
			}
			continue
		}
		delete(m.progress, i)
		if _, ok := m.downSince[i]; !ok {
			m.downSince[i] = now
		}
		out[i].UnreachableSince = m.downSince[i]
	}
	return out
}

func (m *Manager) apply(ctx context.Context, d Decision, insts []Instance) error {
	for _, s := range d.Steps {
		ep := m.Cell.Instances[s.Instance]
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		// Each step starts from the stored history: an earlier step of this decision may have
		// changed it.
		h, err := m.Store.LoadHistory(sctx)
		if err == nil {
			err = m.step(sctx, s, ep, d, insts, h)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("%s on instance %d (%s): %w", s, s.Instance, ep.Addr, err)
		}
		m.log().Info("database step", "cell", m.Cell.Name, "step", s.String(), "instance", s.Instance, "addr", ep.Addr)
	}
	return nil
}

func (m *Manager) step(ctx context.Context, s Step, ep Endpoint, d Decision, insts []Instance, h History) error {
	db := m.db(ep.Addr)
	switch s.Op {
	case OpStartTerm:
		next := Promote(h, Candidate{Index: s.Instance, Pos: insts[s.Instance].CurrentPos}, ep.ServerID, m.now())
		return m.Store.SaveHistory(ctx, next)
	case OpRefuse:
		next := h.Clone()
		if next.Refused == nil {
			next.Refused = map[int]string{}
		}
		next.Refused[s.Instance] = s.Reason
		if err := m.Store.SaveHistory(ctx, next); err != nil {
			return err
		}
		m.event(Event{Reason: "Refused", Warning: true, Message: fmt.Sprintf("instance %d (%s) refused until rebuilt: %s", s.Instance, ep.Addr, s.Reason)})
		return fence(ctx, db, m.Cell.AppUser)
	case OpFence:
		m.event(Event{Reason: "Fenced", Warning: true, Message: fmt.Sprintf("instance %d (%s) fenced: %s", s.Instance, ep.Addr, s.Reason)})
		return fence(ctx, db, m.Cell.AppUser)
	case OpSemiSync:
		if s.On {
			// The record of the commits made alone stays until a replica is seen holding them
			// (OpCaughtUp): turning the wait on does not give the replica what it missed.
			if err := setSemiSync(ctx, db, true); err != nil {
				return err
			}
			m.event(Event{Reason: "SemiSyncOn", Message: fmt.Sprintf("primary %d waits for a replica's acknowledgement again", s.Instance)})
			return nil
		}
		if len(m.Cell.Instances) > 1 && h.SemiSyncOff.IsZero() {
			// Recorded before the wait goes off: a crash in between must not leave a primary
			// committing alone while the history says a failover would lose nothing.
			next := h.Clone()
			next.SemiSyncOff = m.now().UTC()
			if err := m.Store.SaveHistory(ctx, next); err != nil {
				return err
			}
			m.event(Event{Reason: "SemiSyncOff", Warning: true, Message: fmt.Sprintf("primary %d no longer waits for a replica: %s", s.Instance, d.Message)})
		}
		return setSemiSync(ctx, db, false)
	case OpCaughtUp:
		next := h.Clone()
		next.SemiSyncOff = time.Time{}
		if err := m.Store.SaveHistory(ctx, next); err != nil {
			return err
		}
		m.event(Event{Reason: "CaughtUp", Message: fmt.Sprintf("replica %d (%s) holds everything primary %d committed without a replica: a failover loses nothing again", s.Instance, ep.Addr, d.Primary)})
		return nil
	case OpOpen:
		return open(ctx, db)
	case OpRepoint:
		src := m.Cell.Instances[d.Primary].Addr
		if s.Reason != "" {
			m.event(Event{Reason: "ReplicationRestarted", Warning: true, Message: fmt.Sprintf("replica %d (%s) restarted: %s", s.Instance, ep.Addr, s.Reason)})
			if err := killDumps(ctx, m.db(src)); err != nil {
				return err
			}
			delete(m.progress, s.Instance) // a fresh StallAfter for the restarted replica
		}
		return repoint(ctx, db, src, m.Cell.ReplUser, m.Cell.ReplPassword)
	case OpFailover:
		return m.failover(ctx, insts, h)
	}
	return fmt.Errorf("unknown step %q", s.Op)
}

// failover takes over from the lost primary: every replica stops receiving and applies what it
// received, the instances are gathered again, the most advanced clean replica is chosen, and
// its term is recorded. The next round of Reconcile opens it and repoints the others.
func (m *Manager) failover(ctx context.Context, insts []Instance, h History) error {
	start := m.now()
	old, _ := h.Current()
	var errs []error
	for _, in := range insts {
		if in.Index == old.Primary || !in.Reachable {
			continue
		}
		if _, refused := h.Refused[in.Index]; refused {
			continue
		}
		if err := stopReceiving(ctx, m.db(in.Addr), 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("replica %d: %w", in.Index, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("drain replicas: %w", err)
	}
	again := m.observeExcept(ctx, old.Primary) // whatever it would answer now, its term is being ended
	cand, err := ChooseCandidate(again, h)
	if err != nil {
		return fmt.Errorf("choose the new primary: %w", err)
	}
	next := Promote(h, cand, m.Cell.Instances[cand.Index].ServerID, m.now())
	if err := m.Store.SaveHistory(ctx, next); err != nil {
		return fmt.Errorf("record term %d: %w", len(next.Terms), err)
	}
	for i, why := range cand.Refusals {
		m.event(Event{Reason: "Refused", Warning: true, Message: fmt.Sprintf("instance %d refused as a candidate: %s", i, why)})
	}
	m.event(Event{Reason: "Failover", Warning: true, Message: fmt.Sprintf("primary %d (%s) lost: instance %d (%s) is primary from %s (term %d, decided in %s)",
		old.Primary, m.Cell.Instances[old.Primary].Addr, cand.Index, m.Cell.Instances[cand.Index].Addr, cand.Pos, len(next.Terms), m.now().Sub(start).Round(time.Millisecond))})
	return nil
}

func (m *Manager) db(addr string) *sql.DB {
	if m.dbs == nil {
		m.dbs = map[string]*sql.DB{}
	}
	if db, ok := m.dbs[addr]; ok {
		return db
	}
	db, err := sql.Open("mysql", m.Cell.AdminDSN(addr))
	if err != nil {
		// sql.Open only fails on an unknown driver or a malformed DSN; every call on the
		// nil-safe handle below will report it.
		panic(fmt.Sprintf("dbfailover: admin DSN for %s: %v", addr, err))
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	m.dbs[addr] = db
	return db
}

func (m *Manager) event(e Event) {
	if e.Warning {
		m.log().Warn(e.Message, "cell", m.Cell.Name, "event", e.Reason)
	} else {
		m.log().Info(e.Message, "cell", m.Cell.Name, "event", e.Reason)
	}
	if m.OnEvent != nil {
		m.OnEvent(e)
	}
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Manager) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.Default()
}

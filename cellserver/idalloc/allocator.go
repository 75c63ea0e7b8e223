// Package idalloc issues packet IDs in a cell server: it leases a worker number from the
// cell's control schema, honours masks, breakers and the routing table, and never issues an
// ID another server could issue too. The ID layout itself is cellserver/ids (pure); this
// package holds the I/O, so the gateway and other readers of IDs never link database code.
// It must never decide routing or masks: it only obeys what the control schema and the
// routing table say.
package idalloc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// The allocator issues IDs without asking anyone per request. Uniqueness rests on three
// rules:
//
//  1. A worker number is leased from the cell's control schema; while the lease lasts no
//     other server holds the number. The allocator fences itself: it stops issuing when its
//     own monotonic clock, measured from before the last successful renewal request, says
//     the lease may have expired — before the database would let anyone else take it.
//  2. Before issuing in a second, that second must be covered by the worker's high-water
//     mark in the control schema (each renewal reserves up to the lease's end). A new holder
//     of the worker — after a release or an expiry — only issues in later seconds, so even a
//     crash followed by a restart within the same second never repeats an ID.
//  3. Within one second, each slot has its own sequence up to ids.MaxSeq; the allocator never
//     issues in a second below one it already used, whatever the clock does.
//
// Slots are chosen among those the cell owns at the ID's own creation second (the second the
// gateways will route by), minus masks from the routing table and the control schema and
// minus logical tables the local breaker has tripped. An ID is never issued in a masked slot.
//
// The allocator also refuses to issue while its routing table may be stale
// (docs/designdoc/rebalancing.md, "Safe hand-over"): when the routing file has not been
// confirmed for RoutingStale, or when the cell's control schema announces a newer epoch than
// the table holds and the ID's second is within routing.HandoverMargin of an effective time
// the two may disagree on (routing.StaleFor). Two cells then never both issue in one slot at
// one second, whichever table each server holds.

// Errors of Next.
var (
	// ErrSlotUnavailable: the requested slot may not get a new ID now (not owned by this
	// cell, masked, or its logical table tripped); the wrapping error says which.
	ErrSlotUnavailable = errors.New("slot unavailable")
	// ErrNoSlot: no slot at all is available to this cell now.
	ErrNoSlot = errors.New("no slot available")
	// ErrNotIssuing: the allocator may not issue IDs now — its lease could not be renewed in
	// time, its masks are stale, or it was closed. It recovers by itself unless closed.
	ErrNotIssuing = errors.New("allocator not issuing")
	// ErrExhausted: every sequence number of the current second is used in the slot and the
	// next second did not come within the wait bound (the clock stands still or went back).
	ErrExhausted = errors.New("sequence exhausted")
)

// AllocatorConfig configures an Allocator.
type AllocatorConfig struct {
	// DB is the cell's MySQL, where the control schema lives. A small pool of its own is
	// best: lease renewals must not queue behind the money path's transactions, or a busy
	// server fences itself.
	DB      *sql.DB
	Control string // control schema name, default control.DefaultSchema
	Server  string // this server's name, recorded as the lease holder
	Region  int    // home region encoded in every ID
	Layout  shard.Layout
	// SlotCount is the number of slots of the set; default: the routing table's, else
	// ids.MaxSlots.
	SlotCount int
	Cell      string
	// Routing returns the current routing table; nil means this cell owns every slot.
	Routing func() *routing.Table
	// RoutingConfirmed is when the routing source was last read and found good or unchanged
	// (routing.Watcher.Confirmed); nil skips the check.
	RoutingConfirmed func() time.Time
	// RoutingStale stops issuing when the routing source was not confirmed for this long
	// (default 30s): a newer table may have been published meanwhile.
	RoutingStale time.Duration
	// Breaker may be nil; tripped logical tables get no new IDs.
	Breaker *breaker.Breaker
	// Clock gives the ID time; default time.Now. Lease fencing always uses the real
	// monotonic clock.
	Clock func() time.Time

	MaskRefresh time.Duration // how often masks are re-read, default 1s
	// MaskStale stops issuing when masks could not be read for this long, because a mask
	// the operator set meanwhile would be missed (default: LeaseTTL).
	MaskStale  time.Duration
	LeaseTTL   time.Duration // default 10s
	RenewEvery time.Duration // default LeaseTTL/4
	// MaxWait bounds how long Next waits for the next second when a slot's sequence is
	// exhausted (default 2s).
	MaxWait time.Duration

	Registerer prometheus.Registerer // nil registers nothing
	Logger     *slog.Logger
}

// Allocator issues packet IDs for one server. It is safe for concurrent use.
type Allocator struct {
	cfg       AllocatorConfig
	slotCount int
	log       *slog.Logger

	mu       sync.Mutex
	lease    control.Lease
	fence    time.Time // real time after which the lease may have lapsed
	reserved int64     // latest Unix second covered by the high-water mark
	minSec   int64     // first second this lease may issue in
	curSec   int64     // latest second issued in (0: none yet)
	seqSec   []int64   // per slot: the second seq[slot] counts in
	seq      []int32   // per slot: next sequence number in seqSec[slot]
	lost     error     // why the lease is not usable; nil while valid
	closed   bool
	cache    candidates

	masks     atomic.Pointer[maskSet]
	masksRead atomic.Int64 // UnixNano of the last successful mask read (real time)
	announced atomic.Pointer[routing.Announcement]
	current   atomic.Int64 // ID-clock UnixNano when the table last held the announced epoch (0: never)
	reported  atomic.Int64 // newest epoch last written to routing_readers (-1: none yet)

	cancel context.CancelFunc
	done   sync.WaitGroup

	issued    prometheus.Counter
	waits     prometheus.Counter
	refused   *prometheus.CounterVec
	leaseLost prometheus.Counter
	worker    prometheus.Gauge
	heldEpoch prometheus.GaugeFunc
	annEpoch  prometheus.GaugeFunc
}

// maskSet is one read of the control schema's masks.
type maskSet struct {
	gen    uint64
	masks  []control.Mask
	masked []bool // by slot
}

// candidates caches the slots open to new IDs for one routing table, epoch and mask set.
type candidates struct {
	table *routing.Table
	epoch *routing.Epoch
	gen   uint64
	valid bool
	slots []int
}

// NewAllocator leases a worker number, reads the masks, and starts renewing the lease and
// refreshing the masks in the background until Close.
func NewAllocator(ctx context.Context, cfg AllocatorConfig) (*Allocator, error) {
	if cfg.DB == nil {
		return nil, errors.New("id allocator: DB is required")
	}
	if cfg.Server == "" || cfg.Cell == "" {
		return nil, errors.New("id allocator: Server and Cell are required")
	}
	if cfg.Region < 0 || cfg.Region > ids.MaxRegion {
		return nil, fmt.Errorf("id allocator: region %d outside 0..%d", cfg.Region, ids.MaxRegion)
	}
	if err := cfg.Layout.Validate(); err != nil {
		return nil, fmt.Errorf("id allocator: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.MaskRefresh <= 0 {
		cfg.MaskRefresh = time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.RenewEvery <= 0 {
		cfg.RenewEvery = cfg.LeaseTTL / 4
	}
	if cfg.RenewEvery >= cfg.LeaseTTL/2 {
		return nil, fmt.Errorf("id allocator: renew interval %v must be under half the lease %v", cfg.RenewEvery, cfg.LeaseTTL)
	}
	if cfg.MaskStale <= 0 {
		cfg.MaskStale = cfg.LeaseTTL
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 2 * time.Second
	}
	if cfg.RoutingStale <= 0 {
		cfg.RoutingStale = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	slotCount := cfg.SlotCount
	if slotCount == 0 && cfg.Routing != nil {
		if t := cfg.Routing(); t != nil {
			slotCount = t.SlotCount
		}
	}
	if slotCount == 0 {
		slotCount = ids.MaxSlots
	}
	if slotCount < 1 || slotCount > ids.MaxSlots {
		return nil, fmt.Errorf("id allocator: slot count %d outside 1..%d", slotCount, ids.MaxSlots)
	}

	a := &Allocator{
		cfg:       cfg,
		slotCount: slotCount,
		log:       cfg.Logger.With("component", "id-allocator", "server", cfg.Server),
		seqSec:    make([]int64, slotCount),
		seq:       make([]int32, slotCount),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_ids_issued_total", Help: "Packet IDs issued by this server.",
		}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_ids_sequence_waits_total", Help: "Times a slot's sequence ran out and Next waited for the next second.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_ids_refused_total", Help: "Next calls that issued no ID, by reason.",
		}, []string{"reason"}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_ids_lease_lost_total", Help: "Times the worker lease lapsed or was taken over.",
		}),
		worker: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "redpacket_ids_worker", Help: "The worker number this server holds (-1 when none).",
		}),
	}
	a.reported.Store(-1)
	a.announced.Store(&routing.Announcement{})
	a.heldEpoch = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "redpacket_ids_routing_epoch", Help: "Newest epoch of the routing table this server issues IDs by (0: none).",
	}, func() float64 {
		if t := a.table(); t != nil && t.Latest() != nil {
			return float64(t.Latest().Number)
		}
		return 0
	})
	a.annEpoch = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "redpacket_ids_announced_epoch", Help: "Newest routing epoch announced in the cell's control schema (0: none).",
	}, func() float64 { return float64(a.announced.Load().Number) })
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.issued, a.waits, a.refused, a.leaseLost, a.worker, a.heldEpoch, a.annEpoch} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("id allocator: register metrics: %w", err)
			}
		}
	}
	if err := a.refreshMasks(ctx); err != nil {
		return nil, fmt.Errorf("id allocator: %w", err)
	}
	if err := a.acquire(ctx); err != nil {
		return nil, fmt.Errorf("id allocator: %w", err)
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.done.Add(2)
	go a.renewLoop(loopCtx)
	go a.maskLoop(loopCtx)
	return a, nil
}

// Worker is the worker number currently leased, or -1 when none is.
// Masks are the masks in force as last read from the control schema (nil before the first
// read). The slice is shared: callers must not change it.
func (a *Allocator) Masks() []control.Mask {
	if m := a.masks.Load(); m != nil {
		return m.masks
	}
	return nil
}

func (a *Allocator) Worker() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lost != nil || a.closed {
		return -1
	}
	return a.lease.Worker
}

// Ready is nil while the allocator can issue IDs, else why not (for /readyz).
func (a *Allocator) Ready() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.issuingLocked()
}

// Next issues a new ID. With slot < 0 it picks uniformly among the slots open to new
// packets; with slot >= 0 it issues in that slot or fails with ErrSlotUnavailable.
func (a *Allocator) Next(ctx context.Context, slot int) (int64, error) {
	var waitStart time.Time
	for {
		id, retryAt, err := a.tryNext(slot)
		if err != nil || retryAt == 0 {
			if err != nil {
				a.refused.WithLabelValues(refusalReason(err)).Inc()
			}
			return id, err
		}
		// The slot's sequence is used up for second retryAt-1: wait for the clock to reach
		// retryAt, bounded, polling because the clock may be injected.
		if waitStart.IsZero() {
			waitStart = time.Now()
			a.waits.Inc()
		}
		if time.Since(waitStart) >= a.cfg.MaxWait {
			a.refused.WithLabelValues("exhausted").Inc()
			return 0, fmt.Errorf("next id in slot %d: %w (clock stays before %s)", slot, ErrExhausted,
				time.Unix(retryAt, 0).UTC().Format(time.RFC3339))
		}
		wait := time.Unix(retryAt, 0).Sub(a.cfg.Clock())
		wait = min(max(wait, time.Millisecond), 10*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("next id: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// tryNext issues an ID or says which second to wait for (retryAt > 0).
func (a *Allocator) tryNext(slot int) (id int64, retryAt int64, err error) {
	now := a.cfg.Clock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.issuingLocked(); err != nil {
		return 0, 0, err
	}
	sec := max(now.Unix(), a.curSec, a.minSec)
	if sec > a.reserved {
		return 0, 0, fmt.Errorf("next id: %w: second %d not yet reserved (up to %d); lease renewal is late",
			ErrNotIssuing, sec, a.reserved)
	}
	created := time.Unix(sec, 0)
	if err := a.routingFreshLocked(created); err != nil {
		return 0, 0, err
	}
	if slot < 0 {
		slot, err = a.pickLocked(created)
		if err != nil {
			return 0, 0, err
		}
	} else if err := a.checkSlotLocked(slot, created); err != nil {
		return 0, 0, err
	}
	if a.seqSec[slot] != sec {
		a.seqSec[slot], a.seq[slot] = sec, 0
	}
	if a.seq[slot] > ids.MaxSeq {
		return 0, sec + 1, nil
	}
	id, err = ids.Compose(ids.Parts{Created: created, Region: a.cfg.Region, Worker: a.lease.Worker, Seq: int(a.seq[slot]), Slot: slot})
	if err != nil {
		return 0, 0, fmt.Errorf("next id: %w", err)
	}
	a.seq[slot]++
	a.curSec = sec
	a.issued.Inc()
	return id, 0, nil
}

func (a *Allocator) issuingLocked() error {
	switch {
	case a.closed:
		return fmt.Errorf("next id: %w: closed", ErrNotIssuing)
	case a.lost != nil:
		return fmt.Errorf("next id: %w: %v", ErrNotIssuing, a.lost)
	case !time.Now().Before(a.fence):
		return fmt.Errorf("next id: %w: worker %d lease not renewed in time", ErrNotIssuing, a.lease.Worker)
	case time.Since(time.Unix(0, a.masksRead.Load())) > a.cfg.MaskStale:
		return fmt.Errorf("next id: %w: masks not read for over %v", ErrNotIssuing, a.cfg.MaskStale)
	}
	return nil
}

// table is the routing table in force, nil without routing.
func (a *Allocator) table() *routing.Table {
	if a.cfg.Routing == nil {
		return nil
	}
	return a.cfg.Routing()
}

// routingFreshLocked refuses an ID created at created while the routing table may be stale.
func (a *Allocator) routingFreshLocked(created time.Time) error {
	if a.cfg.Routing == nil {
		return nil
	}
	if a.cfg.RoutingConfirmed != nil {
		if since := time.Since(a.cfg.RoutingConfirmed()); since > a.cfg.RoutingStale {
			return fmt.Errorf("next id: %w: %w: routing file not confirmed for %v (bound %v)", ErrNotIssuing, routing.ErrStale, since.Truncate(time.Second), a.cfg.RoutingStale)
		}
	}
	t, ann := a.cfg.Routing(), *a.announced.Load()
	if t != nil && t.Latest() != nil && ann.Number <= t.Latest().Number {
		a.current.Store(a.cfg.Clock().UnixNano())
	}
	var current time.Time
	if ns := a.current.Load(); ns != 0 {
		current = time.Unix(0, ns)
	}
	if err := routing.StaleFor(t, ann, current, created); err != nil {
		return fmt.Errorf("next id: %w: %w", ErrNotIssuing, err)
	}
	return nil
}

// pickLocked chooses uniformly among open slots. Tripped tables are rejected one by one, so
// the choice stays uniform over what remains and the breaker's half-open probe is granted
// only to a slot that then really gets an ID.
func (a *Allocator) pickLocked(created time.Time) (int, error) {
	open := a.candidatesLocked(created)
	owned := true // open is the cache's slice until the first rejection
	for len(open) > 0 {
		i := rand.IntN(len(open))
		s := open[i]
		if a.cfg.Breaker == nil || !a.cfg.Breaker.Tripped(a.cfg.Layout.Of(s)) {
			return s, nil
		}
		if owned {
			open = append([]int(nil), open...)
			owned = false
		}
		open[i] = open[len(open)-1]
		open = open[:len(open)-1]
	}
	return 0, fmt.Errorf("next id for cell %s at %s: %w", a.cfg.Cell, created.UTC().Format(time.RFC3339), ErrNoSlot)
}

// candidatesLocked lists slots owned at created and unmasked, rebuilt only when the routing
// table, its epoch at created or the masks change.
func (a *Allocator) candidatesLocked(created time.Time) []int {
	var table *routing.Table
	var epoch *routing.Epoch
	if a.cfg.Routing != nil {
		table = a.cfg.Routing()
		if table != nil {
			epoch, _ = table.EpochAt(created)
		}
	}
	ms := a.masks.Load()
	c := &a.cache
	if c.valid && c.table == table && c.epoch == epoch && c.gen == ms.gen {
		return c.slots
	}
	var slots []int
	if a.cfg.Routing == nil {
		for s := 0; s < a.slotCount; s++ {
			slots = append(slots, s)
		}
	} else if epoch != nil {
		slots = epoch.Slots(a.cfg.Cell)
	}
	open := slots[:0]
	for _, s := range slots {
		if s >= a.slotCount || ms.masked[s] || (table != nil && table.IsMasked(s)) {
			continue
		}
		open = append(open, s)
	}
	*c = candidates{table: table, epoch: epoch, gen: ms.gen, valid: true, slots: open}
	return open
}

// checkSlotLocked says why slot may not get a new ID at created, if it may not.
func (a *Allocator) checkSlotLocked(slot int, created time.Time) error {
	if slot >= a.slotCount {
		return fmt.Errorf("next id: %w: slot %d outside 0..%d", ErrSlotUnavailable, slot, a.slotCount-1)
	}
	if a.cfg.Routing != nil {
		table := a.cfg.Routing()
		if table == nil {
			return fmt.Errorf("next id: %w: no routing table loaded", ErrSlotUnavailable)
		}
		owner, epoch, err := table.OwnerAt(slot, created)
		if err != nil {
			return fmt.Errorf("next id: %w: %v", ErrSlotUnavailable, err)
		}
		if owner != a.cfg.Cell {
			return fmt.Errorf("next id: %w: slot %d belongs to cell %s in epoch %d, not %s",
				ErrSlotUnavailable, slot, owner, epoch, a.cfg.Cell)
		}
		if table.IsMasked(slot) {
			return fmt.Errorf("next id: %w: slot %d masked in the routing table", ErrSlotUnavailable, slot)
		}
	}
	if ms := a.masks.Load(); ms.masked[slot] {
		return fmt.Errorf("next id: %w: slot %d masked in the control schema", ErrSlotUnavailable, slot)
	}
	if a.cfg.Breaker != nil {
		t := a.cfg.Layout.Of(slot)
		if a.cfg.Breaker.Tripped(t) {
			return fmt.Errorf("next id: %w: slot %d's table %s tripped by the local breaker",
				ErrSlotUnavailable, slot, a.cfg.Layout.Name(t))
		}
	}
	return nil
}

// Close stops issuing, stops the background loops and releases the lease, recording the last
// second actually issued so a successor continues right after it.
func (a *Allocator) Close(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.done.Wait()

	a.mu.Lock()
	lease, lost, last := a.lease, a.lost, a.curSec
	a.mu.Unlock()
	a.worker.Set(-1)
	if lost != nil {
		return nil // nothing held
	}
	if err := control.ReleaseWorker(ctx, a.cfg.DB, a.cfg.Control, lease, last); err != nil {
		// The lease expires by itself; its reservation still protects the IDs issued.
		return fmt.Errorf("close id allocator: %w", err)
	}
	a.log.Info("released worker lease", "worker", lease.Worker, "last_second", last)
	return nil
}

// acquire takes a (new) worker lease; the caller must not hold a.mu.
func (a *Allocator) acquire(ctx context.Context) error {
	sent := time.Now()
	reserve := a.reserveUntil()
	lease, err := control.AcquireWorker(ctx, a.cfg.DB, a.cfg.Control, a.cfg.Server, a.cfg.LeaseTTL, reserve)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lease = lease
	a.fence = a.fenceFrom(sent)
	a.reserved = reserve
	// Seconds up to the previous holders' mark may hold their IDs under this worker. curSec
	// stays: IDs remain time-ordered across a change of lease.
	a.minSec = lease.PreviousHighWater + 1
	clear(a.seqSec)
	a.lost = nil
	a.worker.Set(float64(lease.Worker))
	a.log.Info("leased worker", "worker", lease.Worker, "after_second", lease.PreviousHighWater)
	return nil
}

// reserveUntil is the latest second the holder could issue in before the lease it is about
// to take or renew lapses.
func (a *Allocator) reserveUntil() int64 {
	return a.cfg.Clock().Add(a.cfg.LeaseTTL).Unix() + 1
}

// fenceFrom is when to stop issuing for a lease granted by a request sent at sent. A tenth of
// the lease is kept as margin for clock-rate differences between this host and the DB.
func (a *Allocator) fenceFrom(sent time.Time) time.Time {
	return sent.Add(a.cfg.LeaseTTL - a.cfg.LeaseTTL/10)
}

func (a *Allocator) renewLoop(ctx context.Context) {
	defer a.done.Done()
	t := time.NewTicker(a.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.renewOnce(ctx)
	}
}

// renewOnce extends the lease, or takes a new one when it was lost. A renewal that fails for
// a transient reason is retried on the next tick; issuance stops by itself at the fence.
func (a *Allocator) renewOnce(ctx context.Context) {
	a.mu.Lock()
	lease, lost := a.lease, a.lost
	a.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RenewEvery)
	defer cancel()
	if lost == nil {
		sent := time.Now()
		reserve := a.reserveUntil()
		err := control.RenewWorker(rctx, a.cfg.DB, a.cfg.Control, lease, a.cfg.LeaseTTL, reserve)
		if err == nil {
			a.mu.Lock()
			if a.lease.Token == lease.Token {
				a.fence = a.fenceFrom(sent)
				a.reserved = max(a.reserved, reserve)
			}
			a.mu.Unlock()
			return
		}
		if !errors.Is(err, control.ErrLeaseLost) {
			if ctx.Err() == nil {
				a.log.Warn("worker lease renewal failed; will retry", "worker", lease.Worker, "error", err)
			}
			return
		}
		a.mu.Lock()
		a.lost = err
		a.mu.Unlock()
		a.leaseLost.Inc()
		a.worker.Set(-1)
		a.log.Error("worker lease lost; stopped issuing IDs", "worker", lease.Worker, "error", err)
	}
	if err := a.acquire(rctx); err != nil && ctx.Err() == nil {
		a.log.Warn("worker lease re-acquisition failed; will retry", "error", err)
	}
}

func (a *Allocator) maskLoop(ctx context.Context) {
	defer a.done.Done()
	t := time.NewTicker(a.cfg.MaskRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, max(a.cfg.MaskRefresh, time.Second))
		if err := a.refreshMasks(rctx); err != nil && ctx.Err() == nil {
			a.log.Warn("mask refresh failed; keeping the last masks", "error", err)
		}
		cancel()
	}
}

func (a *Allocator) refreshMasks(ctx context.Context) error {
	started := time.Now()
	masks, err := control.ReadMasks(ctx, a.cfg.DB, a.cfg.Control)
	if err != nil {
		return err
	}
	// The announcement is read with the masks, so it is as fresh as they are: issuance
	// stops after MaskStale without either.
	if a.cfg.Routing != nil {
		n, eff, err := control.ReadAnnouncement(ctx, a.cfg.DB, a.cfg.Control)
		if err != nil {
			return err
		}
		if cur := a.announced.Load(); cur.Number != n || !cur.EffectiveTime.Equal(eff) {
			a.announced.Store(&routing.Announcement{Number: n, EffectiveTime: eff})
			a.log.Info("routing epoch announced", "epoch", n, "effective", eff)
		}
		// Stamped with the read's start: the announcement may have moved on since.
		if t := a.cfg.Routing(); t != nil && t.Latest() != nil && n <= t.Latest().Number {
			a.current.Store(a.cfg.Clock().Add(time.Until(started)).UnixNano())
		}
		if t := a.cfg.Routing(); t != nil && t.Latest() != nil && t.Latest().Number != a.reported.Load() {
			l := t.Latest()
			if err := control.ReportReader(ctx, a.cfg.DB, a.cfg.Control, a.cfg.Server, l.Number, l.EffectiveTime); err != nil {
				return err
			}
			a.reported.Store(l.Number)
		}
	}
	prev := a.masks.Load()
	if prev != nil && sameMasks(prev.masks, masks) {
		a.masksRead.Store(started.UnixNano())
		return nil
	}
	ms := &maskSet{masks: masks, masked: make([]bool, a.slotCount)}
	if prev != nil {
		ms.gen = prev.gen + 1
	}
	for _, m := range masks {
		for s := max(m.Start, 0); s <= m.End && s < a.slotCount; s++ {
			ms.masked[s] = true
		}
	}
	a.masks.Store(ms)
	// Stamped with the time the read started: a mask written after that may be missing.
	a.masksRead.Store(started.UnixNano())
	if prev != nil {
		a.log.Info("masks changed", "active", len(masks))
	}
	return nil
}

func sameMasks(a, b []control.Mask) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Start != b[i].Start || a[i].End != b[i].End {
			return false
		}
	}
	return true
}

func refusalReason(err error) string {
	switch {
	case errors.Is(err, routing.ErrStale):
		return "routing_stale"
	case errors.Is(err, ErrSlotUnavailable):
		return "slot_unavailable"
	case errors.Is(err, ErrNoSlot):
		return "no_slot"
	case errors.Is(err, ErrNotIssuing):
		return "not_issuing"
	case errors.Is(err, ErrExhausted):
		return "exhausted"
	}
	return "other"
}

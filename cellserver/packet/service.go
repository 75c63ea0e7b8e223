package packet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// Packet, Receipt and the other records are the store's; the aliases let callers speak of
// packets without importing the store.
type (
	Packet      = store.Packet
	Receipt     = store.Receipt
	OpenOutcome = store.OpenOutcome
	HistoryItem = store.HistoryItem
	Settlement  = store.Settlement
	Role        = store.Role
	Observer    = store.Observer
)

const (
	RoleSent     = store.RoleSent
	RoleReceived = store.RoleReceived
)

// Refusals. They wrap the store's sentinel errors so errors.Is works across both packages.
var (
	ErrNotFound         = store.ErrNotFound
	ErrNotPaid          = store.ErrNotPaid
	ErrExpired          = store.ErrExpired
	ErrExhausted        = store.ErrExhausted
	ErrAlreadyPaid      = store.ErrAlreadyPaid
	ErrAlreadyRefunded  = store.ErrAlreadyRefunded
	ErrAmountMismatch   = store.ErrAmountMismatch
	ErrIdempotencyClash = store.ErrIdempotencyClash
	ErrPaymentReused    = store.ErrPaymentReused
	ErrCancelled        = store.ErrCancelled
	ErrKeyElsewhere     = store.ErrKeyElsewhere
	// ErrWrongCell: the packet belongs to another cell (its slot's owner at its creation
	// time, docs/design.md §4.4); the gateway routed with a stale table.
	ErrWrongCell = routing.ErrWrongCell
	// ErrSlotUnavailable: the cell cannot issue an ID in the requested slot (not owned now,
	// masked, or its table's breaker is open).
	ErrSlotUnavailable = errors.New("slot unavailable in this cell")
)

// IDSource issues packet IDs; idalloc.Allocator satisfies it. slot < 0 lets the source pick.
type IDSource interface {
	Next(ctx context.Context, slot int) (int64, error)
}

// RemainingCache is the guard's cache of active packets' remaining counts. It only ever
// lets grab say "no" without the DB; a stale count sends the user to open, where the DB
// transaction decides.
type RemainingCache interface {
	CachedRemaining(packetID int64) (count int, ok bool)
	SetRemaining(packetID int64, count int)
	Forget(packetID int64)
}

// GrabCache is a RemainingCache that also holds what grab needs to answer without the DB:
// each packet's state and per-user opened markers (the guard satisfies it). Entries are
// written only from committed DB state after pay, open and DB-answered grabs, so they can
// be stale only towards "eligible", and open, in the DB, still decides.
type GrabCache interface {
	RemainingCache
	GrabState(packetID int64, user string) (st guard.PacketState, cached, opened bool)
	SetState(packetID int64, st guard.PacketState)
	MarkOpened(packetID int64, users []string)
}

// Config tunes the service; zero fields take the defaults.
type Config struct {
	Limits Limits
	// Expiry is how long a paid packet stays open (default 24h); it is also how long a
	// wrapped packet waits for payment before it is cancelled.
	Expiry time.Duration
	Rand   Rand
	Now    func() time.Time
	// Cache, when it is also a GrabCache, answers most grabs without the DB.
	Cache RemainingCache
	Log   *slog.Logger
	// Region is this cell's region; IDs of other regions are not found here.
	Region int
	// Owns reports whether this cell owns a packet (the owner of its slot at its creation
	// second); nil means every packet of the region. It returns an error wrapping
	// ErrWrongCell when not.
	Owns func(id int64) error
	// Home reports whether this cell is the home of an idempotency key at now
	// (routing.Table.CheckHome); nil means every key is homed here (a cell on its own).
	Home func(key string, now time.Time) error
}

// Service runs the packet lifecycle. It is safe for concurrent use; callers serialise opens
// per packet through the queue for throughput, never for correctness.
type Service struct {
	st    *store.Store
	ids   IDSource
	cfg   Config
	share store.ShareFunc
	grabC GrabCache // nil when Cache is not one

	grabAnswers *prometheus.CounterVec
	grabFromMC  prometheus.Counter
	grabFromDB  prometheus.Counter
}

// New builds a service over a store and an ID source.
func New(st *store.Store, src IDSource, cfg Config) *Service {
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits
	}
	if cfg.Expiry == 0 {
		cfg.Expiry = 24 * time.Hour
	}
	if cfg.Rand == nil {
		cfg.Rand = DefaultRand
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := cfg.Rand
	s := &Service{st: st, ids: src, cfg: cfg, share: func(k store.Kind, remaining int64, count int) (int64, error) {
		return Share(k, remaining, count, r)
	}}
	s.grabC, _ = cfg.Cache.(GrabCache)
	s.grabAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "redpacket_grab_answers_total",
		Help: "Grab answers by where they came from: the cache beside the server, or the database.",
	}, []string{"source"})
	s.grabFromMC = s.grabAnswers.WithLabelValues("cache")
	s.grabFromDB = s.grabAnswers.WithLabelValues("db")
	return s
}

// Collectors are the service's metrics, for the server's registry.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.grabAnswers}
}

// Limits are the packet limits in force.
func (s *Service) Limits() Limits { return s.cfg.Limits }

// Store is the underlying store.
func (s *Service) Store() *store.Store { return s.st }

// Wrap creates a packet, or returns the one this sender already wrapped under the same
// request ID (created=false). slot < 0 lets the ID source choose.
func (s *Service) Wrap(ctx context.Context, r WrapRequest, slot int) (Packet, bool, error) {
	if err := ValidateWrap(r, s.cfg.Limits); err != nil {
		return Packet{}, false, err
	}
	if slot >= ids.MaxSlots {
		return Packet{}, false, invalid("slot", "must be below %d", ids.MaxSlots)
	}
	// When the server picks the slot, a failing logical table must not fail the wrap: the
	// create path retries with a fresh ID, which the allocator places elsewhere once the
	// table's breaker trips (docs/design.md §2, masking). A retry is safe: the failed attempt's
	// transaction rolled back, or, if its commit did land, the request ID finds it.
	attempts := 1
	if slot < 0 {
		attempts = 3
	}
	key := routing.WrapKey(r.Sender, r.RequestID)
	if err := s.home(key); err != nil {
		// A retry that reaches an old home, or one sent during a hand-over, still gets the
		// packet this cell holds for the key; only a new key is refused.
		return s.wrapRefused(ctx, r, err)
	}
	check := func() error { return s.home(key) }
	var err error
	for i := 0; i < attempts; i++ {
		var id int64
		id, err = s.ids.Next(ctx, slot)
		if err != nil {
			// A masked or tripped slot stops new IDs, not retries: the first attempt's packet
			// is still this request's answer.
			return s.wrapRefused(ctx, r, fmt.Errorf("allocate packet id in slot %d: %w", slot, err))
		}
		p := Packet{ID: id, Sender: r.Sender, RequestID: r.RequestID, Kind: r.Kind, TotalCents: r.TotalCents,
			Count: r.Count, Group: r.Group, Greeting: r.Greeting, CreatedAt: ids.CreatedAt(id)}
		var got Packet
		var created bool
		got, created, err = s.st.WrapChecked(ctx, p, s.cfg.Now().Add(s.cfg.Expiry), check)
		if err == nil || store.IsRefusal(err) || ctx.Err() != nil {
			return got, created, err
		}
		if i+1 < attempts {
			s.cfg.Log.Warn("wrap failed on a logical table; retrying with a new id", "table", s.st.Layout().Name(s.st.TableOf(id)), "err", err)
		}
	}
	return Packet{}, false, err
}

// Pay activates a packet on the payment notice; repeats of the same notice return the
// packet unchanged.
func (s *Service) Pay(ctx context.Context, id int64, r PayRequest) (Packet, error) {
	if err := ValidatePay(r, s.cfg.Limits); err != nil {
		return Packet{}, err
	}
	if err := s.known(id); err != nil {
		return Packet{}, err
	}
	p, err := s.st.Pay(ctx, id, r.PaymentTxnID, r.AmountCents, s.cfg.Now(), s.cfg.Expiry)
	if err == nil {
		s.cacheState(p)
	}
	return p, err
}

// Eligibility is grab's answer; Reason is empty when eligible.
type Eligibility struct {
	Eligible bool
	Reason   string
}

// Grab reasons.
const (
	ReasonNotPaid       = "not_paid"
	ReasonExpired       = "expired"
	ReasonExhausted     = "exhausted"
	ReasonCancelled     = "cancelled"
	ReasonAlreadyOpened = "already_opened"
)

// Grab says whether user may still open the packet. It changes nothing. The cache answers
// when it can: an opened marker, a settled status, a passed expiry and a zero remaining
// count are facts once written, and a stale positive entry only sends the user on to open,
// where the DB transaction decides. Everything else (unknown packets, unpaid ones, memcached
// down) is read from the DB, which also refreshes the cache.
func (s *Service) Grab(ctx context.Context, id int64, user string) (Eligibility, error) {
	if err := ValidateUser("user", user, s.cfg.Limits); err != nil {
		return Eligibility{}, err
	}
	if err := s.known(id); err != nil {
		return Eligibility{}, err
	}
	if e, ok := s.grabCached(id, user); ok {
		s.grabFromMC.Inc()
		return e, nil
	}
	s.grabFromDB.Inc()
	p, err := s.st.Get(ctx, id)
	if err != nil {
		return Eligibility{}, err
	}
	now := s.cfg.Now()
	switch {
	case p.Status == store.StatusWrapped && now.Before(p.ExpiresAt):
		return Eligibility{Reason: ReasonNotPaid}, nil
	case p.Status == store.StatusCancelled || p.Status == store.StatusWrapped:
		return Eligibility{Reason: ReasonCancelled}, nil
	}
	s.cacheState(p)
	if _, err := s.st.Receipt(ctx, id, user); err == nil {
		if s.grabC != nil {
			s.grabC.MarkOpened(id, []string{user})
		}
		return Eligibility{Reason: ReasonAlreadyOpened}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return Eligibility{}, err
	}
	switch {
	case p.Status == store.StatusExpired || !now.Before(p.ExpiresAt):
		return Eligibility{Reason: ReasonExpired}, nil
	case p.RemainingCount == 0:
		return Eligibility{Reason: ReasonExhausted}, nil
	}
	return Eligibility{Eligible: true}, nil
}

// grabCached answers grab from the cache, in the DB path's order of reasons, or says it
// cannot. Without a GrabCache only a cached zero remaining count answers ("exhausted").
func (s *Service) grabCached(id int64, user string) (Eligibility, bool) {
	if s.grabC == nil {
		if s.cfg.Cache != nil {
			if n, ok := s.cfg.Cache.CachedRemaining(id); ok && n == 0 {
				return Eligibility{Reason: ReasonExhausted}, true
			}
		}
		return Eligibility{}, false
	}
	st, cached, opened := s.grabC.GrabState(id, user)
	switch {
	case opened:
		// Only a committed open writes a marker, and a packet someone opened was paid.
		return Eligibility{Reason: ReasonAlreadyOpened}, true
	case !cached:
		return Eligibility{}, false
	}
	switch store.Status(st.Status) {
	case store.StatusActive:
		switch {
		case !s.cfg.Now().Before(st.ExpiresAt):
			return Eligibility{Reason: ReasonExpired}, true
		case st.Remaining == 0:
			return Eligibility{Reason: ReasonExhausted}, true
		}
		return Eligibility{Eligible: true}, true
	case store.StatusExpired:
		return Eligibility{Reason: ReasonExpired}, true
	case store.StatusCancelled:
		return Eligibility{Reason: ReasonCancelled}, true
	}
	// cacheState never writes a wrapped packet: payment would make it stale towards "no".
	return Eligibility{}, false
}

// cacheState writes what grab needs from a committed packet row. A wrapped packet is not
// cached, since its payment would turn a cached "not paid" into a wrong refusal.
func (s *Service) cacheState(p Packet) {
	if s.cfg.Cache == nil || p.Status == store.StatusWrapped {
		return
	}
	if s.grabC == nil {
		if p.Status == store.StatusActive {
			s.cfg.Cache.SetRemaining(p.ID, p.RemainingCount)
		}
		return
	}
	s.grabC.SetState(p.ID, guard.PacketState{Status: int(p.Status), ExpiresAt: p.ExpiresAt, Remaining: p.RemainingCount})
}

// Open opens the packet for one user in its own transaction.
func (s *Service) Open(ctx context.Context, id int64, user string) (OpenOutcome, error) {
	out, err := s.OpenBatch(ctx, id, []string{user})
	if err != nil {
		return OpenOutcome{}, err
	}
	return out[0], out[0].Err
}

// ValidateOpen checks an open request before it is queued, so bad input never waits.
func (s *Service) ValidateOpen(id int64, user string) error {
	if err := ValidateUser("user", user, s.cfg.Limits); err != nil {
		return err
	}
	return s.known(id)
}

// OpenBatch opens the packet for users in order in one transaction (group commit). Users must
// have passed ValidateOpen. A packet-wide refusal or failure is the error; per-user
// refusals (exhausted) are in the outcomes.
func (s *Service) OpenBatch(ctx context.Context, id int64, users []string) ([]OpenOutcome, error) {
	for _, u := range users {
		if err := s.ValidateOpen(id, u); err != nil {
			return nil, err
		}
	}
	out, p, err := s.st.OpenBatch(ctx, id, users, s.cfg.Now(), s.share)
	if err != nil {
		return nil, err
	}
	s.cacheState(p)
	if s.grabC != nil {
		opened := make([]string, 0, len(out))
		for _, o := range out {
			if o.Err == nil {
				opened = append(opened, o.User)
			}
		}
		s.grabC.MarkOpened(id, opened)
	}
	return out, nil
}

// Details is a packet with a page of its receivers after seq afterSeq.
func (s *Service) Details(ctx context.Context, id int64, afterSeq, limit int) (Packet, []Receipt, error) {
	if err := s.known(id); err != nil {
		return Packet{}, nil, err
	}
	p, err := s.st.Get(ctx, id)
	if err != nil {
		return Packet{}, nil, err
	}
	rs, err := s.st.Receipts(ctx, id, afterSeq, limit)
	if err != nil {
		return Packet{}, nil, err
	}
	return p, rs, nil
}

// Cursor is a position in a user's history: strictly older than (At, PacketID). Its text
// form is routing.HistoryCursor's, shared with the gateway, which merges cells with it.
type Cursor struct {
	At       time.Time
	PacketID int64
}

// String is the wire form; the zero cursor is "".
func (c Cursor) String() string {
	if c.At.IsZero() {
		return ""
	}
	return routing.HistoryCursor{AtMillis: c.At.UnixMilli(), PacketID: c.PacketID}.String()
}

// ParseCursor reads the wire form; "" is the start (newest first).
func ParseCursor(field, v string) (Cursor, error) {
	if v == "" {
		return Cursor{}, nil
	}
	c, err := routing.ParseHistoryCursor(v)
	if err != nil {
		return Cursor{}, invalid(field, "must be <unix ms>:<packet id>")
	}
	return Cursor{At: time.UnixMilli(c.AtMillis).UTC(), PacketID: c.PacketID}, nil
}

// History pages a user's sent or received history newest first. History is written by the
// outbox relay, so it trails the money path by the relay's delay.
func (s *Service) History(ctx context.Context, user string, role Role, before Cursor, limit int) ([]HistoryItem, Cursor, error) {
	if err := ValidateUser("user", user, s.cfg.Limits); err != nil {
		return nil, Cursor{}, err
	}
	items, err := s.st.History(ctx, user, role, before.At, before.PacketID, limit)
	if err != nil {
		return nil, Cursor{}, err
	}
	var next Cursor
	if len(items) == limit && limit > 0 {
		last := items[len(items)-1]
		next = Cursor{At: last.At, PacketID: last.PacketID}
	}
	return items, next, nil
}

// ExpireDue settles packets whose deadline has passed (see store.Sweep).
func (s *Service) ExpireDue(ctx context.Context, limit int) ([]Settlement, error) {
	r, err := s.sweep(ctx, limit)
	return r.Settled, err
}

func (s *Service) sweep(ctx context.Context, limit int) (store.SweepResult, error) {
	r, err := s.st.Sweep(ctx, s.cfg.Now(), limit)
	if s.cfg.Cache != nil {
		for _, st := range r.Settled {
			s.cfg.Cache.Forget(st.PacketID)
		}
	}
	return r, err
}

// sweepBatch is how many due packets one sweep takes.
const sweepBatch = 200

// RunSweeper settles due packets every interval until ctx ends. A tick keeps sweeping while
// batches come back full: packets that fail are put off by the store, so the next batch holds
// other packets, and a backlog drains at database speed rather than one batch per tick.
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			r, err := s.sweep(ctx, sweepBatch)
			for _, st := range r.Settled {
				s.cfg.Log.Info("packet settled", "packet", st.PacketID, "status", st.Status.String(), "refundedCents", st.RefundedCents)
			}
			for _, id := range r.Orphans {
				s.cfg.Log.Warn("expiry index row dropped: no such packet in its day table or the cold table", "packet", id)
			}
			if err != nil && ctx.Err() == nil {
				// One line per sweep, not per packet: a broken table fails hundreds at once.
				s.cfg.Log.Error("expiry sweep", "due", r.Due, "failed", r.Failed, "stuck", r.Stuck, "firstErr", firstError(err))
			}
			// Stuck packets are still due: sweeping again now would take them again.
			if r.Due < sweepBatch || r.Stuck > 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// firstError is the first of a joined error.
func firstError(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		return j.Unwrap()[0]
	}
	return err
}

// known refuses, before any DB work, IDs no allocator of this region could have issued and
// packets another cell owns: answering those here would split a packet's requests over two
// databases.
func (s *Service) known(id int64) error {
	if id <= 0 || ids.Region(id) != s.cfg.Region {
		return fmt.Errorf("packet %d: %w", id, ErrNotFound)
	}
	if s.cfg.Owns != nil {
		return s.cfg.Owns(id)
	}
	return nil
}

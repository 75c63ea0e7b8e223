// Package guard is the cell server's per-packet concurrency guard and grab cache, backed by
// the memcached beside the server (docs/design.md §2, "memcached concurrency guard").
//
// The grab cache holds, per active packet, what grab needs (status, expiry, remaining
// shares) and, per (packet, user), an opened marker, so most grabs never touch the DB. Every
// value it holds can only be out of date in the optimistic direction (see PacketState).
//
// Acquire admits a DB transaction for a packet only while fewer than Limit are in flight for
// it, counted atomically in memcached (incr/decr on a key that expires, so a crashed server
// cannot leak counts for longer than the TTL) and also in this process. Over the limit the
// caller gets ErrOverLimit with a Retry-After and answers 429 instead of flooding the DB.
//
// memcached is an accelerator, never the source of truth. Every memcached call has a short
// timeout; when one fails the guard switches to its in-process counts (a local per-packet
// limit) and probes memcached again after a pause, so the money path never waits on a dead
// cache. A call that timed out after memcached applied it, or a release skipped while
// memcached is down, leaves a count behind until the key's TTL: the guard is then stricter
// for that packet for at most the TTL, never looser. The guard only ever refuses work; it must never be what makes a money result right
// or wrong — the DB transaction decides that.
package guard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrOverLimit is matched (errors.Is) by the *OverLimitError Acquire returns.
var ErrOverLimit = errors.New("too many transactions in flight for this packet")

// OverLimitError says a packet is at its in-flight limit and when to retry.
type OverLimitError struct {
	PacketID   int64
	InFlight   int
	Limit      int
	Local      bool // decided by the local fallback, memcached being unavailable
	RetryAfter time.Duration
}

func (e *OverLimitError) Error() string {
	return fmt.Sprintf("packet %d: %d transactions in flight, limit %d: %v", e.PacketID, e.InFlight, e.Limit, ErrOverLimit)
}

// Is makes errors.Is(err, ErrOverLimit) true.
func (e *OverLimitError) Is(target error) bool { return target == ErrOverLimit }

// RetryAfter extracts the suggested wait from an Acquire error.
func RetryAfter(err error) (time.Duration, bool) {
	var e *OverLimitError
	if errors.As(err, &e) {
		return e.RetryAfter, true
	}
	return 0, false
}

// Config sets up a Guard.
type Config struct {
	// Addr is the memcached host:port; empty runs on local counts only.
	Addr string
	// Limit is the most DB transactions in flight per packet (default 4).
	Limit int
	// LocalLimit is the per-packet limit within this process, always enforced and the only
	// one while memcached is unavailable (default Limit).
	LocalLimit int
	// TTL bounds how long an in-flight count survives a crash (default 30s; memcached
	// expiry has one-second resolution).
	TTL time.Duration
	// Timeout is every memcached call's deadline (default 50ms).
	Timeout time.Duration
	// ProbeEvery is how long the guard stays on local counts after a memcached failure
	// before one request probes memcached again (default 1s).
	ProbeEvery time.Duration
	// RetryAfter is what an over-limit caller is told to wait (default 200ms; HTTP rounds
	// it up to whole seconds).
	RetryAfter time.Duration
	// RemainingTTL is how long a cached remaining count lives (default 10s).
	RemainingTTL time.Duration
	// StateTTL is how long a packet's cached grab state lives (default 60s). Every open
	// batch rewrites it, so a hot packet's entry never ages out; the TTL only bounds how long
	// another server's stale (too high) count can send users on to open.
	StateTTL time.Duration
	// OpenedTTL is how long a (packet, user) opened marker lives (default 10m). A marker
	// is a permanent fact; the TTL only bounds the memory markers hold.
	OpenedTTL time.Duration
	// LocalCacheSize bounds the in-process remaining-count cache (default 100,000).
	LocalCacheSize int
	// KeyPrefix namespaces keys in a shared memcached (default "rp:").
	KeyPrefix string
	// MaxIdleConns for the memcached client (default 64).
	MaxIdleConns int

	Registerer prometheus.Registerer // nil registers nothing
	Logger     *slog.Logger
}

// Guard is safe for concurrent use.
type Guard struct {
	cfg    Config
	mc     *memcache.Client // nil without Addr
	ttlSec int32
	remSec int32
	stSec  int32
	opSec  int32
	log    *slog.Logger

	// downUntil is the UnixNano until which memcached is not tried; 0 when healthy.
	downUntil atomic.Int64

	local  [64]shard // in-flight counts of this process, by packet
	remMu  sync.Mutex
	remain map[int64]localRemaining

	rejections *prometheus.CounterVec
	rejLocal   prometheus.Counter
	rejShared  prometheus.Counter
	fallbacks  prometheus.Counter
	mcErrors   prometheus.Counter
	remLookups *prometheus.CounterVec
	stLookups  *prometheus.CounterVec
}

type shard struct {
	mu       sync.Mutex
	inFlight map[int64]int
}

type localRemaining struct {
	count   int
	expires time.Time
}

// New builds a Guard. It does not contact memcached: an absent memcached only means local
// counts until it appears.
func New(cfg Config) (*Guard, error) {
	if cfg.Limit <= 0 {
		cfg.Limit = 4
	}
	if cfg.LocalLimit <= 0 {
		cfg.LocalLimit = cfg.Limit
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 50 * time.Millisecond
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = time.Second
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 200 * time.Millisecond
	}
	if cfg.RemainingTTL <= 0 {
		cfg.RemainingTTL = 10 * time.Second
	}
	if cfg.StateTTL <= 0 {
		cfg.StateTTL = time.Minute
	}
	if cfg.OpenedTTL <= 0 {
		cfg.OpenedTTL = 10 * time.Minute
	}
	if cfg.LocalCacheSize <= 0 {
		cfg.LocalCacheSize = 100_000
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = "rp:"
	}
	if cfg.MaxIdleConns <= 0 {
		cfg.MaxIdleConns = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Guard{
		cfg:    cfg,
		ttlSec: expirySeconds(cfg.TTL),
		remSec: expirySeconds(cfg.RemainingTTL),
		stSec:  expirySeconds(cfg.StateTTL),
		opSec:  expirySeconds(cfg.OpenedTTL),
		log:    cfg.Logger.With("component", "guard"),
		remain: map[int64]localRemaining{},
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_guard_rejections_total",
			Help: "Acquire calls refused because a packet was at its in-flight limit, by who decided.",
		}, []string{"by"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_guard_fallbacks_total",
			Help: "Times the guard switched to local counts because memcached failed.",
		}),
		mcErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_guard_memcached_errors_total",
			Help: "memcached calls that failed or timed out.",
		}),
		remLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_guard_remaining_lookups_total",
			Help: "Remaining-count cache lookups, by result.",
		}, []string{"result"}),
		stLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_guard_grab_state_lookups_total",
			Help: "Grab-state cache lookups (packet state and the user's opened marker), by result.",
		}, []string{"result"}),
	}
	g.rejLocal = g.rejections.WithLabelValues("local")
	g.rejShared = g.rejections.WithLabelValues("memcached")
	for i := range g.local {
		g.local[i].inFlight = map[int64]int{}
	}
	if cfg.Addr != "" {
		g.mc = memcache.New(cfg.Addr)
		g.mc.Timeout = cfg.Timeout
		g.mc.MaxIdleConns = cfg.MaxIdleConns
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{g.rejections, g.fallbacks, g.mcErrors, g.remLookups, g.stLookups} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("guard: register metrics: %w", err)
			}
		}
	}
	return g, nil
}

// expirySeconds converts a TTL to memcached's whole seconds, at least one.
func expirySeconds(d time.Duration) int32 {
	s := int32((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Acquire admits one DB transaction for the packet, or returns an *OverLimitError. The
// release function must be called exactly once when the transaction is over; extra calls do
// nothing. Acquire never waits longer than one memcached timeout.
func (g *Guard) Acquire(ctx context.Context, packetID int64) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("guard packet %d: %w", packetID, err)
	}
	// The local count comes first and is always kept: it is the limit while memcached is
	// down, and it covers transactions admitted by memcached just before it failed.
	n := g.localAdd(packetID, 1)
	if n > g.cfg.LocalLimit {
		g.localAdd(packetID, -1)
		g.rejLocal.Inc()
		return nil, &OverLimitError{PacketID: packetID, InFlight: n - 1, Limit: g.cfg.LocalLimit, Local: true, RetryAfter: g.cfg.RetryAfter}
	}
	viaMemcached := false
	if g.useMemcached() {
		count, err := g.mcIncrement(packetID)
		switch {
		case err != nil:
			g.memcachedFailed("acquire", err) // the local count already admitted it
		case count > uint64(g.cfg.Limit):
			g.mcDecrement(packetID)
			g.localAdd(packetID, -1)
			g.rejShared.Inc()
			return nil, &OverLimitError{PacketID: packetID, InFlight: int(count) - 1, Limit: g.cfg.Limit, RetryAfter: g.cfg.RetryAfter}
		default:
			viaMemcached = true
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.localAdd(packetID, -1)
			if viaMemcached && g.useMemcachedNoProbe() {
				g.mcDecrement(packetID)
			}
		})
	}, nil
}

// Close drops the idle memcached connections. In-flight releases still work afterwards
// (the client re-dials), so shutdown order does not matter.
func (g *Guard) Close() error {
	if g.mc == nil {
		return nil
	}
	if err := g.mc.Close(); err != nil {
		return fmt.Errorf("close guard: %w", err)
	}
	return nil
}

// InFlight is this process's count of admitted transactions for a packet.
func (g *Guard) InFlight(packetID int64) int {
	s := &g.local[uint64(packetID)%uint64(len(g.local))]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight[packetID]
}

// Degraded reports whether the guard is running on local counts because memcached failed.
func (g *Guard) Degraded() bool {
	return g.mc != nil && g.downUntil.Load() != 0
}

func (g *Guard) localAdd(packetID int64, delta int) int {
	s := &g.local[uint64(packetID)%uint64(len(g.local))]
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.inFlight[packetID] + delta
	if n <= 0 {
		delete(s.inFlight, packetID)
		return 0
	}
	s.inFlight[packetID] = n
	return n
}

// useMemcached says whether to call memcached now. While it is marked down, one caller per
// ProbeEvery wins the right to probe it.
func (g *Guard) useMemcached() bool {
	if g.mc == nil {
		return false
	}
	until := g.downUntil.Load()
	if until == 0 {
		return true
	}
	now := time.Now().UnixNano()
	if now < until {
		return false
	}
	return g.downUntil.CompareAndSwap(until, now+int64(g.cfg.ProbeEvery))
}

// useMemcachedNoProbe is for releases and cache writes: they never probe a down memcached.
func (g *Guard) useMemcachedNoProbe() bool {
	return g.mc != nil && g.downUntil.Load() == 0
}

// Ping asks memcached whether it answers, regardless of whether the guard currently uses it; it
// changes nothing in the guard. Without Addr there is nothing to ask and it fails.
func (g *Guard) Ping() error {
	if g.mc == nil {
		return errors.New("guard: no memcached configured")
	}
	if err := g.mc.Ping(); err != nil {
		return fmt.Errorf("guard: ping memcached: %w", err)
	}
	return nil
}

func (g *Guard) memcachedFailed(op string, err error) {
	g.mcErrors.Inc()
	prev := g.downUntil.Swap(time.Now().Add(g.cfg.ProbeEvery).UnixNano())
	if prev == 0 {
		g.fallbacks.Inc()
		g.log.Warn("memcached unavailable; guarding with local counts", "op", op, "error", err)
	}
}

func (g *Guard) memcachedOK() {
	if g.downUntil.Load() != 0 && g.downUntil.Swap(0) != 0 {
		g.log.Info("memcached back; guarding with shared counts")
	}
}

func (g *Guard) inflightKey(packetID int64) string {
	return g.cfg.KeyPrefix + "if:" + strconv.FormatInt(packetID, 10)
}

func (g *Guard) remainingKey(packetID int64) string {
	return g.cfg.KeyPrefix + "rem:" + strconv.FormatInt(packetID, 10)
}

// mcIncrement is add-if-absent then increment: incr first (the common case, one round trip),
// and on a miss create the key with the TTL and incr again.
func (g *Guard) mcIncrement(packetID int64) (uint64, error) {
	key := g.inflightKey(packetID)
	n, err := g.mc.Increment(key, 1)
	if errors.Is(err, memcache.ErrCacheMiss) {
		err = g.mc.Add(&memcache.Item{Key: key, Value: []byte("0"), Expiration: g.ttlSec})
		if err != nil && !errors.Is(err, memcache.ErrNotStored) { // NotStored: another caller added it
			return 0, err
		}
		n, err = g.mc.Increment(key, 1)
	}
	if err != nil {
		return 0, err
	}
	g.memcachedOK()
	return n, nil
}

func (g *Guard) mcDecrement(packetID int64) {
	_, err := g.mc.Decrement(g.inflightKey(packetID), 1)
	if err != nil && !errors.Is(err, memcache.ErrCacheMiss) { // expired: nothing to undo
		g.memcachedFailed("release", err)
	}
}

// CachedRemaining returns the cached count of shares left in a packet. A miss or a stale
// value is harmless: the caller goes on to open, where the DB transaction decides.
func (g *Guard) CachedRemaining(packetID int64) (count int, ok bool) {
	if g.useMemcached() {
		it, err := g.mc.Get(g.remainingKey(packetID))
		switch {
		case err == nil:
			g.memcachedOK()
			if n, perr := strconv.Atoi(string(it.Value)); perr == nil {
				g.remLookups.WithLabelValues("hit").Inc()
				return n, true
			}
			g.remLookups.WithLabelValues("miss").Inc()
			return 0, false
		case errors.Is(err, memcache.ErrCacheMiss):
			g.memcachedOK()
			g.remLookups.WithLabelValues("miss").Inc()
			return 0, false
		default:
			g.memcachedFailed("get remaining", err)
		}
	}
	g.remMu.Lock()
	r, found := g.remain[packetID]
	g.remMu.Unlock()
	if !found || time.Now().After(r.expires) {
		g.remLookups.WithLabelValues("miss").Inc()
		return 0, false
	}
	g.remLookups.WithLabelValues("local_hit").Inc()
	return r.count, true
}

// SetRemaining caches a packet's remaining share count, in memcached and locally (the local
// copy answers while memcached is down).
func (g *Guard) SetRemaining(packetID int64, count int) {
	g.setLocalRemaining(packetID, count)
	if !g.useMemcachedNoProbe() {
		return
	}
	err := g.mc.Set(&memcache.Item{Key: g.remainingKey(packetID), Value: []byte(strconv.Itoa(count)), Expiration: g.remSec})
	if err != nil {
		g.memcachedFailed("set remaining", err)
	}
}

// Forget drops a packet's cached remaining count and grab state (e.g. when it expires or is
// refunded). Opened markers stay: they remain true after settlement.
func (g *Guard) Forget(packetID int64) {
	g.remMu.Lock()
	delete(g.remain, packetID)
	g.remMu.Unlock()
	for _, key := range []string{g.remainingKey(packetID), g.stateKey(packetID)} {
		if !g.useMemcachedNoProbe() {
			return
		}
		if err := g.mc.Delete(key); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			g.memcachedFailed("forget packet", err)
		}
	}
}

func (g *Guard) setLocalRemaining(packetID int64, count int) {
	now := time.Now()
	g.remMu.Lock()
	defer g.remMu.Unlock()
	if len(g.remain) >= g.cfg.LocalCacheSize {
		// Drop expired entries; if none, drop arbitrary ones (map order) — it is a cache.
		for id, r := range g.remain {
			if now.After(r.expires) {
				delete(g.remain, id)
			}
		}
		for id := range g.remain {
			if len(g.remain) < g.cfg.LocalCacheSize {
				break
			}
			delete(g.remain, id)
		}
	}
	g.remain[packetID] = localRemaining{count: count, expires: now.Add(g.cfg.RemainingTTL)}
}

package guard_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func newGuard(t *testing.T, cfg guard.Config) *guard.Guard {
	t.Helper()
	g, err := guard.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// load runs workers goroutines that each try attempts acquisitions on one packet, holding
// each admitted one briefly, and reports the most transactions seen in flight at once.
type load struct {
	inFlight, maxSeen, admitted, rejected atomic.Int64
	slowest                               atomic.Int64 // ns of the slowest Acquire
}

func (l *load) run(t *testing.T, g *guard.Guard, packet int64, workers, attempts int, shared *load, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < attempts || attempts == 0; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				release, err := g.Acquire(context.Background(), packet)
				if d := int64(time.Since(start)); d > l.slowest.Load() {
					l.slowest.Store(d)
				}
				if err != nil {
					if !errors.Is(err, guard.ErrOverLimit) {
						t.Errorf("acquire: %v", err)
						return
					}
					if ra, ok := guard.RetryAfter(err); !ok || ra <= 0 {
						t.Errorf("over-limit error without Retry-After: %v", err)
					}
					l.rejected.Add(1)
					time.Sleep(time.Millisecond) // a client backing off after a 429
					continue
				}
				l.admitted.Add(1)
				for _, c := range []*load{l, shared} {
					if c == nil {
						continue
					}
					n := c.inFlight.Add(1)
					for m := c.maxSeen.Load(); n > m && !c.maxSeen.CompareAndSwap(m, n); m = c.maxSeen.Load() {
					}
				}
				time.Sleep(100 * time.Microsecond) // the DB transaction's duration, not synchronisation
				for _, c := range []*load{l, shared} {
					if c != nil {
						c.inFlight.Add(-1)
					}
				}
				release()
			}
		}()
	}
	return &wg
}

func TestLimitHoldsAcross200GoroutinesAndTwoServers(t *testing.T) {
	mc := testenv.StartMemcached(t)
	const limit = 5
	reg := prometheus.NewRegistry()
	// A generous timeout: a call that times out after memcached applied it leaks a count
	// until the TTL (by design), which would spoil the exact zero checked at the end on a
	// loaded -race run.
	a := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: limit, Timeout: 2 * time.Second, Registerer: reg})
	b := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: limit, Timeout: 2 * time.Second})
	const packet = 1234567000
	var total, la, lb load
	wa := la.run(t, a, packet, 100, 40, &total, nil)
	wb := lb.run(t, b, packet, 100, 40, &total, nil)
	wa.Wait()
	wb.Wait()
	if m := total.maxSeen.Load(); m > limit {
		t.Fatalf("%d transactions in flight at once across both servers, limit %d", m, limit)
	}
	if la.admitted.Load()+lb.admitted.Load() == 0 || la.rejected.Load()+lb.rejected.Load() == 0 {
		t.Fatalf("admitted %d+%d, rejected %d+%d: the test did not exercise the limit",
			la.admitted.Load(), lb.admitted.Load(), la.rejected.Load(), lb.rejected.Load())
	}
	if a.Degraded() || b.Degraded() {
		t.Fatal("fell back to local counts with memcached up")
	}
	if got := sumMetric(t, reg, "redpacket_guard_rejections_total"); got == 0 {
		t.Error("no rejections counted in metrics")
	}
	if got := sumMetric(t, reg, "redpacket_guard_fallbacks_total"); got != 0 {
		t.Errorf("%v fallbacks with memcached up", got)
	}
	// Everything released: the shared counter is back to zero.
	it, err := memcache.New(mc.Addr()).Get("rp:if:" + strconv.Itoa(packet))
	if err != nil || strings.TrimSpace(string(it.Value)) != "0" {
		t.Fatalf("counter after all releases: %v %v", it, err)
	}
	if a.InFlight(packet) != 0 || b.InFlight(packet) != 0 {
		t.Fatal("local counts not back to zero")
	}
}

// sumMetric sums a counter family over its labels.
func sumMetric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func TestReleaseFreesASlotOnce(t *testing.T) {
	mc := testenv.StartMemcached(t)
	g := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: 2, RetryAfter: 300 * time.Millisecond})
	ctx := context.Background()
	r1, err := g.Acquire(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Acquire(ctx, 7); err != nil {
		t.Fatal(err)
	}
	_, err = g.Acquire(ctx, 7)
	var over *guard.OverLimitError
	if !errors.As(err, &over) || over.RetryAfter != 300*time.Millisecond || over.Limit != 2 || over.PacketID != 7 {
		t.Fatalf("third acquire: %v", err)
	}
	// Another packet is not affected.
	if _, err := g.Acquire(ctx, 8); err != nil {
		t.Fatalf("other packet: %v", err)
	}
	r1()
	r1() // a second call must not free another slot
	if _, err := g.Acquire(ctx, 7); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if _, err := g.Acquire(ctx, 7); !errors.Is(err, guard.ErrOverLimit) {
		t.Fatalf("double release freed two slots: %v", err)
	}
}

func TestCrashedServersCountsExpire(t *testing.T) {
	mc := testenv.StartMemcached(t)
	ctx := context.Background()
	crashed := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: 3, TTL: time.Second})
	for i := 0; i < 3; i++ {
		if _, err := crashed.Acquire(ctx, 99); err != nil { // never released: the server dies
			t.Fatal(err)
		}
	}
	survivor := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: 3, TTL: time.Second})
	if _, err := survivor.Acquire(ctx, 99); !errors.Is(err, guard.ErrOverLimit) {
		t.Fatalf("shared count ignored: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		release, err := survivor.Acquire(ctx, 99)
		if err == nil {
			release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked counts never expired: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

func TestMemcachedDeathFallsBackToLocalLimitAndRecovers(t *testing.T) {
	mc := testenv.StartMemcached(t)
	const limit = 3
	reg := prometheus.NewRegistry()
	g := newGuard(t, guard.Config{Addr: mc.Addr(), Limit: limit, ProbeEvery: 100 * time.Millisecond, Registerer: reg})
	const packet = 424242
	var l load
	stop := make(chan struct{})
	wg := l.run(t, g, packet, 200, 0, nil, stop)

	testenv.Eventually(t, 15*time.Second, "some admissions through memcached", testenv.Holds(func() bool { return l.admitted.Load() > 200 }))
	mc.Kill()
	before := l.admitted.Load()
	testenv.Eventually(t, 15*time.Second, "fallback to local counts", testenv.Holds(g.Degraded))
	testenv.Eventually(t, 15*time.Second, "admissions on local counts", testenv.Holds(func() bool { return l.admitted.Load() > before+500 }))
	mc.Restart()
	testenv.Eventually(t, 15*time.Second, "memcached used again", testenv.Holds(func() bool { return !g.Degraded() }))
	close(stop)
	wg.Wait()

	if m := l.maxSeen.Load(); m > limit {
		t.Fatalf("%d in flight at once, limit %d", m, limit)
	}
	if s := time.Duration(l.slowest.Load()); s > 2*time.Second {
		t.Errorf("slowest Acquire took %v: memcached failure blocked the caller", s)
	}
	if got := sumMetric(t, reg, "redpacket_guard_fallbacks_total"); got < 1 {
		t.Errorf("fallbacks metric %v", got)
	}
	// Back on memcached: an admission shows in the shared counter.
	release, err := g.Acquire(context.Background(), packet+1)
	if err != nil {
		t.Fatal(err)
	}
	it, err := memcache.New(mc.Addr()).Get("rp:if:" + strconv.Itoa(packet+1))
	if err != nil || strings.TrimSpace(string(it.Value)) != "1" {
		t.Fatalf("shared counter after recovery: %v %v", it, err)
	}
	release()
}

func TestRemainingCacheWithAndWithoutMemcached(t *testing.T) {
	mc := testenv.StartMemcached(t)
	g := newGuard(t, guard.Config{Addr: mc.Addr(), ProbeEvery: 50 * time.Millisecond})
	if _, ok := g.CachedRemaining(1); ok {
		t.Fatal("hit on an empty cache")
	}
	g.SetRemaining(1, 42)
	if n, ok := g.CachedRemaining(1); !ok || n != 42 {
		t.Fatalf("cached %d %v, want 42", n, ok)
	}
	g.Forget(1)
	if _, ok := g.CachedRemaining(1); ok {
		t.Fatal("hit after Forget")
	}
	g.SetRemaining(2, 7)
	mc.Kill()
	// The first call notices memcached is gone; the local copy answers.
	testenv.Eventually(t, 15*time.Second, "local answer with memcached down", testenv.Holds(func() bool {
		n, ok := g.CachedRemaining(2)
		return ok && n == 7 && g.Degraded()
	}))
	g.SetRemaining(2, 6)
	if n, ok := g.CachedRemaining(2); !ok || n != 6 {
		t.Fatalf("local cache %d %v, want 6", n, ok)
	}
	mc.Restart()
	testenv.Eventually(t, 15*time.Second, "memcached used again", testenv.Holds(func() bool {
		g.CachedRemaining(3)
		return !g.Degraded()
	}))
	g.SetRemaining(3, 5)
	it, err := memcache.New(mc.Addr()).Get("rp:rem:3")
	if err != nil || string(it.Value) != "5" {
		t.Fatalf("memcached after recovery: %v %v", it, err)
	}
}

func TestWithoutMemcachedTheLocalLimitApplies(t *testing.T) {
	g := newGuard(t, guard.Config{Limit: 2})
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := g.Acquire(ctx, 5); err != nil {
			t.Fatal(err)
		}
	}
	_, err := g.Acquire(ctx, 5)
	var over *guard.OverLimitError
	if !errors.As(err, &over) || !over.Local {
		t.Fatalf("local over-limit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := g.Acquire(cctx, 6); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

package packet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// cachedService is a service whose grab cache is a guard on a private memcached.
type cachedService struct {
	svc *packet.Service
	env *storetest.Env
	g   *guard.Guard
	mc  *testenv.Memcached
	clk *clock
	reg *prometheus.Registry
}

func newCachedService(t *testing.T) *cachedService {
	t.Helper()
	mc := testenv.StartMemcached(t)
	// A generous timeout: a loaded -race run must not mistake a slow answer for a dead cache.
	g, err := guard.New(guard.Config{Addr: mc.Addr(), Timeout: 2 * time.Second, ProbeEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	c := newClock()
	env := storetest.New(t, storetest.Options{Now: c.Now()})
	svc := packet.New(env.Store, &storetest.IDs{Now: c.Now}, packet.Config{Now: c.Now, Expiry: time.Hour, Cache: g})
	prefixes.Store(svc, env.Prefix)
	reg := prometheus.NewRegistry()
	for _, col := range svc.Collectors() {
		reg.MustRegister(col)
	}
	return &cachedService{svc: svc, env: env, g: g, mc: mc, clk: c, reg: reg}
}

// answers is redpacket_grab_answers_total by source.
func (cs *cachedService) answers(t *testing.T) (cache, db float64) {
	t.Helper()
	mfs, err := cs.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "redpacket_grab_answers_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch m.GetLabel()[0].GetValue() {
			case "cache":
				cache = m.GetCounter().GetValue()
			case "db":
				db = m.GetCounter().GetValue()
			}
		}
	}
	return cache, db
}

// selects is the MariaDB server's count of SELECT statements so far. The packet tests do
// not run in parallel, so a difference between two reads is this test's own queries.
func (cs *cachedService) selects(t *testing.T) int64 {
	t.Helper()
	var name string
	var n int64
	if err := cs.env.DB.QueryRow("SHOW GLOBAL STATUS LIKE 'Com_select'").Scan(&name, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (cs *cachedService) grab(t *testing.T, id int64, user string) packet.Eligibility {
	t.Helper()
	e, err := cs.svc.Grab(context.Background(), id, user)
	if err != nil {
		t.Fatalf("grab %d by %s: %v", id, user, err)
	}
	return e
}

func TestGrabOnActivePacketSkipsTheDatabase(t *testing.T) {
	cs := newCachedService(t)
	ctx := context.Background()
	p := wrapAndPay(t, cs.svc, packet.WrapRequest{Sender: "s", RequestID: "fast", TotalCents: 1000, Count: 10, Kind: packet.KindRandom})

	before := cs.selects(t)
	const grabs = 300
	for i := 0; i < grabs; i++ {
		if e := cs.grab(t, p.ID, fmt.Sprintf("u%03d", i)); !e.Eligible {
			t.Fatalf("grab %d on a fresh packet: %+v", i, e)
		}
	}
	fromCache, fromDB := cs.answers(t)
	if d := cs.selects(t) - before; d > grabs/20 {
		t.Fatalf("%d grabs ran %d SELECTs; want almost none", grabs, d)
	}
	if fromCache < grabs*0.95 {
		t.Fatalf("%v of %d grabs answered from the cache (%v from the DB)", fromCache, grabs, fromDB)
	}

	// After an open, that user's grab says already opened, still without the DB.
	if _, err := cs.svc.Open(ctx, p.ID, "u000"); err != nil {
		t.Fatal(err)
	}
	_, dbBefore := cs.answers(t)
	if e := cs.grab(t, p.ID, "u000"); e.Reason != packet.ReasonAlreadyOpened {
		t.Fatalf("grab after own open: %+v", e)
	}
	if e := cs.grab(t, p.ID, "u001"); !e.Eligible {
		t.Fatalf("grab by another user: %+v", e)
	}
	// A batch marks every opener and leaves the count at zero: exhausted for the rest.
	users := make([]string, 0, 12)
	for i := 1; i <= 12; i++ {
		users = append(users, fmt.Sprintf("u%03d", i))
	}
	out, err := cs.svc.OpenBatch(ctx, p.ID, users)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if want := i >= 9; errors.Is(o.Err, packet.ErrExhausted) != want {
			t.Fatalf("batch outcome %d: %+v", i, o)
		}
	}
	for i, u := range users {
		want := packet.ReasonAlreadyOpened
		if i >= 9 {
			want = packet.ReasonExhausted
		}
		if e := cs.grab(t, p.ID, u); e.Reason != want {
			t.Fatalf("grab by %s after the batch: %+v, want %s", u, e, want)
		}
	}
	if e := cs.grab(t, p.ID, "latecomer"); e.Eligible || e.Reason != packet.ReasonExhausted {
		t.Fatalf("grab on an exhausted packet: %+v", e)
	}
	if _, dbAfter := cs.answers(t); dbAfter != dbBefore {
		t.Fatalf("%v grabs went to the DB after opens, want 0", dbAfter-dbBefore)
	}
}

func TestGrabCacheNeverHoldsUnpaidOrSettledAsActive(t *testing.T) {
	cs := newCachedService(t)
	ctx := context.Background()
	p, _, err := cs.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: "unpaid", TotalCents: 300, Count: 3, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if e := cs.grab(t, p.ID, "bob"); e.Reason != packet.ReasonNotPaid {
		t.Fatalf("grab before pay: %+v", e)
	}
	// The DB answered not_paid; had it been cached, payment would leave it wrong.
	if _, err := cs.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "t-unpaid", AmountCents: 300}); err != nil {
		t.Fatal(err)
	}
	if e := cs.grab(t, p.ID, "bob"); !e.Eligible {
		t.Fatalf("grab after pay: %+v", e)
	}
	if _, err := cs.svc.Open(ctx, p.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	// Past the deadline the cached expiry answers; after settlement the DB does, once.
	cs.clk.Advance(time.Hour)
	cacheBefore, _ := cs.answers(t)
	if e := cs.grab(t, p.ID, "carol"); e.Reason != packet.ReasonExpired {
		t.Fatalf("grab past expiry: %+v", e)
	}
	if e := cs.grab(t, p.ID, "bob"); e.Reason != packet.ReasonAlreadyOpened {
		t.Fatalf("grab past expiry by an opener: %+v", e)
	}
	if cacheAfter, _ := cs.answers(t); cacheAfter != cacheBefore+2 {
		t.Fatalf("cache answered %v of 2 grabs past expiry", cacheAfter-cacheBefore)
	}
	if _, err := cs.svc.ExpireDue(ctx, 100); err != nil {
		t.Fatal(err)
	}
	_, dbBefore := cs.answers(t)
	for i := 0; i < 3; i++ {
		if e := cs.grab(t, p.ID, "dave"); e.Reason != packet.ReasonExpired {
			t.Fatalf("grab after settlement: %+v", e)
		}
	}
	if _, dbAfter := cs.answers(t); dbAfter != dbBefore+1 {
		t.Fatalf("%v of 3 grabs after settlement went to the DB, want 1 (it re-caches the final state)", dbAfter-dbBefore)
	}
}

// TestStaleCacheOnlySendsUsersToOpen plants a remaining count the DB no longer has: grab is
// optimistic, open refuses, and the refusal corrects the cache.
func TestStaleCacheOnlySendsUsersToOpen(t *testing.T) {
	cs := newCachedService(t)
	ctx := context.Background()
	p := wrapAndPay(t, cs.svc, packet.WrapRequest{Sender: "s", RequestID: "stale", TotalCents: 100, Count: 1, Kind: packet.KindFixed})
	if _, err := cs.svc.Open(ctx, p.ID, "first"); err != nil {
		t.Fatal(err)
	}
	cs.g.SetState(p.ID, guard.PacketState{Status: int(store.StatusActive), ExpiresAt: p.ExpiresAt, Remaining: 5})
	if e := cs.grab(t, p.ID, "second"); !e.Eligible {
		t.Fatalf("grab with a stale count: %+v, want eligible (open decides)", e)
	}
	if _, err := cs.svc.Open(ctx, p.ID, "second"); !errors.Is(err, packet.ErrExhausted) {
		t.Fatalf("open with a stale cache: %v, want ErrExhausted", err)
	}
	if e := cs.grab(t, p.ID, "second"); e.Reason != packet.ReasonExhausted {
		t.Fatalf("grab after the refused open: %+v", e)
	}
	if e := cs.grab(t, p.ID, "first"); e.Reason != packet.ReasonAlreadyOpened {
		t.Fatalf("grab by the opener: %+v", e)
	}
	got, err := cs.env.Store.Get(ctx, p.ID)
	if err != nil || got.RemainingCount != 0 || got.RemainingCents != 0 {
		t.Fatalf("packet after the refused open: %+v %v", got, err)
	}
}

func TestGrabWithMemcachedDownAnswersFromTheDatabase(t *testing.T) {
	cs := newCachedService(t)
	ctx := context.Background()
	active := wrapAndPay(t, cs.svc, packet.WrapRequest{Sender: "s", RequestID: "a", TotalCents: 500, Count: 5, Kind: packet.KindRandom})
	done := wrapAndPay(t, cs.svc, packet.WrapRequest{Sender: "s", RequestID: "d", TotalCents: 100, Count: 1, Kind: packet.KindFixed})
	unpaid, _, err := cs.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: "u", TotalCents: 100, Count: 1, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		id   int64
		user string
	}{{active.ID, "opener"}, {done.ID, "winner"}} {
		if _, err := cs.svc.Open(ctx, o.id, o.user); err != nil {
			t.Fatal(err)
		}
	}
	cs.mc.Kill()
	// check compares grab with what the DB knows. optimistic (markers lost with a memcached
	// restart) also allows "eligible", and "exhausted" for an opener of an exhausted packet:
	// neither can take a share from anyone.
	check := func(when string, optimistic bool) {
		t.Helper()
		for _, c := range []struct {
			id     int64
			user   string
			reason string
		}{
			{active.ID, "newcomer", ""},
			{active.ID, "opener", packet.ReasonAlreadyOpened},
			{done.ID, "loser", packet.ReasonExhausted},
			{done.ID, "winner", packet.ReasonAlreadyOpened},
			{unpaid.ID, "early", packet.ReasonNotPaid},
		} {
			e := cs.grab(t, c.id, c.user)
			if optimistic && (e.Eligible || c.reason == packet.ReasonAlreadyOpened && e.Reason == packet.ReasonExhausted && c.id == done.ID) {
				continue
			}
			if e.Eligible != (c.reason == "") || e.Reason != c.reason {
				t.Fatalf("%s: grab %d by %s: %+v, want reason %q", when, c.id, c.user, e, c.reason)
			}
		}
	}
	cacheBefore, dbBefore := cs.answers(t)
	check("memcached down", false)
	check("memcached still down", false)
	cacheAfter, dbAfter := cs.answers(t)
	if cacheAfter != cacheBefore || dbAfter != dbBefore+10 {
		t.Fatalf("with memcached down: %v answers from the cache, %v from the DB; want 0 and 10", cacheAfter-cacheBefore, dbAfter-dbBefore)
	}
	// Opens go on without it, and a restarted (empty) memcached fills again from the DB.
	if _, err := cs.svc.Open(ctx, active.ID, "late"); err != nil {
		t.Fatal(err)
	}
	cs.mc.Restart()
	testenv.Eventually(t, 15*time.Second, "grab served from the cache again", testenv.Holds(func() bool {
		before, _ := cs.answers(t)
		cs.grab(t, active.ID, "probe")
		after, _ := cs.answers(t)
		return after > before
	}))
	// The restart lost the opened markers: grab may now be optimistic for an opener, and
	// open answers the first amount again.
	if e := cs.grab(t, active.ID, "late"); !e.Eligible && e.Reason != packet.ReasonAlreadyOpened {
		t.Fatalf("grab by an opener whose marker was never written: %+v", e)
	}
	if o, err := cs.svc.Open(ctx, active.ID, "late"); err != nil || !o.Repeat {
		t.Fatalf("repeat open after the restart: %+v %v", o, err)
	}
	check("memcached back", true)
	check("memcached back, second look", true)
}

// TestGrabAndOpenRaceOnAHotPacket has every user grab and then open regardless of the
// answer, while others open: a "no" from grab must always be borne out by open.
func TestGrabAndOpenRaceOnAHotPacket(t *testing.T) {
	cs := newCachedService(t)
	ctx := context.Background()
	const shares, users = 40, 120
	p := wrapAndPay(t, cs.svc, packet.WrapRequest{Sender: "s", RequestID: "hot-grab", TotalCents: 4000, Count: shares, Kind: packet.KindRandom})
	var wg sync.WaitGroup
	var mu sync.Mutex
	opened := 0
	for i := 0; i < users; i++ {
		wg.Add(1)
		go func(u string) {
			defer wg.Done()
			for round := 0; round < 2; round++ {
				e, err := cs.svc.Grab(ctx, p.ID, u)
				if err != nil {
					t.Errorf("grab %s: %v", u, err)
					return
				}
				o, err := cs.svc.Open(ctx, p.ID, u)
				switch {
				case e.Reason == packet.ReasonAlreadyOpened && (err != nil || !o.Repeat):
					t.Errorf("%s: grab said already opened, open gave %+v %v", u, o, err)
				case e.Reason == packet.ReasonExhausted && !errors.Is(err, packet.ErrExhausted) && !(err == nil && o.Repeat):
					t.Errorf("%s: grab said exhausted, open gave %+v %v", u, o, err)
				case e.Reason != "" && e.Reason != packet.ReasonAlreadyOpened && e.Reason != packet.ReasonExhausted:
					t.Errorf("%s: grab on an active packet: %+v", u, e)
				case err == nil && !o.Repeat:
					mu.Lock()
					opened++
					mu.Unlock()
				case err != nil && !errors.Is(err, packet.ErrExhausted):
					t.Errorf("open %s: %v", u, err)
				}
			}
		}(fmt.Sprintf("h%03d", i))
	}
	wg.Wait()
	if opened != shares {
		t.Fatalf("%d shares opened, want %d", opened, shares)
	}
	if e := cs.grab(t, p.ID, "after"); e.Reason != packet.ReasonExhausted {
		t.Fatalf("grab after the rush: %+v", e)
	}
}

package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
)

// guesses reads redpacket_store_open_guesses_total by result.
func guesses(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "redpacket_store_open_guesses_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// A packet this server paid or opened last runs its next open in one round trip; one the
// cell's other server opened in between makes the remembered row stale, and the open then
// runs under the lock with the right shares. Two servers of one cell alternate here, so
// every remembered row but the first is stale.
func TestOpenOnARememberedRowAcrossTwoServers(t *testing.T) {
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Registerer: regA})
	a, b := env.Store, env.Twin(t, regB)
	ctx := context.Background()
	svc := packet.New(a, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)

	open := func(st *store.Store, user string) store.OpenOutcome {
		t.Helper()
		out, _, err := st.OpenBatch(ctx, p.ID, []string{user}, time.Now(), fixed)
		if err != nil || out[0].Err != nil {
			t.Fatalf("open for %s: %+v, %v", user, out, err)
		}
		return out[0]
	}
	// a paid it: its first open is a hit.
	if got := open(a, "u1"); got.AmountCents != 100 || got.Seq != 1 {
		t.Fatalf("u1: %+v", got)
	}
	if g := guesses(t, regA); g["hit"] != 1 {
		t.Fatalf("a's guesses after its first open: %v, want one hit", g)
	}
	// b has never seen the packet; a's memory of it is then stale.
	open(b, "u2")
	if got := open(a, "u3"); got.AmountCents != 100 || got.Seq != 3 {
		t.Fatalf("u3 after b's open: %+v, want seq 3", got)
	}
	if g := guesses(t, regA); g["stale"] != 1 || g["hit"] != 1 {
		t.Fatalf("a's guesses: %v, want 1 hit and 1 stale", g)
	}
	for i := 4; i <= 10; i++ {
		st := a
		if i%2 == 0 {
			st = b
		}
		if got := open(st, fmt.Sprintf("u%d", i)); got.Seq != i {
			t.Fatalf("u%d: %+v", i, got)
		}
	}
	out, _, err := a.OpenBatch(ctx, p.ID, []string{"late"}, time.Now(), fixed)
	if err != nil || !errors.Is(out[0].Err, store.ErrExhausted) {
		t.Fatalf("open of an exhausted packet: %+v, %v", out, err)
	}
	assertConserved(t, env, p.ID, 1000)
	assertNoOpenTransaction(t, env)
}

// A repeat among the users of a remembered packet fails the receipt insert; nothing of the
// attempt stays and the repeat gets its first amount.
func TestOpenOnARememberedRowAnswersARepeat(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Registerer: reg})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)
	if _, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"alice"}, time.Now(), fixed); err != nil {
		t.Fatal(err)
	}
	out, got, err := env.Store.OpenBatch(ctx, p.ID, []string{"bob", "alice", "bob"}, time.Now(), fixed)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.OpenOutcome{
		{User: "bob", AmountCents: 100, Seq: 2},
		{User: "alice", AmountCents: 100, Seq: 1, Repeat: true},
		{User: "bob", AmountCents: 100, Seq: 2, Repeat: true},
	}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("outcome %d: %+v, want %+v", i, out[i], want[i])
		}
	}
	if got.RemainingCents != 800 || got.RemainingCount != 8 {
		t.Fatalf("packet after the batch: %d cents / %d shares, want 800 / 8", got.RemainingCents, got.RemainingCount)
	}
	if g := guesses(t, reg); g["repeat"] != 1 || g["hit"] != 1 {
		t.Fatalf("guesses: %v, want the first open a hit and the second a repeat", g)
	}
	assertConserved(t, env, p.ID, 1000)
	assertNoOpenTransaction(t, env)
}

// A packet the sweeper expired (on a server whose clock is ahead) stays remembered as active
// on the server that opened it; that server's next open, by its own clock still in time,
// finds the row expired and refuses under the lock. Past the remembered expiry by its own
// clock, the server does not guess at all.
func TestOpenOnARememberedRowTheSweeperExpired(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Registerer: reg})
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	p := paidPacket(t, svc, "s", "r", "t", 1000, 10)
	if _, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"alice"}, time.Now(), fixed); err != nil {
		t.Fatal(err)
	}
	sweeper := env.Twin(t, nil)
	settled, err := sweeper.ExpireDue(ctx, time.Now().Add(2*time.Hour), 10)
	if err != nil || len(settled) != 1 {
		t.Fatalf("sweep: %+v, %v", settled, err)
	}
	out, _, err := env.Store.OpenBatch(ctx, p.ID, []string{"bob"}, time.Now(), fixed)
	if err != nil || !errors.Is(out[0].Err, store.ErrExpired) {
		t.Fatalf("open after the sweep: %+v, %v; want expired", out, err)
	}
	if g := guesses(t, reg); g["stale"] != 1 {
		t.Fatalf("guesses: %v, want the open after the sweep stale", g)
	}
	out, _, err = env.Store.OpenBatch(ctx, p.ID, []string{"alice", "carol"}, time.Now().Add(3*time.Hour), fixed)
	if err != nil || !out[0].Repeat || out[0].AmountCents != 100 || !errors.Is(out[1].Err, store.ErrExpired) {
		t.Fatalf("open past expiry: %+v, %v; want alice's repeat and carol expired", out, err)
	}
	assertConserved(t, env, p.ID, 1000)
	assertNoOpenTransaction(t, env)
}

// Two servers of one cell open a few packets at once, with repeats, each remembering what it
// committed: every share is paid once, to one user, out of what the packet holds. The seed
// is printed so a failure reproduces.
func TestRememberedRowsUnderConcurrencySeeded(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	env := storetest.New(t, storetest.Options{})
	stores := []*store.Store{env.Store, env.Twin(t, nil)}
	ctx := context.Background()
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	const packets, shares, users = 3, 40, 60
	ps := make([]store.Packet, packets)
	for i := range ps {
		ps[i] = paidPacket(t, svc, "s", fmt.Sprint("r", i), fmt.Sprint("t", i), 4000+40*int64(i), shares)
	}
	var mu sync.Mutex
	paid := map[string]int64{} // packet/user → amount told
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			st := stores[w%2]
			for i := 0; i < 40; i++ {
				p := ps[r.IntN(packets)]
				batch := make([]string, 1+r.IntN(3))
				for j := range batch {
					batch[j] = fmt.Sprint("u", r.IntN(users))
				}
				out, _, err := st.OpenBatch(ctx, p.ID, batch, time.Now(), randomShares(r))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, o := range out {
					if o.Err != nil {
						continue
					}
					k := fmt.Sprint(p.ID, "/", o.User)
					if prev, ok := paid[k]; ok && prev != o.AmountCents {
						errs <- fmt.Errorf("%s told %d, earlier %d", k, o.AmountCents, prev)
					}
					paid[k] = o.AmountCents
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, p := range ps {
		assertConserved(t, env, p.ID, 4000+40*int64(i))
		rs, err := env.Store.Receipts(ctx, p.ID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, rc := range rs {
			if told := paid[fmt.Sprint(p.ID, "/", rc.User)]; told != rc.AmountCents {
				t.Fatalf("packet %d: %s recorded %d, told %d", p.ID, rc.User, rc.AmountCents, told)
			}
		}
	}
}

// randomShares draws each share from r, at least a cent, leaving a cent for every share after.
func randomShares(r *rand.Rand) store.ShareFunc {
	return func(_ store.Kind, remaining int64, count int) (int64, error) {
		if count == 1 {
			return remaining, nil
		}
		return 1 + r.Int64N(remaining-int64(count)+1), nil
	}
}

// assertConserved: the packet is of total cents, and its receive records, its remaining
// amount and what was refunded add up to it, each share is at least a cent, no user holds two, and each record has its
// outbox credit.
func assertConserved(t *testing.T, env *storetest.Env, id, total int64) {
	t.Helper()
	ctx := context.Background()
	p, err := env.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := env.Store.Receipts(ctx, id, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	sum, users := int64(0), map[string]bool{}
	for i, r := range rs {
		if r.AmountCents < 1 || users[r.User] || r.Seq != i+1 {
			t.Fatalf("packet %d: receipt %+v (seq %d expected, user seen %v)", id, r, i+1, users[r.User])
		}
		users[r.User] = true
		sum += r.AmountCents
	}
	if p.TotalCents != total || sum+p.RemainingCents+p.RefundedCents != total || p.RemainingCount+len(rs) != p.Count && p.Status == store.StatusActive {
		t.Fatalf("packet %d: shares %d + remaining %d + refunded %d != total %d (count %d, %d receipts, %d left)",
			id, sum, p.RemainingCents, p.RefundedCents, p.TotalCents, p.Count, len(rs), p.RemainingCount)
	}
	var credits int
	if err := env.DB.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+env.Prefix+"_cell.outbox WHERE packet_id = ? AND kind = ?", id, int(store.OutboxCredit)).Scan(&credits); err != nil {
		t.Fatal(err)
	}
	if credits != len(rs) {
		t.Fatalf("packet %d: %d credit rows for %d receipts", id, credits, len(rs))
	}
}

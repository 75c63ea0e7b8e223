package store_test

import (
	"context"
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

// commitPackets reads redpacket_store_open_commit_packets (how many transactions, how many
// packets in them) and redpacket_store_open_commit_split_total.
func commitPackets(t *testing.T, reg *prometheus.Registry) (commits uint64, packets float64, split float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "redpacket_store_open_commit_packets":
			h := mf.GetMetric()[0].GetHistogram()
			commits, packets = h.GetSampleCount(), h.GetSampleSum()
		case "redpacket_store_open_commit_split_total":
			split = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return commits, packets, split
}

// While one packet's open waits on a row lock another transaction holds, the opens of two
// other packets queue behind it and then commit together; one of them is stale (the cell's
// other server opened it meanwhile), so that transaction is rolled back whole and each runs
// alone: the stale one under the lock, with the right share, the other from its remembered
// row. The waiting open gives up its one-round-trip try after guessLockWait and gets its
// share once the lock is released, without holding up the other two.
func TestOpensOfDifferentPacketsCommitTogether(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Registerer: reg})
	a, b := env.Store, env.Twin(t, nil)
	ctx := context.Background()
	svc := packet.New(a, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	x := paidPacket(t, svc, "s", "rx", "tx", 1000, 10)
	y := paidPacket(t, svc, "s", "ry", "ty", 1000, 10)
	z := paidPacket(t, svc, "s", "rz", "tz", 1000, 10)
	// The other server opens y: a's memory of y is now stale.
	if out, _, err := b.OpenBatch(ctx, y.ID, []string{"early"}, time.Now(), fixed); err != nil || out[0].AmountCents != 100 {
		t.Fatalf("b opens y: %+v, %v", out, err)
	}

	hold, err := env.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	packets, _ := a.Tables(x.ID)
	if _, err := hold.ExecContext(ctx, "SELECT id FROM "+packets+" WHERE id = ? FOR UPDATE", x.ID); err != nil {
		t.Fatal(err)
	}
	type res struct {
		out []store.OpenOutcome
		err error
		at  time.Duration
	}
	start := time.Now()
	open := func(id int64, user string, ch chan<- res) {
		out, _, err := a.OpenBatch(ctx, id, []string{user}, time.Now(), fixed)
		ch <- res{out, err, time.Since(start)}
	}
	xc, yc, zc := make(chan res, 1), make(chan res, 1), make(chan res, 1)
	go open(x.ID, "ux", xc)
	time.Sleep(300 * time.Millisecond) // x's try is in flight, waiting on the lock
	go open(y.ID, "uy", yc)
	go open(z.ID, "uz", zc)
	for _, c := range []struct {
		name string
		ch   chan res
		seq  int
	}{{"y", yc, 2}, {"z", zc, 1}} {
		r := <-c.ch
		if r.err != nil || r.out[0].Err != nil || r.out[0].AmountCents != 100 || r.out[0].Seq != c.seq || r.out[0].Repeat {
			t.Fatalf("%s: %+v, %v", c.name, r.out, r.err)
		}
		if r.at > 3*time.Second {
			t.Fatalf("%s answered after %s: held up by the locked packet", c.name, r.at)
		}
	}
	select {
	case r := <-xc:
		t.Fatalf("x answered while its row was locked: %+v, %v", r.out, r.err)
	default:
	}
	if err := hold.Commit(); err != nil {
		t.Fatal(err)
	}
	if r := <-xc; r.err != nil || r.out[0].AmountCents != 100 || r.out[0].Seq != 1 {
		t.Fatalf("x: %+v, %v", r.out, r.err)
	}
	commits, inThem, split := commitPackets(t, reg)
	// x's try, the combined y+z, then z alone (y alone is stale: its guess never reaches the
	// lane again after the split; it runs locked).
	if split != 1 || inThem < float64(commits)+1 {
		t.Fatalf("%d one-round-trip commits of %v packets, %v split: want y and z in one, split once", commits, inThem, split)
	}
	if g := guesses(t, reg); g["stale"] != 2 || g["hit"] != 1 {
		t.Fatalf("guesses %v: want x and y stale (lock wait, other server), z a hit", g)
	}
	for _, p := range []store.Packet{x, y, z} {
		assertConserved(t, env, p.ID, 1000)
	}
	assertNoOpenTransaction(t, env)
}

// Many packets opened at once through one store, one batch in flight per packet as the queue
// runs them, while the cell's other server opens some of the same packets and users repeat:
// opens commit several packets to a transaction, and every share is still paid once, to one
// user, out of what its packet holds. The seed is printed so a failure reproduces.
func TestCombinedOpensUnderConcurrencySeeded(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	reg := prometheus.NewRegistry()
	env := storetest.New(t, storetest.Options{Registerer: reg})
	a, b := env.Store, env.Twin(t, nil)
	ctx := context.Background()
	svc := packet.New(a, &storetest.IDs{}, packet.Config{Expiry: time.Hour})
	const packets, shares, users = 24, 30, 40
	ps := make([]store.Packet, packets)
	for i := range ps {
		ps[i] = paidPacket(t, svc, "s", fmt.Sprint("r", i), fmt.Sprint("t", i), 3000+30*int64(i), shares)
	}
	var mu sync.Mutex
	told := map[string]int64{}
	record := func(id int64, out []store.OpenOutcome) error {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range out {
			if o.Err != nil {
				continue
			}
			k := fmt.Sprint(id, "/", o.User)
			if prev, ok := told[k]; ok && prev != o.AmountCents {
				return fmt.Errorf("%s told %d, earlier %d", k, o.AmountCents, prev)
			}
			told[k] = o.AmountCents
		}
		return nil
	}
	errs := make(chan error, packets+1)
	var wg sync.WaitGroup
	for i := range ps {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(i)))
			for n := 0; n < 20; n++ {
				u := fmt.Sprint("u", r.IntN(users))
				out, _, err := a.OpenBatch(ctx, ps[i].ID, []string{u}, time.Now(), randomShares(r))
				if err == nil {
					err = record(ps[i].ID, out)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(seed, 1<<20))
		for n := 0; n < 40; n++ {
			p := ps[r.IntN(packets)]
			out, _, err := b.OpenBatch(ctx, p.ID, []string{fmt.Sprint("u", r.IntN(users))}, time.Now(), randomShares(r))
			if err == nil {
				err = record(p.ID, out)
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	commits, inThem, _ := commitPackets(t, reg)
	if inThem <= float64(commits) {
		t.Fatalf("%d one-round-trip commits of %v packets: no two packets ever committed together", commits, inThem)
	}
	t.Logf("%d one-round-trip commits of %v packets", commits, inThem)
	for i, p := range ps {
		assertConserved(t, env, p.ID, 3000+30*int64(i))
		rs, err := a.Receipts(ctx, p.ID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, rc := range rs {
			if got := told[fmt.Sprint(p.ID, "/", rc.User)]; got != rc.AmountCents {
				t.Fatalf("packet %d: %s recorded %d, told %d", p.ID, rc.User, rc.AmountCents, got)
			}
		}
	}
	assertNoOpenTransaction(t, env)
}

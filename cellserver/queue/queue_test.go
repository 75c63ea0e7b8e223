package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func setup(t *testing.T, cfg queue.Config) (*packet.Service, *queue.Queue) {
	t.Helper()
	env := storetest.New(t, storetest.Options{})
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{})
	q, err := queue.New(svc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	return svc, q
}

func newPacket(t *testing.T, svc *packet.Service, req string, total int64, count int) int64 {
	t.Helper()
	ctx := context.Background()
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: req, TotalCents: total, Count: count, Kind: packet.KindRandom}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "pay-" + req, AmountCents: total}); err != nil {
		t.Fatal(err)
	}
	return p.ID
}

func TestThreeHundredUsersOneHundredShares(t *testing.T) {
	reg := prometheus.NewRegistry()
	svc, q := setup(t, queue.Config{Workers: 4, Registerer: reg})
	id := newPacket(t, svc, "hot", 100_00, 100)
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int64{}
	exhausted := 0
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func(u string) {
			defer wg.Done()
			o, err := q.Open(context.Background(), id, u)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && !o.Repeat:
				if _, dup := got[u]; dup {
					t.Errorf("%s opened twice", u)
				}
				got[u] = o.AmountCents
			case errors.Is(err, packet.ErrExhausted):
				exhausted++
			default:
				t.Errorf("open %s: %+v %v", u, o, err)
			}
		}(fmt.Sprintf("user-%03d", i))
	}
	wg.Wait()
	var sum int64
	for _, a := range got {
		if a < 1 {
			t.Errorf("share %d below a cent", a)
		}
		sum += a
	}
	if len(got) != 100 || exhausted != 200 || sum != 100_00 {
		t.Fatalf("%d opened, %d exhausted, Σ %d; want 100, 200, 10000", len(got), exhausted, sum)
	}
	p, rs, err := svc.Details(context.Background(), id, 0, 1000)
	if err != nil || len(rs) != 100 || p.RemainingCents != 0 || p.RemainingCount != 0 {
		t.Fatalf("details: %+v, %d receipts, %v", p, len(rs), err)
	}
	for _, r := range rs {
		if got[r.User] != r.AmountCents {
			t.Errorf("receipt %s %d, caller was told %d", r.User, r.AmountCents, got[r.User])
		}
	}
	// The burst must have been group-committed: fewer transactions than opens.
	if n := testutil.CollectAndCount(reg, "redpacket_queue_batch_size"); n == 0 {
		t.Fatal("no batch size metric")
	}
}

func TestThousandOpensOverFiftyPackets(t *testing.T) {
	svc, q := setup(t, queue.Config{Workers: 8})
	var packets []int64
	for i := 0; i < 50; i++ {
		packets = append(packets, newPacket(t, svc, fmt.Sprintf("p%d", i), 50_00, 20))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	sums := map[int64]int64{}
	opened := map[int64]map[string]bool{}
	// 20 users per packet, each opening twice: 1,000 distinct opens + 1,000 repeats.
	for round := 0; round < 2; round++ {
		for i := 0; i < 1000; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				id := packets[i%50]
				u := fmt.Sprintf("u%d", i/50)
				o, err := q.Open(context.Background(), id, u)
				if err != nil {
					t.Errorf("open %d %s: %v", id, u, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if opened[id] == nil {
					opened[id] = map[string]bool{}
				}
				if !o.Repeat {
					if opened[id][u] {
						t.Errorf("%s opened %d twice", u, id)
					}
					opened[id][u] = true
					sums[id] += o.AmountCents
				}
			}(i)
		}
	}
	wg.Wait()
	for _, id := range packets {
		if len(opened[id]) != 20 || sums[id] != 50_00 {
			t.Errorf("packet %d: %d openers, Σ %d; want 20, 5000", id, len(opened[id]), sums[id])
		}
		p, err := svc.Store().Get(context.Background(), id)
		if err != nil || p.RemainingCents != 0 || p.RemainingCount != 0 {
			t.Errorf("packet %d after: %+v %v", id, p, err)
		}
	}
}

func TestFullQueueTakesGuardedPathOrIsRefused(t *testing.T) {
	g, err := guard.New(guard.Config{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	svc, q := setup(t, queue.Config{Workers: 1, Depth: 1, Guard: g})
	id := newPacket(t, svc, "burst", 200_00, 200)
	// Hold the only worker so the queue fills.
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = q.Do(context.Background(), id, func(context.Context) error { close(started); <-release; return nil })
	}()
	<-started
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, overloaded int
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := q.Open(context.Background(), id, fmt.Sprintf("u%d", i))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, queue.ErrOverloaded):
				overloaded++
			default:
				t.Errorf("open: %v", err)
			}
		}(i)
	}
	// Poll until every caller but the one in the queue has answered.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := ok + overloaded
		mu.Unlock()
		if n >= 49 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	if overloaded == 0 || ok+overloaded != 50 {
		t.Fatalf("ok %d overloaded %d: want some refused and all answered", ok, overloaded)
	}
	p, rs, err := svc.Details(context.Background(), id, 0, 1000)
	if err != nil || len(rs) != ok || p.Count-p.RemainingCount != ok {
		t.Fatalf("%d opens answered ok but %d receipts (%+v, %v)", ok, len(rs), p, err)
	}
}

func TestFIFOAndRepeatsInsideABatch(t *testing.T) {
	svc, q := setup(t, queue.Config{Workers: 1})
	id := newPacket(t, svc, "fifo", 10_00, 5)
	// Block the worker, queue opens (with repeats) behind it, then release: they run as a batch.
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = q.Do(context.Background(), id, func(context.Context) error { close(started); <-release; return nil })
	}()
	<-started
	users := []string{"a", "b", "a", "c", "b", "d", "e", "f", "a"}
	type answer struct {
		amt    int64
		seq    int
		repeat bool
		err    error
	}
	answers := make([]answer, len(users))
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Add(1)
		go func(i int, u string) {
			defer wg.Done()
			o, err := q.Open(context.Background(), id, u)
			answers[i] = answer{o.AmountCents, o.Seq, o.Repeat, err}
		}(i, u)
		// Arrival order matters for the check below: wait until it is queued.
		deadline := time.Now().Add(20 * time.Second)
		for q.Depth() < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("open %d never reached the queue", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	wg.Wait()
	first := map[string]answer{}
	var sum int64
	for i, u := range users {
		a := answers[i]
		if u == "f" {
			if !errors.Is(a.err, packet.ErrExhausted) {
				t.Errorf("sixth distinct user: %+v, want exhausted", a)
			}
			continue
		}
		if a.err != nil {
			t.Fatalf("open %s: %v", u, a.err)
		}
		if f, seen := first[u]; seen {
			if !a.repeat || a.amt != f.amt {
				t.Errorf("repeat of %s: %+v, first %+v", u, a, f)
			}
			continue
		}
		if a.repeat {
			t.Errorf("first open of %s marked repeat", u)
		}
		first[u] = a
		sum += a.amt
	}
	if sum != 10_00 {
		t.Fatalf("Σ %d, want 1000", sum)
	}
	// FIFO: shares were assigned in arrival order.
	for i, u := range []string{"a", "b", "c", "d", "e"} {
		if first[u].seq != i+1 {
			t.Errorf("%s got seq %d, want %d", u, first[u].seq, i+1)
		}
	}
}

func TestCloseDrains(t *testing.T) {
	svc, q := setup(t, queue.Config{Workers: 2})
	id := newPacket(t, svc, "drain", 100_00, 100)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := q.Open(context.Background(), id, fmt.Sprintf("u%d", i))
			if err != nil && !errors.Is(err, queue.ErrClosed) {
				errs <- err
			}
		}(i)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("open during close: %v", err)
	}
	if _, err := q.Open(context.Background(), id, "late"); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("open after close: %v", err)
	}
}

// TestPayAndOpensKeepArrivalOrder queues, behind a busy worker, an open, the payment, and
// more opens for one packet: the open that arrived before the payment is refused as not
// paid, the ones after it succeed, in order.
func TestPayAndOpensKeepArrivalOrder(t *testing.T) {
	svc, q := setup(t, queue.Config{Workers: 1})
	ctx := context.Background()
	p, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: "order", TotalCents: 300, Count: 3, Kind: packet.KindFixed}, -1)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = q.Do(ctx, p.ID, func(context.Context) error { close(started); <-release; return nil })
	}()
	<-started
	type answer struct {
		seq int
		err error
	}
	answers := make([]answer, 4)
	var wg sync.WaitGroup
	waitQueued := func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		for q.Depth() < n {
			if time.Now().After(deadline) {
				t.Fatalf("request %d never reached the queue", n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	open := func(i int, u string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := q.Open(ctx, p.ID, u)
			answers[i] = answer{o.Seq, err}
		}()
	}
	open(0, "early")
	waitQueued(1)
	wg.Add(1)
	var payErr error
	go func() {
		defer wg.Done()
		payErr = q.Do(ctx, p.ID, func(ctx context.Context) error {
			_, err := svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: "po", AmountCents: 300})
			return err
		})
	}()
	waitQueued(2)
	open(1, "a")
	waitQueued(3)
	open(2, "b")
	waitQueued(4)
	close(release)
	wg.Wait()
	if payErr != nil {
		t.Fatal(payErr)
	}
	if !errors.Is(answers[0].err, packet.ErrNotPaid) {
		t.Fatalf("open queued before the payment: %+v, want not paid", answers[0])
	}
	if answers[1].err != nil || answers[1].seq != 1 || answers[2].err != nil || answers[2].seq != 2 {
		t.Fatalf("opens after the payment: %+v %+v", answers[1], answers[2])
	}
}

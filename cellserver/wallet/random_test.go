package wallet_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/wallet"
)

// randomWallet fails a fraction of deliveries, as a wallet service under trouble does.
type randomWallet struct {
	wallet.Wallet
	mu  sync.Mutex
	rnd *rand.Rand
}

func (w *randomWallet) Apply(ctx context.Context, ts []wallet.Transfer) error {
	w.mu.Lock()
	fail := w.rnd.IntN(5) == 0
	w.mu.Unlock()
	if fail {
		return errors.New("wallet hiccup")
	}
	return w.Wallet.Apply(ctx, ts)
}

// TestRandomLifecyclesKeepInvariants runs a seeded random mix of wraps, payments (some
// repeated), opens (some repeated, some abandoned by impatient clients), grabs, expiry sweeps
// and clock jumps from many goroutines, with the relay delivering to a wallet that fails one
// call in five. Afterwards every packet is settled and the audit must find docs/design.md §4 intact,
// and every amount a caller was told must be the one recorded.
func TestRandomLifecyclesKeepInvariants(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	q, err := queue.New(f.svc, queue.Config{Workers: 4, Depth: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(ctx)
	relay, err := wallet.NewRelay(f.st, &randomWallet{Wallet: f.ledger, rnd: rand.New(rand.NewPCG(9, 9))}, f.st,
		wallet.RelayConfig{Interval: 5 * time.Millisecond, BaseBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Batch: 16})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); relay.Run(rctx) }()
	start := f.clock.Now()

	var mu sync.Mutex
	var packets []int64
	told := map[string]int64{} // packet/user → amount a caller was told
	var opened atomic.Int64
	const goroutines, ops = 12, 60
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(g), 42))
			for i := 0; i < ops; i++ {
				mu.Lock()
				var id int64
				if len(packets) > 0 {
					id = packets[rnd.IntN(len(packets))]
				}
				mu.Unlock()
				switch op := rnd.IntN(10); {
				case op == 0 || id == 0:
					count := 1 + rnd.IntN(8)
					total := int64(count) * int64(1+rnd.IntN(300))
					kind := packet.KindRandom
					if rnd.IntN(3) == 0 {
						kind = packet.KindFixed
					}
					p, _, err := f.svc.Wrap(ctx, packet.WrapRequest{Sender: fmt.Sprintf("s%d", rnd.IntN(4)), RequestID: fmt.Sprintf("g%d-%d", g, i), TotalCents: total, Count: count, Kind: kind}, -1)
					if err != nil {
						t.Error(err)
						continue
					}
					if rnd.IntN(6) > 0 { // some are never paid
						for k := 0; k < 1+rnd.IntN(2); k++ { // the notice may come twice
							if _, err := f.svc.Pay(ctx, p.ID, packet.PayRequest{PaymentTxnID: fmt.Sprintf("pay-%d", p.ID), AmountCents: total}); err != nil && !errors.Is(err, packet.ErrExpired) {
								t.Error(err)
							}
						}
					}
					mu.Lock()
					packets = append(packets, p.ID)
					mu.Unlock()
				case op == 1:
					if rnd.IntN(4) == 0 {
						f.clock.Advance(time.Duration(rnd.IntN(20)) * time.Minute)
					}
					if _, err := f.svc.ExpireDue(ctx, 50); err != nil {
						t.Error(err)
					}
				case op == 2:
					if _, err := f.svc.Grab(ctx, id, fmt.Sprintf("u%d", rnd.IntN(12))); err != nil {
						t.Error(err)
					}
				default:
					user := fmt.Sprintf("u%d", rnd.IntN(12))
					octx, cancel := ctx, context.CancelFunc(func() {})
					if rnd.IntN(8) == 0 { // an impatient client
						octx, cancel = context.WithTimeout(ctx, time.Duration(rnd.IntN(3))*time.Millisecond)
					}
					o, err := q.Open(octx, id, user)
					cancel()
					switch {
					case err == nil:
						key := fmt.Sprintf("%d/%s", id, user)
						mu.Lock()
						if prev, ok := told[key]; ok && prev != o.AmountCents {
							t.Errorf("%s told %d, earlier %d", key, o.AmountCents, prev)
						}
						told[key] = o.AmountCents
						mu.Unlock()
						if !o.Repeat {
							opened.Add(1)
						}
					case errors.Is(err, packet.ErrExhausted), errors.Is(err, packet.ErrExpired), errors.Is(err, packet.ErrNotPaid),
						errors.Is(err, packet.ErrCancelled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, queue.ErrOverloaded):
					default:
						t.Error(err)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	// Settle everything, then let the relay finish through the failures.
	f.clock.Advance(3 * time.Hour)
	for {
		done, err := f.svc.ExpireDue(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(done) == 0 {
			break
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	stopRelay()
	<-relayDone
	rep, err := wallet.Audit(ctx, f.st, f.ledger, start.Add(-time.Minute), f.clock.Now())
	if err != nil || !rep.OK() {
		t.Fatalf("audit: %+v %v", rep, err)
	}
	if rep.Packets != len(packets) || rep.Receipts < int(opened.Load()) {
		t.Fatalf("audit saw %d packets and %d receipts; %d wrapped, %d opens answered", rep.Packets, rep.Receipts, len(packets), opened.Load())
	}
	for key, amt := range told {
		var id int64
		var user string
		if _, err := fmt.Sscanf(key, "%d/%s", &id, &user); err != nil {
			t.Fatalf("key %q: %v", key, err)
		}
		r, err := f.st.Receipt(ctx, id, user)
		if err != nil || r.AmountCents != amt {
			t.Errorf("%s was told %d, recorded %+v (%v)", key, amt, r, err)
		}
	}
	for _, id := range packets {
		p, err := f.st.Get(ctx, id)
		if err != nil || p.RemainingCents != 0 && p.Status.String() != "cancelled" {
			t.Errorf("packet %d not settled: %+v %v", id, p, err)
		}
	}
	t.Logf("%d packets, %d receipts, %d opens answered, %d amounts checked", rep.Packets, rep.Receipts, opened.Load(), len(told))
}

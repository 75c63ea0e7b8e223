package loadgen

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	thousand := make([]time.Duration, 1000)
	for i := range thousand {
		thousand[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one sample is every quantile", ms(7), 0.999, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3), 0.5, 2 * time.Millisecond},
		{"median of even count is the lower middle", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"p99 of 1..100", hundred, 0.99, 99 * time.Millisecond},
		{"p50 of 1..100", hundred, 0.50, 50 * time.Millisecond},
		{"p99.9 of 1..100 is the max", hundred, 0.999, 100 * time.Millisecond},
		{"p99.9 of 1..1000", thousand, 0.999, 999 * time.Millisecond},
		{"q=1 is the max", ms(1, 5, 9), 1, 9 * time.Millisecond},
		{"tiny q is the min", ms(1, 5, 9), 0.0001, 1 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.samples, tc.q); got != tc.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tc.samples, tc.q, got, tc.want)
			}
		})
	}
}

func TestMergeAndOutcomes(t *testing.T) {
	a, b := newRecorder(), newRecorder()
	for i := 1; i <= 50; i++ {
		a.record(VerbOpen, "200", time.Duration(i)*time.Millisecond)
		b.record(VerbOpen, "200", time.Duration(50+i)*time.Millisecond)
	}
	b.record(VerbOpen, "409 exhausted", 200*time.Millisecond)
	b.record(VerbGrab, "200", time.Millisecond)
	vs := merge([]*recorder{a, b})
	if len(vs) != 2 || vs[0].Verb != VerbGrab || vs[1].Verb != VerbOpen {
		t.Fatalf("verbs %+v, want grab then open (report order, empty verbs left out)", vs)
	}
	open := vs[1]
	if open.Requests != 101 || open.Max != 200*time.Millisecond || open.P50 != 51*time.Millisecond {
		t.Errorf("open: requests %d max %v p50 %v, want 101, 200ms, 51ms", open.Requests, open.Max, open.P50)
	}
	if got := open.SortedOutcomes(); !slices.Equal(got, []string{"200×100", "409 exhausted×1"}) {
		t.Errorf("outcomes %v", got)
	}
}

// TestShapePacketWithinLimits draws many packets and holds each to the cell's validation
// rules, so the workload never measures refusals of its own making.
func TestShapePacketWithinLimits(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{MaxCount: 1, MaxTotalCents: 1},
		{MaxCount: 1000, MaxTotalCents: 2_000_000, Members: 500, HotMembers: 2000},
		{MaxCount: 7, MaxTotalCents: 10, Members: 3},
	} {
		cfg := cfg.WithDefaults()
		rng := rand.New(rand.NewPCG(1, 2))
		kinds := map[string]int{}
		for i := range 20000 {
			hot := i%3 == 0
			sh := shapePacket(rng, &cfg, hot)
			kinds[sh.kind]++
			switch {
			case sh.count < 1 || sh.count > cfg.MaxCount:
				t.Fatalf("%+v: count %d outside 1..%d", cfg, sh.count, cfg.MaxCount)
			case sh.count > sh.members:
				t.Fatalf("count %d above the group's %d members: the packet could never exhaust", sh.count, sh.members)
			case sh.total < int64(sh.count) || sh.total > cfg.MaxTotalCents:
				t.Fatalf("total %d for %d shares, limit %d", sh.total, sh.count, cfg.MaxTotalCents)
			case sh.kind == "fixed" && sh.total%int64(sh.count) != 0:
				t.Fatalf("fixed packet of %d cents does not split into %d equal shares", sh.total, sh.count)
			case hot && sh.count != min(cfg.MaxCount, cfg.HotMembers):
				t.Fatalf("hot packet with %d shares, want %d", sh.count, min(cfg.MaxCount, cfg.HotMembers))
			}
		}
		if kinds["random"] == 0 || kinds["fixed"] == 0 {
			t.Errorf("kinds %v: want both", kinds)
		}
	}
}

// TestPoolSlotHandsOutEachMemberOnce: concurrent claims give every member of a packet exactly
// one tap, and exactly one claimer becomes the sender of the next packet.
func TestPoolSlotHandsOutEachMemberOnce(t *testing.T) {
	var s poolSlot
	if _, _, refill := s.claim(); !refill {
		t.Fatal("an empty slot must ask for a refill")
	}
	if _, _, refill := s.claim(); refill {
		t.Fatal("a slot being filled must not ask a second worker to fill it")
	}
	s.fill(&livePacket{id: 1, members: 500})
	var mu sync.Mutex
	seen := map[int]int{}
	refills := 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 100 {
				pk, m, refill := s.claim()
				mu.Lock()
				if refill {
					refills++
				} else if pk != nil {
					seen[m]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != 500 || refills != 1 {
		t.Fatalf("%d members tapped, %d refills; want 500 and 1", len(seen), refills)
	}
	for m, n := range seen {
		if n != 1 {
			t.Fatalf("member %d tapped %d times", m, n)
		}
	}
	s.fill(&livePacket{id: 2, members: 10})
	pk, _, _ := s.claim()
	pk.exhausted.Store(true)
	if _, _, refill := s.claim(); !refill {
		t.Fatal("an exhausted packet must be replaced")
	}
}

func TestExpectedRefusals(t *testing.T) {
	for _, tc := range []struct {
		verb   string
		status int
		code   string
		want   bool
	}{
		{VerbOpen, http.StatusConflict, "exhausted", true},
		{VerbGrab, http.StatusConflict, "exhausted", true},
		{VerbPay, http.StatusConflict, "exhausted", false},
		{VerbOpen, http.StatusConflict, "expired", false},
		{VerbOpen, http.StatusInternalServerError, "internal", false},
		{VerbWrap, http.StatusServiceUnavailable, "unavailable", false},
	} {
		if got := expected(tc.verb, tc.status, tc.code); got != tc.want {
			t.Errorf("expected(%s, %d, %s) = %v, want %v", tc.verb, tc.status, tc.code, got, tc.want)
		}
	}
}

package packet

import (
	"math/rand/v2"
	"testing"
)

// maxRand always draws the top of the range, minRand the bottom: the extremes of the rule.
type maxRand struct{}

func (maxRand) Int64N(n int64) int64 { return n - 1 }

type minRand struct{}

func (minRand) Int64N(int64) int64 { return 0 }

func TestShareTable(t *testing.T) {
	cases := []struct {
		name      string
		kind      Kind
		remaining int64
		count     int
		r         Rand
		want      int64
		wantErr   bool
	}{
		{"last share takes the exact remainder", KindRandom, 777, 1, maxRand{}, 777, false},
		{"random top is twice the average", KindRandom, 1000, 10, maxRand{}, 200, false},
		{"random bottom is one cent", KindRandom, 1000, 10, minRand{}, 1, false},
		{"cap keeps a cent per later share", KindRandom, 3, 2, maxRand{}, 2, false},
		{"one cent each leaves no choice", KindRandom, 5, 5, maxRand{}, 1, false},
		{"odd average rounds the cap down", KindRandom, 7, 2, maxRand{}, 6, false},
		{"fixed is equal", KindFixed, 1000, 10, maxRand{}, 100, false},
		{"fixed last share", KindFixed, 100, 1, maxRand{}, 100, false},
		{"fixed uneven refused", KindFixed, 1001, 10, maxRand{}, 0, true},
		{"no shares left", KindRandom, 10, 0, maxRand{}, 0, true},
		{"less than a cent per share", KindRandom, 3, 4, maxRand{}, 0, true},
		{"unknown kind", Kind("lucky"), 10, 2, maxRand{}, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Share(c.kind, c.remaining, c.count, c.r)
			if (err != nil) != c.wantErr {
				t.Fatalf("Share(%s, %d, %d) error = %v, want error %v", c.kind, c.remaining, c.count, err, c.wantErr)
			}
			if got != c.want {
				t.Fatalf("Share(%s, %d, %d) = %d, want %d", c.kind, c.remaining, c.count, got, c.want)
			}
		})
	}
}

// splitAll opens every share of a packet and checks the invariants at every step.
func splitAll(t *testing.T, kind Kind, total int64, count int, r Rand) []int64 {
	t.Helper()
	remaining, left := total, count
	shares := make([]int64, 0, count)
	for left > 0 {
		s, err := Share(kind, remaining, left, r)
		if err != nil {
			t.Fatalf("Share(%s, %d, %d): %v", kind, remaining, left, err)
		}
		if s < 1 {
			t.Fatalf("share %d below one cent (remaining %d over %d)", s, remaining, left)
		}
		if s > remaining-int64(left-1) {
			t.Fatalf("share %d leaves less than a cent for %d later shares (remaining %d)", s, left-1, remaining)
		}
		if kind == KindRandom && left > 1 && s > 2*(remaining/int64(left)) && 2*(remaining/int64(left)) >= 1 {
			t.Fatalf("share %d above twice the average %d/%d", s, remaining, left)
		}
		shares = append(shares, s)
		remaining -= s
		left--
	}
	var sum int64
	for _, s := range shares {
		sum += s
	}
	if sum != total {
		t.Fatalf("shares sum to %d, total was %d", sum, total)
	}
	return shares
}

func TestSplitConservesTotal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		count := 1 + r.IntN(200)
		total := int64(count) + r.Int64N(100_000)
		splitAll(t, KindRandom, total, count, r)
		splitAll(t, KindFixed, total-total%int64(count)+int64(count)*int64(r.IntN(3)), count, r)
	}
}

func TestSplitMeanIsFair(t *testing.T) {
	// Double average: every position has the same expected share. 20,000 packets of 10 shares
	// of 100.00 put each position's mean within a few percent of 10.00.
	r := rand.New(rand.NewPCG(7, 7))
	const packets, count, total = 20000, 10, 10000
	var sums [count]int64
	for i := 0; i < packets; i++ {
		for j, s := range splitAll(t, KindRandom, total, count, r) {
			sums[j] += s
		}
	}
	for j, s := range sums {
		mean := float64(s) / packets
		if mean < 950 || mean > 1050 {
			t.Errorf("position %d mean share %.1f cents, want about 1000", j, mean)
		}
	}
}

func FuzzSplit(f *testing.F) {
	f.Add(int64(10000), 10, uint64(1), false)
	f.Add(int64(3), 3, uint64(2), false)
	f.Add(int64(100), 100, uint64(3), true)
	f.Add(int64(2_000_000), 1000, uint64(4), false)
	f.Fuzz(func(t *testing.T, total int64, count int, seed uint64, fixed bool) {
		if count < 1 || count > 5000 || total < int64(count) || total > 1<<40 {
			t.Skip()
		}
		kind := KindRandom
		if fixed {
			kind = KindFixed
			total -= total % int64(count)
		}
		splitAll(t, kind, total, count, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)))
	})
}

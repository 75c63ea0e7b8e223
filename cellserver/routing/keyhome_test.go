package routing

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestKeyHomeAcrossEpochs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Hour)
	table := &Table{Set: "s", SlotCount: 10, Epochs: []Epoch{
		{Number: 1, EffectiveTime: t0, Ranges: []SlotRange{{0, 4, "a"}, {5, 9, "b"}}},
		{Number: 2, EffectiveTime: t1, Ranges: []SlotRange{{0, 2, "a"}, {3, 4, "c"}, {5, 9, "b"}}},
	}}
	// Find one key per interesting key slot: one that stays with a, one that moves a → c.
	keyFor := func(want func(int) bool) string {
		for i := 0; ; i++ {
			k := WrapKey("alice", fmt.Sprint("req-", i))
			if want(table.KeySlot(k)) {
				return k
			}
		}
	}
	stays := keyFor(func(s int) bool { return s <= 2 })
	moves := keyFor(func(s int) bool { return s == 3 || s == 4 })

	cases := []struct {
		name    string
		key     string
		now     time.Time
		home    string
		prior   []string
		wantErr error
	}{
		{"before the new epoch", moves, t1.Add(-time.Second), "a", nil, nil},
		{"moved slot in handover", moves, t1, "", nil, ErrKeyHandover},
		{"moved slot end of handover", moves, t1.Add(KeyHandover - time.Second), "", nil, ErrKeyHandover},
		{"moved slot after handover", moves, t1.Add(KeyHandover), "c", []string{"a"}, nil},
		{"unmoved slot at the boundary", stays, t1, "a", nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			home, err := table.KeyHome(c.key, c.now)
			if !errors.Is(err, c.wantErr) || home != c.home {
				t.Fatalf("KeyHome = %q, %v; want %q, %v", home, err, c.home, c.wantErr)
			}
			if err != nil {
				return
			}
			if got := table.PriorHomes(c.key, home, c.now); !slices.Equal(got, c.prior) {
				t.Fatalf("PriorHomes = %v, want %v", got, c.prior)
			}
			if err := table.CheckHome(c.key, home, c.now); err != nil {
				t.Fatalf("CheckHome(%s): %v", home, err)
			}
			if err := table.CheckHome(c.key, "b", c.now); !errors.Is(err, ErrNotHome) {
				t.Fatalf("CheckHome(b) = %v, want ErrNotHome", err)
			}
		})
	}
}

func TestKeySlotIsByteExact(t *testing.T) {
	table := &Table{SlotCount: 1000}
	// Different kinds and letter cases are different keys; the same key always has one slot.
	if first, again := table.KeySlot(WrapKey("alice", "r1")), table.KeySlot(WrapKey("alice", "r1")); first != again {
		t.Fatal("key slot not deterministic")
	}
	distinct := map[int]bool{}
	for _, k := range []string{WrapKey("alice", "r1"), WrapKey("Alice", "r1"), WrapKey("alice", "R1"), PaymentKey("alice\x00r1")} {
		distinct[table.KeySlot(k)] = true
	}
	if len(distinct) < 3 {
		t.Fatalf("case variants and kinds collapse onto %d key slots", len(distinct))
	}
	// The separator keeps ("ab","c") and ("a","bc") apart.
	if WrapKey("ab", "c") == WrapKey("a", "bc") {
		t.Fatal("wrap keys are ambiguous")
	}
}

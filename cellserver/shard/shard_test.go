package shard

import (
	"testing"
	"time"
)

func TestDefaultLayoutFollowsDesign(t *testing.T) {
	cases := []struct {
		slot int
		want string
	}{
		{0, "db_00.t_0_17"},
		{7, "db_00.t_7_17"},
		{123, "db_12.t_3_17"},
		{999, "db_99.t_9_17"},
	}
	day := time.Date(2026, 2, 17, 23, 59, 59, 0, time.UTC)
	for _, c := range cases {
		if got := Default.Physical("t", Default.Of(c.slot), day); got != c.want {
			t.Errorf("slot %d: got %s, want %s", c.slot, got, c.want)
		}
	}
}

func TestSmallLayoutWrapsAndCoversEverySlotOnce(t *testing.T) {
	l := Layout{Databases: 2, TablesPerDB: 3}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	seen := map[int]int{}
	for _, tb := range l.All() {
		for _, s := range l.Slots(tb, 1000) {
			seen[s]++
			if l.Of(s) != tb {
				t.Fatalf("slot %d listed under %v but maps to %v", s, tb, l.Of(s))
			}
		}
	}
	for s := 0; s < 1000; s++ {
		if seen[s] != 1 {
			t.Fatalf("slot %d served by %d logical tables", s, seen[s])
		}
	}
}

func TestValidate(t *testing.T) {
	for _, l := range []Layout{{0, 1, ""}, {101, 1, ""}, {1, 0, ""}, {1, 11, ""}} {
		if l.Validate() == nil {
			t.Errorf("layout %+v accepted", l)
		}
	}
}

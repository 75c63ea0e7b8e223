package ids

import (
	"testing"
	"time"
)

func TestComposeRoundTrip(t *testing.T) {
	created := time.Date(2026, 2, 17, 12, 0, 5, 0, time.UTC)
	cases := []Parts{
		{Created: created, Region: 0, Worker: 0, Seq: 0, Slot: 0},
		{Created: created, Region: 1, Worker: 7, Seq: 42, Slot: 999},
		{Created: Epoch, Region: MaxRegion, Worker: MaxWorker, Seq: MaxSeq, Slot: 123},
		{Created: Epoch.Add(maxSeconds * time.Second), Region: MaxRegion, Worker: MaxWorker, Seq: MaxSeq, Slot: 999},
	}
	for _, c := range cases {
		id, err := Compose(c)
		if err != nil {
			t.Fatalf("Compose(%+v): %v", c, err)
		}
		got, err := Decompose(id)
		if err != nil {
			t.Fatalf("Decompose(%d): %v", id, err)
		}
		if !got.Created.Equal(c.Created) || got.Region != c.Region || got.Worker != c.Worker || got.Seq != c.Seq || got.Slot != c.Slot {
			t.Errorf("round trip of %+v gave %+v (id %d)", c, got, id)
		}
		if Slot(id) != c.Slot || !CreatedAt(id).Equal(c.Created) || Region(id) != c.Region {
			t.Errorf("accessors disagree with Decompose for %d", id)
		}
		if id%1000 != int64(c.Slot) {
			t.Errorf("last three digits of %d are not slot %d", id, c.Slot)
		}
	}
}

func TestComposeRejectsOutOfRange(t *testing.T) {
	ok := Parts{Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	bad := map[string]func(p *Parts){
		"before epoch": func(p *Parts) { p.Created = Epoch.Add(-time.Second) },
		"after clock":  func(p *Parts) { p.Created = Epoch.Add((maxSeconds + 1) * time.Second) },
		"region":       func(p *Parts) { p.Region = MaxRegion + 1 },
		"worker":       func(p *Parts) { p.Worker = -1 },
		"seq":          func(p *Parts) { p.Seq = MaxSeq + 1 },
		"slot":         func(p *Parts) { p.Slot = 1000 },
	}
	for name, mutate := range bad {
		p := ok
		mutate(&p)
		if _, err := Compose(p); err == nil {
			t.Errorf("%s: Compose accepted %+v", name, p)
		}
	}
}

func TestIDsAreTimeOrdered(t *testing.T) {
	early, _ := Compose(Parts{Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Region: 3, Worker: MaxWorker, Seq: MaxSeq, Slot: 999})
	late, _ := Compose(Parts{Created: time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)})
	if early >= late {
		t.Fatalf("id of an earlier second %d is not below a later one %d", early, late)
	}
}

func TestDecomposeRejectsNonPositive(t *testing.T) {
	for _, id := range []int64{0, -1} {
		if _, err := Decompose(id); err == nil {
			t.Errorf("Decompose(%d) accepted", id)
		}
	}
}

package routing

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
)

var (
	t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
)

// twoEpochs is a 2-cell set that grew to 3 cells at t1.
func twoEpochs() *Table {
	return &Table{
		Set:       "rp",
		SlotCount: 12,
		Epochs: []Epoch{
			{Number: 1, EffectiveTime: t0, Ranges: []SlotRange{{0, 5, "rp-cell-0"}, {6, 11, "rp-cell-1"}}},
			{Number: 2, EffectiveTime: t1, Ranges: []SlotRange{{0, 3, "rp-cell-0"}, {4, 5, "rp-cell-2"}, {6, 9, "rp-cell-1"}, {10, 11, "rp-cell-2"}}},
		},
		Masked: []MaskedRange{{Start: 2, End: 3, Reason: "db_00.t_2 errors", Since: t1}},
	}
}

func TestOwnerAtFollowsCreationTime(t *testing.T) {
	tab := twoEpochs()
	cases := []struct {
		slot      int
		at        time.Time
		wantCell  string
		wantEpoch int64
	}{
		{4, t1.Add(-time.Second), "rp-cell-0", 1}, // created just before the new epoch: old owner
		{4, t1, "rp-cell-2", 2},                   // at the effective second: new owner
		{4, t1.Add(time.Hour), "rp-cell-2", 2},
		{11, t0.Add(time.Hour), "rp-cell-1", 1},
		{11, t1.Add(time.Hour), "rp-cell-2", 2},
		{0, t0.Add(-24 * time.Hour), "rp-cell-0", 1}, // before every epoch: the first one reaches back
		{7, t1.Add(time.Hour), "rp-cell-1", 2},
	}
	for _, c := range cases {
		cell, epoch, err := tab.OwnerAt(c.slot, c.at)
		if err != nil || cell != c.wantCell || epoch != c.wantEpoch {
			t.Errorf("OwnerAt(%d, %s) = %q, %d, %v; want %q, %d", c.slot, c.at, cell, epoch, err, c.wantCell, c.wantEpoch)
		}
	}
	for _, slot := range []int{-1, 12, 999} {
		if _, _, err := tab.OwnerAt(slot, t1); !errors.Is(err, ErrNoOwner) {
			t.Errorf("OwnerAt(%d) err = %v, want ErrNoOwner", slot, err)
		}
	}
}

// The ownership rule of docs/design.md §4.4 on a packet ID: its slot's owner at its creation
// second, whichever epoch is the latest.
func TestPacketOwnerAndCheckOwner(t *testing.T) {
	tab := twoEpochs()
	id := func(slot int, at time.Time) int64 {
		n, err := ids.Compose(ids.Parts{Created: at, Slot: slot, Seq: 7})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cases := []struct {
		id        int64
		wantCell  string
		wantEpoch int64
	}{
		{id(4, t1.Add(-time.Second)), "rp-cell-0", 1},
		{id(4, t1), "rp-cell-2", 2},
		{id(11, t0.Add(time.Hour)), "rp-cell-1", 1},
		{id(11, t1.Add(time.Hour)), "rp-cell-2", 2},
	}
	for _, c := range cases {
		cell, epoch, err := tab.PacketOwner(c.id)
		if err != nil || cell != c.wantCell || epoch != c.wantEpoch {
			t.Errorf("PacketOwner(%d) = %q, %d, %v; want %q, %d", c.id, cell, epoch, err, c.wantCell, c.wantEpoch)
		}
		if err := tab.CheckOwner(c.wantCell, c.id); err != nil {
			t.Errorf("CheckOwner(%s, %d) = %v, want nil", c.wantCell, c.id, err)
		}
		err = tab.CheckOwner("rp-cell-9", c.id)
		if !errors.Is(err, ErrWrongCell) || !strings.Contains(err.Error(), c.wantCell) {
			t.Errorf("CheckOwner(rp-cell-9, %d) = %v, want ErrWrongCell naming %s", c.id, err, c.wantCell)
		}
	}
	// A slot outside the table has no owner: every cell refuses the packet.
	if err := tab.CheckOwner("rp-cell-0", id(500, t1)); !errors.Is(err, ErrWrongCell) || !strings.Contains(err.Error(), "no owner") {
		t.Errorf("CheckOwner on a slot outside the table = %v, want ErrWrongCell with no owner", err)
	}
}

func TestOwnedAndCreatableSlots(t *testing.T) {
	tab := twoEpochs()
	if got := tab.OwnedSlots("rp-cell-2", t1); !slices.Equal(got, []int{4, 5, 10, 11}) {
		t.Errorf("OwnedSlots(cell-2, t1) = %v", got)
	}
	if got := tab.OwnedSlots("rp-cell-2", t0); len(got) != 0 {
		t.Errorf("cell-2 owns %v before it existed", got)
	}
	if got := tab.CreatableSlots("rp-cell-0", t1); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("CreatableSlots(cell-0, t1) = %v, want masked 2,3 left out", got)
	}
	for s, want := range map[int]bool{1: false, 2: true, 3: true, 4: false} {
		if tab.IsMasked(s) != want {
			t.Errorf("IsMasked(%d) = %v", s, !want)
		}
	}
	if got := tab.AllCells(); !slices.Equal(got, []string{"rp-cell-0", "rp-cell-1", "rp-cell-2"}) {
		t.Errorf("AllCells = %v", got)
	}
}

func TestMarshalParseRoundTrip(t *testing.T) {
	tab := twoEpochs()
	tab.Endpoints = map[string][]string{"rp-cell-0": {"http://127.0.0.1:9001"}}
	data, err := tab.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"slotCount"`, `"effectiveTime"`, `"ranges"`, `"start"`, `"end"`, `"cell"`, `"masked"`, `"reason"`, `"since"`, `"endpoints"`, `"number"`, `"set"`} {
		if !strings.Contains(string(data), field) {
			t.Errorf("marshalled table lacks %s:\n%s", field, data)
		}
	}
	back, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if c, _, _ := back.OwnerAt(10, t1); c != "rp-cell-2" || !back.IsMasked(3) || back.Endpoints["rp-cell-0"][0] != "http://127.0.0.1:9001" {
		t.Errorf("round trip lost data: %+v", back)
	}
}

func TestParseRefusesInvalidTables(t *testing.T) {
	cases := map[string]struct {
		edit func(*Table)
		want string
	}{
		"slot count zero":      {func(t *Table) { t.SlotCount = 0 }, "slotCount"},
		"slot count too big":   {func(t *Table) { t.SlotCount = 1001 }, "slotCount"},
		"no epochs":            {func(t *Table) { t.Epochs = nil }, "epochs: must not be empty"},
		"numbers not rising":   {func(t *Table) { t.Epochs[1].Number = 1 }, "epochs[1].number"},
		"times not rising":     {func(t *Table) { t.Epochs[1].EffectiveTime = t0 }, "epochs[1].effectiveTime"},
		"sub-second effective": {func(t *Table) { t.Epochs[1].EffectiveTime = t1.Add(time.Millisecond) }, "whole second"},
		"zero effective":       {func(t *Table) { t.Epochs[0].EffectiveTime = time.Time{} }, "epochs[0].effectiveTime"},
		"gap":                  {func(t *Table) { t.Epochs[0].Ranges[1].Start = 7 }, "slots 6..6: not owned"},
		"overlap":              {func(t *Table) { t.Epochs[0].Ranges[1].Start = 5 }, "overlaps"},
		"short of slot count":  {func(t *Table) { t.Epochs[0].Ranges[1].End = 10 }, "slots 11..11: not owned"},
		"beyond slot count":    {func(t *Table) { t.Epochs[0].Ranges[1].End = 12 }, "beyond slotCount"},
		"reversed range":       {func(t *Table) { t.Epochs[1].Ranges[1] = SlotRange{5, 4, "rp-cell-2"} }, "start after end"},
		"empty cell":           {func(t *Table) { t.Epochs[0].Ranges[0].Cell = "" }, "empty cell name"},
		"no ranges":            {func(t *Table) { t.Epochs[0].Ranges = nil }, "epochs[0].ranges: must not be empty"},
		"mask outside":         {func(t *Table) { t.Masked[0].End = 12 }, "masked[0]"},
		"mask negative":        {func(t *Table) { t.Masked[0].Start = -1 }, "masked[0]"},
		"mask reversed":        {func(t *Table) { t.Masked[0].Start, t.Masked[0].End = 3, 2 }, "masked[0]"},
		"empty endpoint":       {func(t *Table) { t.Endpoints = map[string][]string{"rp-cell-0": {""}} }, "endpoints[rp-cell-0][0]"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			tab := twoEpochs()
			c.edit(tab)
			if _, err := tab.Marshal(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Marshal err = %v, want it to mention %q", err, c.want)
			}
			// Parse must refuse the same content written by hand.
			raw := fmt.Sprintf(`{"set":"rp","slotCount":%d,"epochs":%s,"masked":%s}`, tab.SlotCount, mustJSON(t, tab.Epochs), mustJSON(t, tab.Masked))
			if tab.Endpoints != nil {
				raw = raw[:len(raw)-1] + `,"endpoints":` + mustJSON(t, tab.Endpoints) + "}"
			}
			if _, err := Parse([]byte(raw)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse err = %v, want it to mention %q", err, c.want)
			}
		})
	}
	if _, err := Parse([]byte(`{"slotCount": "ten"}`)); err == nil {
		t.Error("Parse accepted malformed JSON")
	}
}

func TestPrunedAndDraining(t *testing.T) {
	t2 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	tab := twoEpochs()
	// Epoch 3: scale back in to cells 0 and 1; cell 2 drains.
	tab.Epochs = append(tab.Epochs, Epoch{Number: 3, EffectiveTime: t2, Ranges: []SlotRange{{0, 5, "rp-cell-0"}, {6, 11, "rp-cell-1"}}})
	if err := tab.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := tab.DrainingCells(t2.Add(time.Hour)); !slices.Equal(got, []string{"rp-cell-2"}) {
		t.Errorf("draining after scale-in = %v", got)
	}
	if got := tab.DrainingCells(t1.Add(time.Hour)); len(got) != 0 {
		t.Errorf("draining while epoch 2 in force = %v", got)
	}
	cases := []struct {
		settledBefore time.Time
		want          []int64
	}{
		{t0.Add(-time.Hour), []int64{1, 2, 3}},
		{t1.Add(-time.Second), []int64{1, 2, 3}}, // packets of epoch 1 may still be open
		{t1, []int64{2, 3}},
		{t2.Add(time.Hour), []int64{3}},
	}
	for _, c := range cases {
		p := tab.Pruned(c.settledBefore)
		var got []int64
		for _, e := range p.Epochs {
			got = append(got, e.Number)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Pruned(%s) kept epochs %v, want %v", c.settledBefore, got, c.want)
		}
		if err := p.Validate(); err != nil {
			t.Errorf("pruned table invalid: %v", err)
		}
	}
	if len(tab.Epochs) != 3 {
		t.Error("Pruned modified the original")
	}
	// Once epoch 2 is pruned, cell 2 is no longer named anywhere: it may go.
	if got := tab.Pruned(t2).AllCells(); slices.Contains(got, "rp-cell-2") {
		t.Errorf("cells after pruning = %v", got)
	}
}

func TestStaleFor(t *testing.T) {
	t1 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	all := []SlotRange{{Start: 0, End: 9, Cell: "a"}}
	held := &Table{Set: "s", SlotCount: 10, Epochs: []Epoch{
		{Number: 1, EffectiveTime: time.Unix(0, 0).UTC(), Ranges: all},
		{Number: 2, EffectiveTime: t1, Ranges: all},
	}}
	cases := []struct {
		name    string
		a       Announcement
		current time.Time
		sec     time.Time
		stale   bool
	}{
		{"holds the announced epoch", Announcement{2, t1}, time.Time{}, t1.Add(time.Hour), false},
		{"nothing announced", Announcement{}, time.Time{}, t1, false},
		{"newer announced far ahead, held pending far ahead", Announcement{3, t1.Add(time.Hour)}, t1.Add(-time.Hour - 20*time.Second), t1.Add(-time.Hour), false},
		// An epoch decided after it was last current may already be in force.
		{"lacking for longer than an epoch's least lead", Announcement{3, t1.Add(time.Hour)}, t1.Add(-2 * time.Hour), t1.Add(-time.Hour), true},
		// Epoch 3 may have replaced epoch 2, pending when the server was last current: stop
		// before epoch 2's time, and stay stopped once it passed.
		{"newer announced, near the held pending epoch", Announcement{3, t1.Add(time.Hour)}, t1.Add(-2 * time.Hour), t1.Add(-HandoverMargin), true},
		{"newer announced, past the held epoch it may replace", Announcement{3, t1.Add(time.Hour)}, t1.Add(-2 * time.Hour), t1.Add(10 * time.Minute), true},
		// Epoch 2 was in force when the server was last current: it cannot have changed.
		{"newer announced far ahead, held epoch in force when last current", Announcement{3, t1.Add(time.Hour)}, t1.Add(10 * time.Minute), t1.Add(10*time.Minute + 20*time.Second), false},
		{"newer announced, near its time", Announcement{3, t1.Add(time.Hour)}, t1.Add(time.Hour - 20*time.Second), t1.Add(time.Hour - time.Second), true},
		{"never current", Announcement{3, t1.Add(time.Hour)}, time.Time{}, t1.Add(10 * time.Minute), true},
	}
	for _, c := range cases {
		err := StaleFor(held, c.a, c.current, c.sec)
		if (err != nil) != c.stale || (err != nil && !errors.Is(err, ErrStale)) {
			t.Errorf("%s: %v, want stale %v", c.name, err, c.stale)
		}
	}
}

// TestMarshalCompact is finding 11 §3: ±1 cell every 30 min for 49 h of epochs took
// the indented table to 1.3 MB, past a ConfigMap's 1 MiB, after which every apply failed.
func TestMarshalCompact(t *testing.T) {
	tab := &Table{Set: "s", SlotCount: 10, Epochs: []Epoch{{Number: 1, EffectiveTime: time.Unix(0, 0).UTC(),
		Ranges: []SlotRange{{Start: 5, End: 9, Cell: "b"}, {Start: 0, End: 2, Cell: "a"}, {Start: 3, End: 4, Cell: "a"}}}}}
	data, err := tab.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, []byte("\n")) != 1 || bytes.Contains(data, []byte("  ")) {
		t.Fatalf("not compact: %s", data)
	}
	back, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if r := back.Epochs[0].Ranges; len(r) != 2 || r[0] != (SlotRange{0, 4, "a"}) {
		t.Fatalf("ranges not merged: %+v", r)
	}
	big := &Table{Set: "s", SlotCount: 1000}
	for i := range 3000 {
		e := Epoch{Number: int64(i + 1), EffectiveTime: time.Unix(int64(i)*60, 0).UTC()}
		for s := 0; s < 1000; s += 10 {
			e.Ranges = append(e.Ranges, SlotRange{Start: s, End: s + 9, Cell: fmt.Sprintf("s-cell-%d", (s/10+i)%7)})
		}
		big.Epochs = append(big.Epochs, e)
	}
	if _, err := big.Marshal(); !errors.Is(err, ErrTableTooLarge) {
		t.Fatalf("a table past the budget marshalled: %v", err)
	}
}

package plan

import (
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

var (
	four = []string{"rp-cell-0", "rp-cell-1", "rp-cell-2", "rp-cell-3"}
	five = append(append([]string{}, four...), "rp-cell-4")
	six  = append(append([]string{}, five...), "rp-cell-5")
	t0   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func table(t *testing.T, cells []string) *routing.Table {
	t.Helper()
	tab, ch, err := NextTable(nil, TableInput{Set: "rp", SlotCount: 1000, Cells: cells, Now: t0, Delay: 2 * time.Minute})
	if err != nil || ch.Kind != First {
		t.Fatalf("first table: %v %v", ch.Kind, err)
	}
	return tab
}

// TestNextTableNeverReusesNumbers is finding 11 §1: scaling 4→6 then 6→5 one second before
// epoch 2 took effect re-planned epoch 2 in place, so readers holding the first plan and the
// new one both said "epoch 2" with 332 slots owned differently (slot 167: cell-4 vs cell-0).
func TestNextTableNeverReusesNumbers(t *testing.T) {
	tab := table(t, four)
	grown, ch, err := NextTable(tab, TableInput{Set: "rp", SlotCount: 1000, Cells: six, Now: t0, Delay: 2 * time.Minute})
	if err != nil || ch.Kind != Stacked || ch.Epoch.Number != 2 || ch.Moved != 332 {
		t.Fatalf("4→6: %+v %v", ch, err)
	}
	e2 := grown.Epochs[1]
	cases := []struct {
		name       string
		at         time.Time
		wantKind   ChangeKind
		wantNumber int64
		wantEpochs int
	}{
		// Far from its effective time nothing can have acted on epoch 2: replace it, under 3.
		{"re-planned far ahead", e2.EffectiveTime.Add(-HandoverMargin - time.Second), Replanned, 3, 2},
		// Within the margin some server may act on epoch 2 before it hears of a change: keep
		// it and stack epoch 3 after it.
		{"stacked one second before", e2.EffectiveTime.Add(-time.Second), Stacked, 3, 3},
		{"stacked at the margin", e2.EffectiveTime.Add(-HandoverMargin), Stacked, 3, 3},
		{"stacked once in force", e2.EffectiveTime.Add(time.Minute), Stacked, 3, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ch, err := NextTable(grown, TableInput{Set: "rp", SlotCount: 1000, Cells: five, Now: c.at, Delay: 2 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if ch.Kind != c.wantKind || ch.Epoch.Number != c.wantNumber || len(got.Epochs) != c.wantEpochs {
				t.Fatalf("%s: epoch %d, %d epochs; want %s epoch %d, %d epochs", ch.Kind, ch.Epoch.Number, len(got.Epochs), c.wantKind, c.wantNumber, c.wantEpochs)
			}
			if err := got.Validate(); err != nil {
				t.Fatal(err)
			}
			if c.wantKind == Stacked {
				// Epoch 2 is exactly as published: every reader holding it keeps a valid plan.
				if kept := got.Epochs[1]; kept.Number != 2 || !kept.EffectiveTime.Equal(e2.EffectiveTime) || Moved(&kept, &e2, 1000) != 0 {
					t.Fatalf("epoch 2 changed while stacking: %+v", kept)
				}
			}
			seen := map[int64]bool{}
			for _, e := range got.Epochs {
				if seen[e.Number] {
					t.Fatalf("epoch number %d twice", e.Number)
				}
				seen[e.Number] = true
			}
		})
	}
}

func TestNextTableMinNumberAndPushBack(t *testing.T) {
	// A table rebuilt from an older source must not give out a number readers already saw.
	tab := table(t, four)
	got, ch, err := NextTable(tab, TableInput{Set: "rp", SlotCount: 1000, Cells: five, Now: t0, Delay: 2 * time.Minute, MinNumber: 7})
	if err != nil || ch.Epoch.Number != 8 {
		t.Fatalf("after reports of epoch 7 the next epoch is %d (%v)", ch.Epoch.Number, err)
	}
	// Pushing back keeps the plan, takes a new number and a later time, and remembers the
	// first time for the bound.
	e := got.Epochs[1]
	pushed, ch, err := NextTable(got, TableInput{Set: "rp", SlotCount: 1000, Cells: five, Now: e.EffectiveTime.Add(-50 * time.Second), Delay: 2 * time.Minute, PushBack: true})
	if err != nil || ch.Kind != Replanned || ch.Epoch.Number != 9 || !ch.Epoch.EffectiveTime.After(e.EffectiveTime) {
		t.Fatalf("push back: %+v %v", ch, err)
	}
	if !pushed.Epochs[1].FirstEffectiveTime.Equal(e.EffectiveTime) || Moved(&pushed.Epochs[1], &e, 1000) != 0 {
		t.Fatalf("pushed-back epoch lost its plan or first time: %+v", pushed.Epochs[1])
	}
	// Too close to change: a push-back request changes nothing.
	same, ch, _ := NextTable(got, TableInput{Set: "rp", SlotCount: 1000, Cells: five, Now: e.EffectiveTime.Add(-time.Second), Delay: 2 * time.Minute, PushBack: true})
	if ch.Kind != Unchanged || same.Latest().Number != 8 {
		t.Fatalf("push back within the margin changed the table: %+v", ch)
	}
	if _, _, err := NextTable(got, TableInput{Set: "rp", SlotCount: 500, Cells: five, Now: t0}); err == nil || !strings.Contains(err.Error(), "slotCount") {
		t.Fatalf("slot count change: %v", err)
	}
}

// TestClampDelay is finding 11 §1: −10m scheduled the epoch in the past and 0s one second
// ahead, which no reader can load in time.
func TestClampDelay(t *testing.T) {
	for _, c := range []struct {
		in      time.Duration
		want    time.Duration
		clamped bool
	}{
		{-10 * time.Minute, MinRebalanceDelay, true},
		{0, MinRebalanceDelay, true},
		{time.Second, MinRebalanceDelay, true},
		{MinRebalanceDelay, MinRebalanceDelay, false},
		{5 * time.Minute, 5 * time.Minute, false},
	} {
		if got, clamped := ClampDelay(c.in); got != c.want || clamped != c.clamped {
			t.Errorf("ClampDelay(%v) = %v, %v; want %v, %v", c.in, got, clamped, c.want, c.clamped)
		}
	}
	tab := table(t, four)
	got, ch, _ := NextTable(tab, TableInput{Set: "rp", SlotCount: 1000, Cells: five, Now: t0, Delay: -10 * time.Minute})
	if !ch.Epoch.EffectiveTime.After(t0.Add(MinRebalanceDelay)) || len(got.Epochs) != 2 {
		t.Fatalf("negative delay scheduled epoch at %s, now %s", ch.Epoch.EffectiveTime, t0)
	}
}

func TestDecideHandover(t *testing.T) {
	e := routing.Epoch{Number: 5, EffectiveTime: t0.Add(2 * time.Minute)}
	held := func(n int64) []CellReaders {
		return []CellReaders{
			{Cell: "rp-cell-0", Servers: map[string]int64{"s0": 5, "s1": n}},
			{Cell: "rp-cell-1", Servers: map[string]int64{"s2": 5}},
		}
	}
	cases := []struct {
		name     string
		e        routing.Epoch
		now      time.Time
		cells    []CellReaders
		reason   string
		pushBack bool
		mention  string
	}{
		{"in force", e, e.EffectiveTime, held(4), HandoverNone, false, ""},
		{"everyone holds it", e, t0, held(5), HandoverComplete, false, "every issuing server"},
		{"a server behind, early", e, t0, held(4), HandoverWaiting, false, "rp-cell-0/s1 holds epoch 4"},
		{"a server behind at the decision point", e, e.EffectiveTime.Add(-2 * HandoverMargin), held(4), HandoverPushedBack, true, "rp-cell-0/s1"},
		{"never reported", e, e.EffectiveTime.Add(-40 * time.Second), []CellReaders{{Cell: "rp-cell-0", Servers: map[string]int64{"s9": 0}}}, HandoverPushedBack, true, "s9 holds epoch 0"},
		{"too close to change", e, e.EffectiveTime.Add(-HandoverMargin), held(4), HandoverIncomplete, false, "too close"},
		{"an unreadable cell is never pushed back", e, e.EffectiveTime.Add(-40 * time.Second),
			[]CellReaders{{Cell: "rp-cell-0", Err: "connection refused"}}, HandoverIncomplete, false, "rp-cell-0: unreadable (connection refused)"},
		{"bounded", routing.Epoch{Number: 9, EffectiveTime: e.EffectiveTime, FirstEffectiveTime: e.EffectiveTime.Add(-MaxHandoverWait)},
			e.EffectiveTime.Add(-40 * time.Second), held(4), HandoverIncomplete, false, "already pushed back"},
		{"no servers issuing", e, e.EffectiveTime.Add(-40 * time.Second), []CellReaders{{Cell: "rp-cell-4"}}, HandoverComplete, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := DecideHandover(HandoverInput{Latest: &c.e, Now: c.now, Delay: 2 * time.Minute, Cells: c.cells})
			if d.Reason != c.reason || d.PushBack != c.pushBack || !strings.Contains(d.Message, c.mention) {
				t.Fatalf("got %q push=%v %q; want %q push=%v mentioning %q", d.Reason, d.PushBack, d.Message, c.reason, c.pushBack, c.mention)
			}
		})
	}
}

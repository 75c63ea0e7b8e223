package plan

import (
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// The local SET's use of DecideRouting: no Keep means no epoch is ever pruned, however old;
// the operator's Keep prunes once the successor has been in force that long and Settled agrees.
func TestDecideRoutingKeep(t *testing.T) {
	now := time.Date(2026, 2, 17, 20, 0, 0, 0, time.UTC)
	in := RoutingInput{Set: "s", SlotCount: 1000, Cells: []string{"a", "b"}, Now: now, Delay: 0}
	first := DecideRouting(in)
	in.Published, in.Cells = first.Table, []string{"a", "b", "c"}
	grown := DecideRouting(in)
	if len(grown.Table.Epochs) != 2 || grown.Scheduled == nil || !grown.DelayClamped {
		t.Fatalf("scale-out: %d epochs, scheduled %v, clamped %v", len(grown.Table.Epochs), grown.Scheduled, grown.DelayClamped)
	}
	in.Published, in.Now = grown.Table, now.Add(365*24*time.Hour)
	if d := DecideRouting(in); len(d.Table.Epochs) != 2 || d.Pruned != nil {
		t.Fatalf("no Keep: pruned %v, %d epochs left", d.Pruned, len(d.Table.Epochs))
	}
	in.Keep = time.Hour
	in.Settled = func(old, next *routing.Epoch) bool { return false }
	in.Recheck = 30 * time.Second
	if d := DecideRouting(in); len(d.Table.Epochs) != 2 || len(d.Unsettled) != 1 || !d.RequeueAt.Equal(in.Now.Add(in.Recheck)) {
		t.Fatalf("unsettled: %+v", d)
	}
	in.Settled = nil
	if d := DecideRouting(in); len(d.Table.Epochs) != 1 || len(d.Pruned) != 1 {
		t.Fatalf("settled: pruned %v, %d epochs left", d.Pruned, len(d.Table.Epochs))
	}
	in.SlotCount = 500
	if d := DecideRouting(in); d.Err == nil || d.Change.Kind != Unchanged || d.Table.SlotCount != 1000 || d.Refused == "" {
		t.Fatalf("a new slot count must be refused with Err, keeping the published table: %+v", d)
	}
}

package plugin

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
)

func TestAge(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{45 * time.Second, "45s"}, {12 * time.Minute, "12m"}, {3 * time.Hour, "3h"}, {72 * time.Hour, "3d"}, {-90 * time.Second, "in 90s"}} {
		if got := age(now.Add(-c.d), now); got != c.want {
			t.Errorf("age %v: %q, want %q", c.d, got, c.want)
		}
	}
}

func TestRunsJoinAdjacentSlots(t *testing.T) {
	got := runs([]int{1, 2, 3, 7, 9, 10}, "r")
	want := [][2]int{{1, 3}, {7, 7}, {9, 10}}
	if len(got) != len(want) {
		t.Fatalf("runs %+v", got)
	}
	for i, m := range got {
		if m.Start != want[i][0] || m.End != want[i][1] || m.Source != control.SourceManual || m.Reason != "r" {
			t.Errorf("run %d: %+v, want %v", i, m, want[i])
		}
	}
}

func TestPrintStatusTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := &SetStatus{Namespace: "ns", Name: "fest",
		Cells: []CellStatus{
			{Name: "fest-cell-0", Slots: "0-499", Servers: 2, ReadyServers: 2, Available: "True",
				Reported: []control.ServerEpoch{{Server: "s-a", Epoch: 2}}, TableErrors: []TableErrors{{Table: "db_07.t_3", Errors: 7, Calls: 9}}},
			{Name: "fest-cell-1", Slots: "500-999", Available: "False", DatabaseError: "reach database: refused"},
		},
		Epochs: []EpochStatus{{Number: 2, EffectiveTime: now.Add(time.Minute), State: "pending", HeldBy: []string{"s-a"}, NotHeldBy: []string{"s-b"}}},
		Masks:  []MaskStatus{{Cell: "fest-cell-0", Slots: "73", Table: "db_07.t_3", Source: "manual", Reason: "OPS-1", Since: now.Add(-3 * time.Minute)}},
	}
	var b bytes.Buffer
	if err := Print(&b, "", s, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SET ns/fest", "s-a=2", "database unreadable: reach database: refused", "pending", "s-b",
		"73", "manual", "(3m)", "OPS-1", "db_07.t_3  7", "in 60s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	for _, f := range []string{"json", "yaml"} {
		b.Reset()
		if err := Print(&b, f, s, now); err != nil || !strings.Contains(b.String(), "notHeldBy") {
			t.Errorf("-o %s: %v\n%s", f, err, b.String())
		}
	}
	if err := CheckFormat("xml"); !errors.Is(err, ErrBadInput) {
		t.Errorf("-o xml: %v", err)
	}
}

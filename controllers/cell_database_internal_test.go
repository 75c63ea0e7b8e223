package controllers

import (
	"reflect"
	"testing"
	"time"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

func TestDatabaseHistoryInStatusRoundTrips(t *testing.T) {
	at := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		h    dbfailover.History
	}{
		{"empty", dbfailover.History{}},
		{"one open term", dbfailover.History{Terms: []dbfailover.Term{{Number: 1, Primary: 0, ServerID: 10, Start: dbfailover.Position{}, At: at}}}},
		{"after two failovers, one refused, committing alone", dbfailover.History{
			Terms: []dbfailover.Term{
				{Number: 1, Primary: 0, ServerID: 10, Start: dbfailover.Position{}, End: dbfailover.MustPosition("0-10-202"), At: at},
				{Number: 2, Primary: 2, ServerID: 12, Start: dbfailover.MustPosition("0-10-202"), End: dbfailover.MustPosition("0-10-202,1-12-7"), At: at.Add(time.Minute)},
				{Number: 3, Primary: 1, ServerID: 11, Start: dbfailover.MustPosition("0-10-202,1-12-7"), At: at.Add(2 * time.Minute)},
			},
			Refused:     map[int]string{0: "errant transactions: GTID 0-10-203 after the end of server 10's term 1"},
			SemiSyncOff: at.Add(3 * time.Minute),
		}},
	}
	cell := &rpv1.RedPacketCell{}
	cell.Name = "rp-cell-0"
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := historyToStatus(tc.h, cell)
			back, err := historyFromStatus(st)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normal(back), normal(tc.h)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", back, tc.h)
			}
			if cur, ok := tc.h.Current(); ok && st.Primary != cell.MySQLPodName(cur.Primary) {
				t.Fatalf("primary %q, want pod %d", st.Primary, cur.Primary)
			}
		})
	}
	if _, err := historyFromStatus(&rpv1.CellDatabaseStatus{Terms: []rpv1.DatabaseTerm{{Number: 1, Start: "0-x-1"}}}); err == nil {
		t.Fatal("a position that does not parse was accepted: decisions would rest on a history nobody can read")
	}
	if _, err := historyFromStatus(&rpv1.CellDatabaseStatus{Refused: map[string]string{"first": "x"}}); err == nil {
		t.Fatal("a refused key that is no ordinal was accepted")
	}
}

// normal makes empty and nil positions compare equal (a term's Start of a fresh cell is both).
func normal(h dbfailover.History) dbfailover.History {
	h = h.Clone()
	for i := range h.Terms {
		if len(h.Terms[i].Start) == 0 {
			h.Terms[i].Start = nil
		}
		h.Terms[i].At = h.Terms[i].At.UTC()
	}
	h.SemiSyncOff = h.SemiSyncOff.UTC()
	return h
}

func TestMySQLServerID(t *testing.T) {
	seen := map[uint32]int{}
	for i, want := range map[int]uint32{0: 10, 1: 11, 2: 12, 9: 19, 10: 110, 11: 111} {
		if got := rpv1.MySQLServerID(i); got != want {
			t.Errorf("ordinal %d: server_id %d, want %d", i, got, want)
		}
	}
	for i := range 200 {
		id := rpv1.MySQLServerID(i)
		if id == 0 {
			t.Fatalf("ordinal %d: server_id 0 refuses replication", i)
		}
		if j, dup := seen[id]; dup {
			t.Fatalf("ordinals %d and %d share server_id %d", i, j, id)
		}
		seen[id] = i
	}
}

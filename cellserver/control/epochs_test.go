package control_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
)

// TestReportRoutingEpochKeepsOneRowPerServer: each server's report replaces its previous one,
// and a reader asking for recent reports skips a server that stopped reporting.
func TestReportRoutingEpochKeepsOneRowPerServer(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	for _, r := range []struct {
		server string
		epoch  int64
	}{{"srv-a", 1}, {"srv-b", 1}, {"srv-a", 2}} {
		if err := control.ReportRoutingEpoch(ctx, db, schema, r.server, r.epoch, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	got, err := control.ReadRoutingEpochs(ctx, db, schema, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Server != "srv-a" || got[0].Epoch != 2 || got[1].Server != "srv-b" || got[1].Epoch != 1 {
		t.Fatalf("reports %+v, want srv-a at 2 and srv-b at 1", got)
	}
	if d := time.Since(got[0].ReportedAt).Abs(); d > time.Minute {
		t.Fatalf("reported %v ago", d)
	}
	recent, err := control.ReadRoutingEpochs(ctx, db, schema, time.Now().Add(time.Hour))
	if err != nil || len(recent) != 0 {
		t.Fatalf("reports newer than an hour ahead: %+v %v", recent, err)
	}
	if err := control.ReportRoutingEpoch(ctx, db, schema, "", 3, time.Now()); err == nil {
		t.Fatal("accepted a report without a server name")
	}
}

// TestEditSourceMasksNeverLosesAConcurrentEdit: people adding manual masks at the same time
// each keep their mask, and operator masks are left alone.
func TestEditSourceMasksNeverLosesAConcurrentEdit(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	if err := control.WriteMasks(ctx, db, schema, []control.Mask{{Start: 900, End: 900, Reason: "policy", Source: control.SourceOperator}}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = control.EditSourceMasks(ctx, db, schema, control.SourceManual, func(active []control.Mask) ([]control.Mask, error) {
				return append(active, control.Mask{Start: i, End: i, Reason: fmt.Sprintf("hand %d", i), Source: control.SourceManual}), nil
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
	}
	got, err := control.ReadMasks(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n+1 {
		t.Fatalf("%d active masks %+v, want %d manual and the operator's", len(got), got, n)
	}
	for i := range n {
		if got[i].Start != i || got[i].Source != control.SourceManual || got[i].Reason != fmt.Sprintf("hand %d", i) {
			t.Fatalf("mask %d is %+v", i, got[i])
		}
	}
	// Lifting one keeps the rest and their original Since.
	since := got[1].Since
	if err := control.EditSourceMasks(ctx, db, schema, control.SourceManual, func(active []control.Mask) ([]control.Mask, error) {
		return active[1:], nil
	}); err != nil {
		t.Fatal(err)
	}
	got, _ = control.ReadMasks(ctx, db, schema)
	if len(got) != n || got[0].Start != 1 || !got[0].Since.Equal(since) || got[n-1].Source != control.SourceOperator {
		t.Fatalf("after lifting slot 0: %+v", got)
	}
	if err := control.EditSourceMasks(ctx, db, schema, control.SourceManual, func(active []control.Mask) ([]control.Mask, error) {
		return append(active, control.Mask{Start: 5, End: 5, Reason: "x", Source: control.SourceOperator}), nil
	}); err == nil {
		t.Fatal("an edit of manual masks wrote an operator mask")
	}
}

// TestPublishedTableNeverGoesBack: a server polling with the epoch it holds gets the table
// only when a newer one was published, and a late write of an older table (an operator that
// lost its lease) leaves the newer one in place.
func TestPublishedTableNeverGoesBack(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	if body, n, err := control.ReadPublishedTable(ctx, db, schema, 0); err != nil || body != nil || n != 0 {
		t.Fatalf("nothing published: %q %d %v", body, n, err)
	}
	for _, p := range []struct {
		epoch int64
		body  string
	}{{3, "three"}, {5, "five"}, {4, "four, late"}, {5, "five again"}} {
		if err := control.PublishTable(ctx, db, schema, p.epoch, []byte(p.body)); err != nil {
			t.Fatal(err)
		}
	}
	body, n, err := control.ReadPublishedTable(ctx, db, schema, 4)
	if err != nil || string(body) != "five" || n != 5 {
		t.Fatalf("after 4: %q epoch %d %v, want the first table of epoch 5", body, n, err)
	}
	if body, n, err := control.ReadPublishedTable(ctx, db, schema, 5); err != nil || body != nil || n != 0 {
		t.Fatalf("after 5: %q %d %v, want nothing newer", body, n, err)
	}
}

package store_test

import (
	"context"
	"testing"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// What the operator reads before deleting a cell or pruning an epoch, on real rows.
func TestOwedAndUnsettledBefore(t *testing.T) {
	e := newSweepEnv(t)
	ctx := context.Background()
	schema := e.Prefix + "_cell"

	if p, f, err := store.Owed(ctx, e.DB, e.Prefix+"_nothing"); err != nil || p != 0 || f != 0 {
		t.Fatalf("Owed on a schema that does not exist = %d, %d, %v; want 0, 0, nil", p, f, err)
	}
	if _, _, err := store.Owed(ctx, e.DB, "x; DROP TABLE y"); err == nil {
		t.Fatal("Owed accepted a schema name that is not an identifier")
	}
	if p, f, err := store.Owed(ctx, e.DB, schema); err != nil || p != 0 || f != 0 {
		t.Fatalf("Owed on an empty cell = %d, %d, %v; want 0, 0, nil", p, f, err)
	}

	w, _, err := e.svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: "owed", TotalCents: 300, Count: 3, Kind: packet.KindRandom}, 7)
	if err != nil {
		t.Fatal(err)
	}
	if p, f, err := store.Owed(ctx, e.DB, schema); err != nil || p != 1 || f != 0 {
		t.Fatalf("Owed after a wrap = %d, %d, %v; want 1 unsettled packet, no effect", p, f, err)
	}
	if _, err := e.svc.Pay(ctx, w.ID, packet.PayRequest{PaymentTxnID: "txn-owed", AmountCents: 300}); err != nil {
		t.Fatal(err)
	}
	var effects int64
	if err := e.DB.QueryRow("SELECT COUNT(*) FROM " + schema + ".outbox WHERE delivered = 0").Scan(&effects); err != nil {
		t.Fatal(err)
	}
	if p, f, err := store.Owed(ctx, e.DB, schema); err != nil || p != 1 || f != effects || f == 0 {
		t.Fatalf("Owed after the payment = %d, %d, %v; want 1 packet and the %d undelivered outbox rows", p, f, err, effects)
	}

	for _, c := range []struct {
		boundary int64
		want     int64
	}{{w.ID, 0}, {w.ID + 1, 1}} {
		if n, err := store.UnsettledBefore(ctx, e.DB, schema, c.boundary); err != nil || n != c.want {
			t.Errorf("UnsettledBefore(%d) = %d, %v; want %d", c.boundary, n, err, c.want)
		}
	}
	if n, err := store.UnsettledBefore(ctx, e.DB, e.Prefix+"_nothing", w.ID+1); err != nil || n != 0 {
		t.Errorf("UnsettledBefore on a missing schema = %d, %v; want 0", n, err)
	}
}

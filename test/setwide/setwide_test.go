package setwide

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// audit runs the DESIGN invariants plus the set-wide ones over every cell and fails on any
// violation.
func (h *harness) audit(from time.Time) *loadgen.AuditReport {
	h.t.Helper()
	rep, err := loadgen.Audit(context.Background(), h.auditConfig(from))
	if err != nil {
		h.t.Fatalf("audit: %v", err)
	}
	for _, v := range rep.Violations {
		h.t.Errorf("audit: %s", v)
	}
	return rep
}

// TestPaymentActivatesOnePacketSetWide: a paymentTxnId that paid a packet in one cell cannot
// pay a packet of another cell; the same notice again still answers 200.
func TestPaymentActivatesOnePacketSetWide(t *testing.T) {
	h := newHarness(t, 2, 1, time.Hour)
	from := time.Now().Add(-time.Second)
	run := testenv.UniqueName("pay")
	now := h.clock.Now()
	reqA := h.keyHomedAt("alice", run+"-a-", "sw-cell-0", now, nil)
	reqB := h.keyHomedAt("bob", run+"-b-", "sw-cell-1", now, nil)
	a := h.do("POST", "/v1/packets", wrapBody("alice", reqA, 500, 2))
	b := h.do("POST", "/v1/packets", wrapBody("bob", reqB, 500, 2))
	if a.status != http.StatusCreated || b.status != http.StatusCreated || a.cell != "sw-cell-0" || b.cell != "sw-cell-1" {
		t.Fatalf("wraps: %d from %s %s; %d from %s %s", a.status, a.cell, a.raw, b.status, b.cell, b.raw)
	}
	txn := "TX-" + run
	pay := func(id, txn string) answer {
		return h.do("POST", "/v1/packets/"+id+"/pay", fmt.Sprintf(`{"paymentTxnId":%q,"amountCents":500}`, txn))
	}
	if got := pay(a.str("packetId"), txn); got.status != http.StatusOK {
		t.Fatalf("first pay: %d %s", got.status, got.raw)
	}
	got := pay(b.str("packetId"), txn)
	if got.status != http.StatusConflict || got.str("code") != "idempotency_conflict" || got.str("field") != "paymentTxnId" {
		t.Fatalf("the same txn for a packet of another cell: %d %s, want 409 idempotency_conflict on paymentTxnId", got.status, got.raw)
	}
	if d := h.do("GET", "/v1/packets/"+b.str("packetId"), ""); d.status != http.StatusOK || d.body["packet"].(map[string]any)["status"] != "wrapped" {
		t.Fatalf("packet %s after a refused pay: %d %s, want still wrapped", b.str("packetId"), d.status, d.raw)
	}
	if got := pay(a.str("packetId"), txn); got.status != http.StatusOK {
		t.Fatalf("repeated notice: %d %s", got.status, got.raw)
	}
	// A txn differing only in letter case is another payment.
	if got := pay(b.str("packetId"), "tx-"+run); got.status != http.StatusOK {
		t.Fatalf("case-variant txn: %d %s", got.status, got.raw)
	}
	h.audit(from)
}

// TestWrapRetryAfterMaskReturnsFirstPacket: masking the slot a wrap's packet got, or every
// slot of its cell, never makes a retry of that wrap create a second packet.
func TestWrapRetryAfterMaskReturnsFirstPacket(t *testing.T) {
	h := newHarness(t, 2, 1, time.Hour)
	from := time.Now().Add(-time.Second)
	req := testenv.UniqueName("mask")
	body := wrapBody("carol", req, 300, 3)
	first := h.do("POST", "/v1/packets", body)
	if first.status != http.StatusCreated {
		t.Fatalf("wrap: %d %s", first.status, first.raw)
	}
	id, _ := strconv.ParseInt(first.str("packetId"), 10, 64)
	slot := ids.Slot(id)
	h.publish(func(t *routing.Table) {
		t.Masked = append(t.Masked, routing.MaskedRange{Start: slot, End: slot, Reason: "manual", Since: time.Now().UTC().Truncate(time.Second)})
	})
	for i := range 7 {
		again := h.do("POST", "/v1/packets", body)
		if again.status != http.StatusOK || again.str("packetId") != first.str("packetId") {
			t.Fatalf("retry %d after masking slot %d: %d %s, first packet %s", i, slot, again.status, again.raw, first.str("packetId"))
		}
	}
	// Every slot of the home masked: the retry still finds its packet, a new key is refused.
	home := first.cell
	h.publish(func(t *routing.Table) {
		for _, r := range t.Latest().Ranges {
			if r.Cell == home {
				t.Masked = append(t.Masked, routing.MaskedRange{Start: r.Start, End: r.End, Reason: "manual", Since: time.Now().UTC().Truncate(time.Second)})
			}
		}
	})
	if again := h.do("POST", "/v1/packets", body); again.status != http.StatusOK || again.str("packetId") != first.str("packetId") {
		t.Fatalf("retry with the home fully masked: %d %s", again.status, again.raw)
	}
	newReq := h.keyHomedAt("carol", req+"-new-", home, h.clock.Now(), nil)
	if got := h.do("POST", "/v1/packets", wrapBody("carol", newReq, 300, 3)); got.status != http.StatusServiceUnavailable {
		t.Fatalf("new key homed at a fully masked cell: %d %s, want 503", got.status, got.raw)
	}
	h.audit(from)
}

// TestWrapRetryAfterEpochMovesHome: a scale-in epoch gives every slot of cell 0 to cell 1. A
// retry of a wrap first made in cell 0 still returns that packet; during the hand-over new
// keys of moved slots wait; afterwards they are made in cell 1, once.
func TestWrapRetryAfterEpochMovesHome(t *testing.T) {
	h := newHarness(t, 2, 1, time.Hour)
	from := time.Now().Add(-time.Second)
	run := testenv.UniqueName("epoch")
	req := h.keyHomedAt("dave", run+"-", "sw-cell-0", h.clock.Now(), nil)
	body := wrapBody("dave", req, 400, 4)
	first := h.do("POST", "/v1/packets", body)
	if first.status != http.StatusCreated || first.cell != "sw-cell-0" {
		t.Fatalf("wrap: %d from %s %s", first.status, first.cell, first.raw)
	}
	// Servers poll the routing file every second: three seconds ahead, all hold it in time.
	e := h.addEpoch(time.Now().Add(3*time.Second), 0, 999, "sw-cell-1")
	if again := h.do("POST", "/v1/packets", body); again.status != http.StatusOK || again.str("packetId") != first.str("packetId") {
		t.Fatalf("retry before the epoch: %d %s", again.status, again.raw)
	}
	testenv.Eventually(h.t, time.Minute, "epoch 2 in force", testenv.Holds(func() bool { return !h.clock.Now().Before(e.EffectiveTime) }))
	newReq := h.keyHomedAt("dave", run+"-new-", "sw-cell-1", e.EffectiveTime.Add(routing.KeyHandover), func(slot int) bool { return slot < 500 })
	newBody := wrapBody("dave", newReq, 400, 4)
	if got := h.do("POST", "/v1/packets", newBody); h.clock.Now().Before(e.EffectiveTime.Add(routing.KeyHandover-time.Second)) &&
		(got.status != http.StatusServiceUnavailable || got.str("code") != routing.CodeKeyHandover) {
		t.Fatalf("new key during the hand-over: %d %s, want 503 %s", got.status, got.raw, routing.CodeKeyHandover)
	}
	testenv.Eventually(h.t, time.Minute, "hand-over over", testenv.Holds(func() bool { return !h.clock.Now().Before(e.EffectiveTime.Add(routing.KeyHandover)) }))
	for i := range 3 {
		again := h.do("POST", "/v1/packets", body)
		if again.status != http.StatusOK || again.str("packetId") != first.str("packetId") || again.cell != "sw-cell-0" {
			t.Fatalf("retry %d after the epoch: %d from %s %s; first %s from sw-cell-0", i, again.status, again.cell, again.raw, first.str("packetId"))
		}
	}
	made := h.do("POST", "/v1/packets", newBody)
	if made.status != http.StatusCreated || made.cell != "sw-cell-1" {
		t.Fatalf("new key after the hand-over: %d from %s %s", made.status, made.cell, made.raw)
	}
	if again := h.do("POST", "/v1/packets", newBody); again.status != http.StatusOK || again.str("packetId") != made.str("packetId") {
		t.Fatalf("retry of the new key: %d %s", again.status, again.raw)
	}
	h.audit(from)
}

// TestWrapHomeDownRefusesWithoutDuplicating: while a key's home cell is down its retries are
// refused (503), never created in another cell; once it is back they return the first packet.
func TestWrapHomeDownRefusesWithoutDuplicating(t *testing.T) {
	h := newHarness(t, 2, 1, time.Hour)
	from := time.Now().Add(-time.Second)
	run := testenv.UniqueName("down")
	req := h.keyHomedAt("erin", run+"-", "sw-cell-1", h.clock.Now(), nil)
	body := wrapBody("erin", req, 200, 2)
	first := h.do("POST", "/v1/packets", body)
	if first.status != http.StatusCreated || first.cell != "sw-cell-1" {
		t.Fatalf("wrap: %d from %s %s", first.status, first.cell, first.raw)
	}
	srv := h.cells[1].servers[0]
	h.kill9(srv)
	testenv.Eventually(h.t, time.Minute, "gateway sees cell 1 down", testenv.Holds(func() bool { return len(h.gw.ReadyServers("sw-cell-1")) == 0 }))
	for i := range 5 {
		if got := h.do("POST", "/v1/packets", body); got.status != http.StatusServiceUnavailable {
			t.Fatalf("retry %d with the home down: %d from %s %s, want 503", i, got.status, got.cell, got.raw)
		}
	}
	h.restart(srv)
	if again := h.do("POST", "/v1/packets", body); again.status != http.StatusOK || again.str("packetId") != first.str("packetId") {
		t.Fatalf("retry with the home back: %d %s", again.status, again.raw)
	}
	h.audit(from)
}

package wallet

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// ReconcileMargin is how long after the latest possible settlement a packet stays in the
// reconciliation window: effects lost on their way to the ledger after settlement (or by a
// slow sweep and relay) are still found for a day.
const ReconcileMargin = 24 * time.Hour

// ReconcileWindow is how far back, by creation time, a periodic reconciliation must look to
// cover every packet that can still be unsettled or was settled within the margin: a packet
// created at t may be paid until t+payWindow, is then open for expiry, and is settled after
// that (docs/design.md §4.3: every receive record ends with its credit). A window counted from
// payment alone misses packets paid late in their payment window.
func ReconcileWindow(payWindow, expiry time.Duration) time.Duration {
	return payWindow + expiry + ReconcileMargin
}

// Reconcile repairs, from the cell's side, drift Audit would report for packets created in
// [from, to]: a receive record without its ledger credit, a paid packet without its escrow
// transfer, a refund without its ledger refund. Each missing effect is requeued in the outbox
// under its original key, so the relay delivers it and the ledger applies it once. Drift the
// other way (ledger money with no cell record) cannot be undone here: it is returned in the
// report for an operator. Run it on a drained outbox, or it requeues effects merely in flight
// (harmless: the ledger skips keys it has).
func Reconcile(ctx context.Context, st *store.Store, l *Ledger, from, to time.Time) (requeued int, rep Report, err error) {
	bad := func(format string, args ...any) {
		rep.Violations = append(rep.Violations, fmt.Sprintf(format, args...))
	}
	requeue := func(r store.OutboxRow) error {
		requeued++
		return st.RequeueOutbox(ctx, r)
	}
	err = st.ForEachPacket(ctx, from, to, func(p store.Packet) error {
		rep.Packets++
		if p.Status != store.StatusActive && p.Status != store.StatusExpired {
			return nil
		}
		ts, err := l.PacketTransfers(ctx, p.ID)
		if err != nil {
			return err
		}
		have := map[string]Transfer{}
		for _, t := range ts {
			have[t.Key] = t
		}
		pid := strconv.FormatInt(p.ID, 10)
		if _, ok := have["pay:"+pid]; !ok {
			if err := requeue(store.OutboxRow{Kind: store.OutboxPay, Key: "pay:" + pid, PacketID: p.ID, Account: p.Sender, AmountCents: p.TotalCents, At: p.PaidAt}); err != nil {
				return err
			}
		}
		receipts := map[string]bool{}
		for after := 0; ; {
			page, err := st.Receipts(ctx, p.ID, after, 1000)
			if err != nil {
				return err
			}
			for _, r := range page {
				rep.Receipts++
				key := "credit:" + pid + ":" + r.User
				receipts[key] = true
				t, ok := have[key]
				switch {
				case !ok:
					if err := requeue(store.OutboxRow{Kind: store.OutboxCredit, Key: key, PacketID: p.ID, Account: r.User, AmountCents: r.AmountCents, At: r.OpenedAt}); err != nil {
						return err
					}
				case t.AmountCents != r.AmountCents:
					bad("packet %d: %s received %d but was credited %d", p.ID, r.User, r.AmountCents, t.AmountCents)
				}
			}
			if len(page) < 1000 {
				break
			}
			after = page[len(page)-1].Seq
		}
		for key, t := range have {
			if t.Kind == store.OutboxCredit && !receipts[key] {
				bad("packet %d: ledger credit %s (%d cents) has no receive record", p.ID, key, t.AmountCents)
			}
		}
		refund, ok := have["refund:"+pid]
		switch {
		case p.RefundedCents > 0 && !ok:
			if err := requeue(store.OutboxRow{Kind: store.OutboxRefund, Key: "refund:" + pid, PacketID: p.ID, Account: p.Sender, AmountCents: p.RefundedCents, At: p.SettledAt}); err != nil {
				return err
			}
		case ok && refund.AmountCents != p.RefundedCents:
			bad("packet %d: ledger refunded %d, packet refunded %d", p.ID, refund.AmountCents, p.RefundedCents)
		}
		return nil
	})
	if err != nil {
		return requeued, rep, fmt.Errorf("reconcile: %w", err)
	}
	return requeued, rep, nil
}

package wallet

import (
	"context"
	"fmt"
	"time"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// Report is the outcome of an audit.
type Report struct {
	Packets    int
	Receipts   int
	Violations []string
}

// OK reports a clean audit.
func (r Report) OK() bool { return len(r.Violations) == 0 }

func (r Report) Error() string {
	if r.OK() {
		return ""
	}
	n := min(len(r.Violations), 10)
	return fmt.Sprintf("audit found %d violations over %d packets, first %d: %v", len(r.Violations), r.Packets, n, r.Violations[:n])
}

// Audit checks docs/design.md §4 end to end for every packet created in [from, to] that is still
// in the day tables, against a drained outbox:
//   - conservation: total = Σ opened + refunded + remaining, each share ≥ 1 cent, and after
//     settlement remaining = 0;
//   - no user twice (the unique key guarantees it; counted again here);
//   - ledger credits match receive records one to one, the refund matches the refunded
//     amount, the pay transfer matches the total, and the escrow balance equals remaining;
//   - the ledger as a whole balances to zero, and every account's balance is the sum of its
//     postings.
func Audit(ctx context.Context, st *store.Store, l *Ledger, from, to time.Time) (Report, error) {
	var rep Report
	bad := func(format string, args ...any) {
		rep.Violations = append(rep.Violations, fmt.Sprintf(format, args...))
	}
	err := st.ForEachPacket(ctx, from, to, func(p store.Packet) error {
		rep.Packets++
		var receipts []store.Receipt
		for after := 0; ; {
			page, err := st.Receipts(ctx, p.ID, after, 1000)
			if err != nil {
				return err
			}
			receipts = append(receipts, page...)
			if len(page) < 1000 {
				break
			}
			after = page[len(page)-1].Seq
		}
		rep.Receipts += len(receipts)
		var opened int64
		users := map[string]int64{}
		for _, r := range receipts {
			if r.AmountCents < 1 {
				bad("packet %d: %s got %d cents", p.ID, r.User, r.AmountCents)
			}
			if _, dup := users[r.User]; dup {
				bad("packet %d: %s opened twice", p.ID, r.User)
			}
			users[r.User] = r.AmountCents
			opened += r.AmountCents
		}
		if opened+p.RefundedCents+p.RemainingCents != p.TotalCents {
			bad("packet %d: opened %d + refunded %d + remaining %d != total %d", p.ID, opened, p.RefundedCents, p.RemainingCents, p.TotalCents)
		}
		if p.Status == store.StatusExpired && p.RemainingCents != 0 {
			bad("packet %d: settled with %d cents remaining", p.ID, p.RemainingCents)
		}
		if len(receipts) > p.Count {
			bad("packet %d: %d receipts for %d shares", p.ID, len(receipts), p.Count)
		}
		ts, err := l.PacketTransfers(ctx, p.ID)
		if err != nil {
			return err
		}
		var paid, refunded int64
		credits := map[string]int64{}
		for _, t := range ts {
			switch t.Kind {
			case store.OutboxPay:
				paid += t.AmountCents
			case store.OutboxRefund:
				refunded += t.AmountCents
			case store.OutboxCredit:
				if _, dup := credits[t.Account]; dup {
					bad("packet %d: %s credited twice", p.ID, t.Account)
				}
				credits[t.Account] += t.AmountCents
			}
		}
		switch p.Status {
		case store.StatusWrapped, store.StatusCancelled:
			if len(ts) != 0 {
				bad("packet %d: %s but the ledger has %d transfers", p.ID, p.Status, len(ts))
			}
			return nil
		}
		if paid != p.TotalCents {
			bad("packet %d: ledger paid %d, total %d", p.ID, paid, p.TotalCents)
		}
		if refunded != p.RefundedCents {
			bad("packet %d: ledger refunded %d, packet refunded %d", p.ID, refunded, p.RefundedCents)
		}
		if len(credits) != len(users) {
			bad("packet %d: %d credits for %d receipts", p.ID, len(credits), len(users))
		}
		for u, amt := range users {
			if credits[u] != amt {
				bad("packet %d: %s received %d, credited %d", p.ID, u, amt, credits[u])
			}
		}
		escrow, err := l.Balance(ctx, Escrow(p.ID))
		if err != nil {
			return err
		}
		if escrow != p.RemainingCents {
			bad("packet %d: escrow holds %d, packet has %d remaining", p.ID, escrow, p.RemainingCents)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	b, p, err := l.Imbalance(ctx)
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	if b != 0 || p != 0 {
		bad("ledger does not balance: balances sum to %d, postings to %d", b, p)
	}
	// A balance credited on behalf of another account still sums to zero overall; only a
	// per-account comparison with the postings shows it.
	drift, err := l.AccountDrift(ctx)
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	for _, d := range drift {
		bad("account %s: balance is %d cents off the sum of its postings", d.Account, -d.Cents)
	}
	return rep, nil
}

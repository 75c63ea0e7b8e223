package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
)

// OutboxAge is how long the oldest undelivered outbox row (a wallet credit, escrow transfer
// or refund still owed) has waited at now; zero when nothing is owed. The backlog alone
// cannot tell a busy relay from a stuck one; the age can.
func (s *Store) OutboxAge(ctx context.Context, now time.Time) (time.Duration, error) {
	var oldest sql.NullInt64
	if err := s.db.QueryRowContext(ctx, "SELECT MIN(at_ms) FROM "+s.cellTable("outbox")+" WHERE delivered = 0").Scan(&oldest); err != nil {
		return 0, fmt.Errorf("oldest undelivered outbox row: %w", err)
	}
	if !oldest.Valid {
		return 0, nil
	}
	return max(now.Sub(fromMS(oldest.Int64)), 0), nil
}

// SettlementOverdue is how far past its deadline the most overdue unsettled packet is at
// now; zero when none is late. maxLife is the longest a packet may live before it must be
// settled (payment window plus open window).
//
// Two things make a settlement late, and the expiry index shows each in one index read:
// the sweeper falling behind (its earliest due row is in the past), and a packet that keeps
// failing to settle (its retries push its due time forward, so only its ID, which encodes its
// creation second, tells how old it is).
func (s *Store) SettlementOverdue(ctx context.Context, now time.Time, maxLife time.Duration) (time.Duration, error) {
	var due, oldestID sql.NullInt64
	if err := s.db.QueryRowContext(ctx, "SELECT MIN(expires_ms), MIN(packet_id) FROM "+s.cellTable("expiry")).Scan(&due, &oldestID); err != nil {
		return 0, fmt.Errorf("oldest unsettled packet: %w", err)
	}
	var late time.Duration
	if due.Valid {
		late = max(late, now.Sub(fromMS(due.Int64)))
	}
	if oldestID.Valid {
		late = max(late, now.Sub(ids.CreatedAt(oldestID.Int64).Add(maxLife)))
	}
	return late, nil
}

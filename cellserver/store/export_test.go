package store

import (
	"context"
	"time"
)

// OpenWritesAfterStaleRead runs an open's write-and-commit round trip for one fresh share of
// user on packet id, with the packet's lock taken but its row "read" as stale says: what an
// open would do if something had written the row without taking its lock.
func (s *Store) OpenWritesAfterStaleRead(ctx context.Context, id int64, user string, amount int64, stale Packet) error {
	packets, receipts := s.Tables(id)
	tx, err := s.connTx(ctx)
	if err != nil {
		return err
	}
	defer tx.done()
	if _, err := scanPacket(tx.queryRow(ctx, "SELECT "+packetCols+" FROM "+packets+" WHERE id = ? FOR UPDATE", id)); err != nil {
		return err
	}
	now := time.Now()
	seq := stale.Count - stale.RemainingCount + 1
	fresh := []Receipt{{PacketID: id, Seq: seq, User: user, AmountCents: amount, OpenedAt: now}}
	stmts, args := s.openWrites(packets, receipts, id, fresh, now, stale, stale.RemainingCents-amount, stale.RemainingCount-1)
	return tx.execCommit(ctx, stmts, args...)
}

// ErrPacketMoved is the conditional UPDATE's refusal message.
const ErrPacketMoved = errPacketMoved

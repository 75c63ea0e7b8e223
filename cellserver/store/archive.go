package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// Archive moves settled packets created before now-retention, with their receive records,
// from the day tables into the cold tables, batch rows per transaction. Because IDs are
// time-ordered, "created before the cutoff" is "id below the cutoff's smallest ID", which
// also separates last month's rows from this month's in a reused day table. Rows are copied
// with INSERT IGNORE and deleted in the same transaction, so a crash or a rerun moves each
// row exactly once. Unsettled rows stay put (and are logged): the sweeper settles them first.
func (s *Store) Archive(ctx context.Context, now time.Time, batch int, log *slog.Logger) (moved int, err error) {
	boundary, err := ids.Compose(ids.Parts{Created: now.Add(-s.keep).Truncate(time.Second)})
	if err != nil {
		return 0, fmt.Errorf("archive boundary: %w", err)
	}
	// Idempotency keys live as long as the packets they point to stay in the day tables: a
	// retry a week late is a new request. Packet IDs are time-ordered, so the same boundary
	// finds them.
	for _, table := range []string{"wrap_requests", "payments"} {
		for {
			res, err := s.db.ExecContext(ctx, "DELETE FROM "+s.cellTable(table)+" WHERE packet_id < ? LIMIT ?", boundary, batch)
			if err != nil {
				return 0, fmt.Errorf("purge old %s: %w", table, err)
			}
			if n, _ := res.RowsAffected(); n < int64(batch) {
				break
			}
		}
	}
	existing, err := s.dayTables(ctx)
	if err != nil {
		return 0, err
	}
	for _, t := range s.layout.All() {
		coldP, coldR := s.coldTables(t)
		for day := 1; day <= 31; day++ {
			packets := fmt.Sprintf("%s.t_%d_%02d", s.layout.DBName(t.DB), t.Table, day)
			receipts := fmt.Sprintf("%s.r_%d_%02d", s.layout.DBName(t.DB), t.Table, day)
			if !existing[packets] || !existing[receipts] {
				continue
			}
			for {
				n, err := s.archiveBatch(ctx, packets, receipts, coldP, coldR, boundary, batch)
				s.observe(t, err)
				if err != nil {
					return moved, fmt.Errorf("archive %s: %w", packets, err)
				}
				moved += n
				if n < batch {
					break
				}
			}
			var stuck int
			if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+packets+" WHERE id < ?", boundary).Scan(&stuck); err == nil && stuck > 0 && log != nil {
				log.Warn("unsettled packets past retention stay in their day table", "table", packets, "count", stuck)
			}
		}
	}
	return moved, nil
}

func (s *Store) archiveBatch(ctx context.Context, packets, receipts, coldP, coldR string, boundary int64, batch int) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer rollback(tx)
	rows, err := tx.QueryContext(ctx, "SELECT id FROM "+packets+" WHERE id < ? AND status IN (?, ?) ORDER BY id LIMIT ? FOR UPDATE",
		boundary, int(StatusExpired), int(StatusCancelled), batch)
	if err != nil {
		return 0, err
	}
	var args []any
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		args = append(args, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(args) == 0 {
		return 0, err
	}
	in := "(?" + strings.Repeat(",?", len(args)-1) + ")"
	for _, q := range []string{
		"INSERT IGNORE INTO " + coldP + " SELECT * FROM " + packets + " WHERE id IN " + in,
		"INSERT IGNORE INTO " + coldR + " SELECT * FROM " + receipts + " WHERE packet_id IN " + in,
		"DELETE FROM " + receipts + " WHERE packet_id IN " + in,
		"DELETE FROM " + packets + " WHERE id IN " + in,
	} {
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return 0, err
		}
	}
	return len(args), tx.Commit()
}

// dayTables lists the physical day tables that exist, as "db.table".
func (s *Store) dayTables(ctx context.Context) (map[string]bool, error) {
	prefix := s.layout.DBName(0)
	prefix = prefix[:len(prefix)-2]
	rows, err := s.db.QueryContext(ctx, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema LIKE ?",
		strings.ReplaceAll(prefix, "_", `\_`)+"%")
	if err != nil {
		return nil, fmt.Errorf("list day tables: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var db, t string
		if err := rows.Scan(&db, &t); err != nil {
			return nil, err
		}
		out[db+"."+t] = true
	}
	return out, rows.Err()
}

// ForEachPacket calls fn for every packet created in [from, to] that is still in a day table,
// visiting each logical table's day tables in turn. Audits use it.
func (s *Store) ForEachPacket(ctx context.Context, from, to time.Time, fn func(Packet) error) error {
	lo, err := ids.Compose(ids.Parts{Created: from.Truncate(time.Second)})
	if err != nil {
		return err
	}
	hi, err := ids.Compose(ids.Parts{Created: to.Truncate(time.Second).Add(time.Second)})
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, t := range s.layout.All() {
		for d := from.UTC().Truncate(24 * time.Hour); !d.After(to); d = d.Add(24 * time.Hour) {
			table := s.layout.Physical("t", t, d)
			if seen[table] {
				continue
			}
			seen[table] = true
			if err := s.scanPackets(ctx, t, table, lo, hi, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) scanPackets(ctx context.Context, t shard.Table, table string, lo, hi int64, fn func(Packet) error) error {
	rows, err := s.db.QueryContext(ctx, "SELECT "+packetCols+" FROM "+table+" WHERE id >= ? AND id < ? ORDER BY id", lo, hi)
	if isMissingTable(err) {
		return nil
	}
	if err != nil {
		s.observe(t, err)
		return fmt.Errorf("scan %s: %w", table, err)
	}
	var ps []Packet
	for rows.Next() {
		p, err := scanPacket(rows)
		if err != nil {
			rows.Close()
			return fmt.Errorf("scan %s: %w", table, err)
		}
		ps = append(ps, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan %s: %w", table, err)
	}
	for _, p := range ps {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// Maintain keeps tomorrow's tables ready and archives old rows, every interval until ctx ends.
func (s *Store) Maintain(ctx context.Context, interval time.Duration, now func() time.Time, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.EnsureSchema(ctx, now()); err != nil {
			log.Error("ensure schema", "err", err)
		}
		if n, err := s.Archive(ctx, now(), 500, log); err != nil {
			log.Error("archive", "err", err, "moved", n)
		} else if n > 0 {
			log.Info("archived settled packets", "moved", n)
		}
		if _, err := s.PurgeDelivered(ctx, now().Add(-s.keep), 1000); err != nil {
			log.Error("purge outbox", "err", err)
		}
	}
}

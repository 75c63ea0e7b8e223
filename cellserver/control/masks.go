package control

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/go-sql-driver/mysql"
	"slices"
	"time"
)

// Sources of a mask.
const (
	SourceOperator = "operator" // the operator's masking policy
	SourceManual   = "manual"   // a human, through the set's spec or by hand
)

// Mask is an inclusive run of slots in which no new packet may be created.
type Mask struct {
	Start  int       `json:"start"`
	End    int       `json:"end"`
	Reason string    `json:"reason"`
	Source string    `json:"source"`
	Since  time.Time `json:"since"`
	// LiftedAt is set on masks that are no longer in force (history only).
	LiftedAt *time.Time `json:"liftedAt,omitempty"`
}

// Contains reports whether slot lies in the mask.
func (m Mask) Contains(slot int) bool { return slot >= m.Start && slot <= m.End }

// IsMasked reports whether any of masks covers slot.
func IsMasked(masks []Mask, slot int) bool {
	for _, m := range masks {
		if m.Contains(slot) {
			return true
		}
	}
	return false
}

// maskKey identifies a mask across writes: the same range from the same source is the same
// mask, so rewriting the active set keeps its original Since.
type maskKey struct {
	start, end int
	source     string
}

// ReadMasks returns the masks in force, ordered by first slot.
func ReadMasks(ctx context.Context, db *sql.DB, schema string) ([]Mask, error) {
	tbl, err := qualify(schema, "masks")
	if err != nil {
		return nil, err
	}
	masks, err := scanMasks(db.QueryContext(ctx,
		"SELECT slot_start, slot_end, reason, source, since, lifted_at FROM "+tbl+
			" WHERE lifted_at IS NULL ORDER BY slot_start, slot_end, id"))
	if err != nil {
		return nil, fmt.Errorf("read masks: %w", err)
	}
	return masks, nil
}

// ReadMaskHistory returns every mask in force at or after since (active ones and those
// lifted since then), oldest first.
func ReadMaskHistory(ctx context.Context, db *sql.DB, schema string, since time.Time) ([]Mask, error) {
	tbl, err := qualify(schema, "masks")
	if err != nil {
		return nil, err
	}
	masks, err := scanMasks(db.QueryContext(ctx,
		"SELECT slot_start, slot_end, reason, source, since, lifted_at FROM "+tbl+
			" WHERE lifted_at IS NULL OR lifted_at >= ? ORDER BY since, id", since.UTC()))
	if err != nil {
		return nil, fmt.Errorf("read mask history: %w", err)
	}
	return masks, nil
}

// WriteMasks makes masks the active set: masks no longer listed are lifted now (kept as
// history), new ones are recorded with their Since (now if zero), and ones already active —
// same Start, End and Source — keep their original Since and take the new Reason. It runs in
// one transaction, so a server never reads a half-written set.
func WriteMasks(ctx context.Context, db *sql.DB, schema string, masks []Mask) error {
	return writeMasks(ctx, db, schema, "", masks, nil)
}

// WriteSourceMasks is WriteMasks limited to one source: only active masks from source are
// lifted or kept, so the operator's policy never lifts a mask a human set by hand. Every
// mask given must carry that source.
func WriteSourceMasks(ctx context.Context, db *sql.DB, schema, source string, masks []Mask) error {
	if source == "" {
		return fmt.Errorf("write masks: empty source")
	}
	for _, m := range masks {
		if m.Source != source {
			return fmt.Errorf("write masks of source %s: range %d..%d has source %q", source, m.Start, m.End, m.Source)
		}
	}
	return writeMasks(ctx, db, schema, source, masks, nil)
}

// EditSourceMasks is WriteSourceMasks of what edit makes of the source's active masks, read
// under the same lock the write holds: two people adding or lifting manual masks at once
// each see the other's change instead of overwriting it.
func EditSourceMasks(ctx context.Context, db *sql.DB, schema, source string, edit func(active []Mask) ([]Mask, error)) error {
	if source == "" {
		return fmt.Errorf("edit masks: empty source")
	}
	return writeMasks(ctx, db, schema, source, nil, edit)
}

func validMasks(masks []Mask, source string) error {
	for _, m := range masks {
		if m.Start < 0 || m.End < m.Start {
			return fmt.Errorf("write masks: bad range %d..%d", m.Start, m.End)
		}
		if m.Source == "" {
			return fmt.Errorf("write masks: range %d..%d has no source", m.Start, m.End)
		}
		if source != "" && m.Source != source {
			return fmt.Errorf("write masks of source %s: range %d..%d has source %q", source, m.Start, m.End, m.Source)
		}
	}
	return nil
}

// writeMasks retries a transaction InnoDB chose as a deadlock victim: two writers' locking
// reads of the active masks and their inserts can cross, and the victim's work was rolled
// back whole, so running it again is the standard and safe answer.
func writeMasks(ctx context.Context, db *sql.DB, schema, onlySource string, masks []Mask, edit func([]Mask) ([]Mask, error)) error {
	for attempt := 1; ; attempt++ {
		err := writeMasksOnce(ctx, db, schema, onlySource, masks, edit)
		var me *mysql.MySQLError
		if attempt < 5 && errors.As(err, &me) && me.Number == 1213 {
			continue
		}
		return err
	}
}

func writeMasksOnce(ctx context.Context, db *sql.DB, schema, onlySource string, masks []Mask, edit func([]Mask) ([]Mask, error)) error {
	tbl, err := qualify(schema, "masks")
	if err != nil {
		return err
	}
	if err := validMasks(masks, ""); err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write masks: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit this is a no-op

	// Locking read of every active mask, even when only one source is rewritten: two
	// writers serialise instead of both inserting the same new mask.
	rows, err := tx.QueryContext(ctx,
		"SELECT id, slot_start, slot_end, source, reason, since FROM "+tbl+" WHERE lifted_at IS NULL ORDER BY slot_start, slot_end, id FOR UPDATE")
	if err != nil {
		return fmt.Errorf("write masks: read active: %w", err)
	}
	type active struct {
		id     int64
		reason string
	}
	current := map[maskKey]active{}
	var duplicates []int64
	var mine []Mask
	for rows.Next() {
		var k maskKey
		var a active
		var since time.Time
		if err := rows.Scan(&a.id, &k.start, &k.end, &k.source, &a.reason, &since); err != nil {
			rows.Close()
			return fmt.Errorf("write masks: read active: %w", err)
		}
		if onlySource != "" && k.source != onlySource {
			continue
		}
		if _, dup := current[k]; dup {
			duplicates = append(duplicates, a.id)
			continue
		}
		current[k] = a
		mine = append(mine, Mask{Start: k.start, End: k.end, Reason: a.reason, Source: k.source, Since: since.UTC()})
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("write masks: read active: %w", err)
	}
	rows.Close()
	if edit != nil {
		if masks, err = edit(mine); err != nil {
			return err
		}
		if err := validMasks(masks, onlySource); err != nil {
			return err
		}
	}

	wanted := map[maskKey]bool{}
	for _, m := range masks {
		k := maskKey{m.Start, m.End, m.Source}
		if wanted[k] {
			continue
		}
		wanted[k] = true
		if a, ok := current[k]; ok {
			if a.reason != m.Reason {
				if _, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET reason = ? WHERE id = ?", m.Reason, a.id); err != nil {
					return fmt.Errorf("write masks: update %d..%d: %w", m.Start, m.End, err)
				}
			}
			continue
		}
		since := m.Since
		if since.IsZero() {
			since = time.Now()
		}
		if _, err := tx.ExecContext(ctx,
			"INSERT INTO "+tbl+" (slot_start, slot_end, reason, source, since) VALUES (?, ?, ?, ?, ?)",
			m.Start, m.End, m.Reason, m.Source, since.UTC()); err != nil {
			return fmt.Errorf("write masks: insert %d..%d: %w", m.Start, m.End, err)
		}
	}
	var lift []int64
	for k, a := range current {
		if !wanted[k] {
			lift = append(lift, a.id)
		}
	}
	lift = append(lift, duplicates...)
	slices.Sort(lift)
	for _, id := range lift {
		if _, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET lifted_at = NOW(6) WHERE id = ?", id); err != nil {
			return fmt.Errorf("write masks: lift mask %d: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write masks: commit: %w", err)
	}
	return nil
}

func scanMasks(rows *sql.Rows, err error) ([]Mask, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Mask{}
	for rows.Next() {
		var m Mask
		var lifted sql.NullTime
		if err := rows.Scan(&m.Start, &m.End, &m.Reason, &m.Source, &m.Since, &lifted); err != nil {
			return nil, err
		}
		m.Since = m.Since.UTC()
		if lifted.Valid {
			t := lifted.Time.UTC()
			m.LiftedAt = &t
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Package shard maps a slot and a creation day to the physical table that holds a packet:
// db_xx.t_y_dd with xx = slot/10, y = slot%10 and dd the day of month (01–31). A cell may run
// fewer logical databases or tables than the full 100×10 (tests keep it small), so xx and y
// wrap modulo the layout's sizes. The mapping is pure and shared by the store (which creates
// and queries the tables) and by the breaker and the operator (which turn a failing logical
// table back into the slots it serves).
//
// It must never do I/O or hold state: every tier that places or finds a packet computes the
// same name from the same ID, and a table name computed two ways would lose packets.
package shard

import (
	"fmt"
	"time"
)

// Layout is the number of logical databases and of tables per database in one cell.
type Layout struct {
	Databases      int // default 100
	TablesPerDB    int // default 10
	DatabasePrefix string
}

// Default is the full layout of docs/design.md §2: 100 databases × 10 tables for 1000 slots.
var Default = Layout{Databases: 100, TablesPerDB: 10, DatabasePrefix: "db_"}

// Table is a logical table: a database and a table index, across every day.
type Table struct{ DB, Table int }

// Validate refuses layouts the mapping cannot serve.
func (l Layout) Validate() error {
	if l.Databases < 1 || l.Databases > 100 {
		return fmt.Errorf("shard layout: databases %d outside 1..100", l.Databases)
	}
	if l.TablesPerDB < 1 || l.TablesPerDB > 10 {
		return fmt.Errorf("shard layout: tables per database %d outside 1..10", l.TablesPerDB)
	}
	return nil
}

// Of is the logical table serving a slot.
func (l Layout) Of(slot int) Table {
	return Table{DB: (slot / 10) % l.Databases, Table: (slot % 10) % l.TablesPerDB}
}

// Slots lists the slots among [0, slotCount) that a logical table serves.
func (l Layout) Slots(t Table, slotCount int) []int {
	var out []int
	for s := 0; s < slotCount; s++ {
		if l.Of(s) == t {
			out = append(out, s)
		}
	}
	return out
}

// All lists every logical table of the layout.
func (l Layout) All() []Table {
	out := make([]Table, 0, l.Databases*l.TablesPerDB)
	for db := 0; db < l.Databases; db++ {
		for t := 0; t < l.TablesPerDB; t++ {
			out = append(out, Table{DB: db, Table: t})
		}
	}
	return out
}

// DBName is the schema name of a logical database, e.g. db_07.
func (l Layout) DBName(db int) string { return fmt.Sprintf("%s%02d", l.prefix(), db) }

// Name is the logical table's name used in metrics and error counts, e.g. db_07.t_3.
func (l Layout) Name(t Table) string { return fmt.Sprintf("%s.t_%d", l.DBName(t.DB), t.Table) }

// Physical is the day table for a logical table and a creation day: db_07.t_3_17 holds
// packets (kind "t"), or receive records with another kind prefix such as "r".
func (l Layout) Physical(kind string, t Table, created time.Time) string {
	return fmt.Sprintf("%s.%s_%d_%02d", l.DBName(t.DB), kind, t.Table, created.UTC().Day())
}

func (l Layout) prefix() string {
	if l.DatabasePrefix == "" {
		return "db_"
	}
	return l.DatabasePrefix
}

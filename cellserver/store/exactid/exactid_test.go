package exactid_test

import (
	"context"
	"regexp"
	"testing"

	"github.com/redpacketset/redpacket/cellserver/store/exactid"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestMigrateRewritesOnlyFamilyColumnsOnce(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	ours, other := m.CreateDatabase(t, "ours"), m.CreateDatabase(t, "other")
	db := m.OpenDB(t, "")
	for _, q := range []string{
		"CREATE TABLE " + ours + ".keys_1 (k VARCHAR(16) CHARACTER SET ascii NOT NULL PRIMARY KEY, note VARCHAR(16) NOT NULL, v INT NOT NULL)",
		"CREATE TABLE " + ours + ".notes (k VARCHAR(16) CHARACTER SET ascii NOT NULL PRIMARY KEY)",
		"CREATE TABLE " + other + ".keys_1 (k VARCHAR(16) CHARACTER SET ascii NOT NULL PRIMARY KEY)",
		"INSERT INTO " + ours + ".keys_1 VALUES ('alice', 'x', 1)",
		"INSERT INTO " + other + ".keys_1 VALUES ('alice')",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	fams := []exactid.Family{{Schemas: []string{ours}, Tables: regexp.MustCompile(`^keys_[0-9]+$`), Columns: map[string]string{"k": "VARBINARY(16) NOT NULL"}}}
	ctx := context.Background()
	altered, err := exactid.Migrate(ctx, db, ours, fams, 4)
	if err != nil || len(altered) != 1 || altered[0].String() != ours+".keys_1" || len(altered[0].Columns) != 1 {
		t.Fatalf("first migrate: %+v %v", altered, err)
	}
	if again, err := exactid.Migrate(ctx, db, ours, fams, 4); err != nil || len(again) != 0 {
		t.Fatalf("second migrate altered %+v (%v)", again, err)
	}
	if _, err := db.Exec("INSERT INTO " + ours + ".keys_1 VALUES ('Alice', 'y', 2)"); err != nil {
		t.Fatalf("Alice beside alice after migration: %v", err)
	}
	var v int
	if err := db.QueryRow("SELECT v FROM " + ours + ".keys_1 WHERE k = 'alice'").Scan(&v); err != nil || v != 1 {
		t.Fatalf("alice's row: %d %v", v, err)
	}
	// Columns and tables outside the families keep their collation.
	for _, c := range []struct{ schema, table, column, want string }{
		{ours, "keys_1", "note", "utf8mb4"},
		{ours, "notes", "k", "ascii"},
		{other, "keys_1", "k", "ascii"},
	} {
		var cs string
		if err := db.QueryRow("SELECT COALESCE(CHARACTER_SET_NAME, '') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
			c.schema, c.table, c.column).Scan(&cs); err != nil || cs != c.want {
			t.Fatalf("%s.%s.%s: charset %q (%v), want %q untouched", c.schema, c.table, c.column, cs, err, c.want)
		}
	}
}

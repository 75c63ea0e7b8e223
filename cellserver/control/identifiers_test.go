package control_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func errorCounts(t *testing.T, db *sql.DB, schema string, since time.Time) map[string]control.TableErrors {
	t.Helper()
	got, err := control.ReadErrorCounts(context.Background(), db, schema, since)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]control.TableErrors{}
	for _, e := range got {
		out[e.Table] = e
	}
	return out
}

// Server and logical table names are keys of the error counts; names differing only in case
// are different servers and tables, as everywhere else in the cell.
func TestErrorCountsKeepNamesDifferingInCaseApart(t *testing.T) {
	db, schema := setup(t)
	ctx := context.Background()
	w := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	for _, r := range []struct {
		server, table string
		errors        int64
	}{{"cell-a-0", "db_01.t_2", 1}, {"Cell-A-0", "db_01.t_2", 2}, {"cell-a-0", "DB_01.t_2", 4}} {
		if err := control.RecordErrors(ctx, db, schema, r.server, []control.WindowCount{{Table: r.table, WindowStart: w, Errors: r.errors, Calls: 10}}); err != nil {
			t.Fatal(err)
		}
	}
	got := errorCounts(t, db, schema, w)
	if e := got["db_01.t_2"]; len(got) != 2 || e.Servers != 2 || e.Errors != 3 || e.Calls != 20 {
		t.Fatalf("error counts %+v; want db_01.t_2 from two servers (3 errors) and DB_01.t_2 apart", got)
	}
	if e := got["DB_01.t_2"]; e.Servers != 1 || e.Errors != 4 {
		t.Fatalf("DB_01.t_2 = %+v", e)
	}
}

// A control schema created by an earlier release keeps its rows and its name columns are
// made byte-exact.
func TestEnsureSchemaMigratesOldErrorCounts(t *testing.T) {
	srv := testenv.SharedMariaDB(t)
	schema := srv.CreateDatabase(t, "ctl")
	db := srv.OpenDB(t, "")
	ctx := context.Background()
	w := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	for _, q := range []string{
		"CREATE TABLE `" + schema + "`.`table_errors` (" +
			" logical_table VARCHAR(64) NOT NULL," +
			" window_start DATETIME NOT NULL," +
			" server VARCHAR(255) NOT NULL," +
			" errors BIGINT NOT NULL DEFAULT 0," +
			" calls BIGINT NOT NULL DEFAULT 0," +
			" updated_at DATETIME(6) NOT NULL," +
			" PRIMARY KEY (logical_table, window_start, server)," +
			" KEY table_errors_window (window_start)" +
			") ENGINE=InnoDB",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := control.RecordErrors(ctx, db, schema, "cell-a-0", []control.WindowCount{{Table: "db_01.t_2", WindowStart: w, Errors: 1, Calls: 10}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := control.EnsureSchema(ctx, db, schema); err != nil {
			t.Fatalf("ensure schema %d over the old control schema: %v", i, err)
		}
	}
	if err := control.RecordErrors(ctx, db, schema, "Cell-A-0", []control.WindowCount{{Table: "db_01.t_2", WindowStart: w, Errors: 2, Calls: 10}}); err != nil {
		t.Fatal(err)
	}
	if e := errorCounts(t, db, schema, w)["db_01.t_2"]; e.Servers != 2 || e.Errors != 3 || e.Calls != 20 {
		t.Fatalf("after migration db_01.t_2 = %+v, want the old row and Cell-A-0's apart", e)
	}
	fresh := srv.CreateDatabase(t, "ctl")
	if err := control.EnsureSchema(ctx, db, fresh); err != nil {
		t.Fatal(err)
	}
	ddl := func(s string) string {
		var name, out string
		if err := db.QueryRow("SHOW CREATE TABLE `"+s+"`.`table_errors`").Scan(&name, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got, want := ddl(schema), ddl(fresh); got != want {
		t.Fatalf("table_errors after migration:\n%s\nwant:\n%s", got, want)
	}
}

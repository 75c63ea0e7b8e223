package node

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

// replicatedSet is one cell whose database runs three instances: a primary and two
// semi-synchronous replicas.
func replicatedSet() *rpv1.RedPacketSet {
	set := nodeSet()
	set.Name = "repl"
	set.Spec.Cells = 1
	set.Spec.Template.MySQL.Replicas = 3
	return set
}

// primaryFailover deletes, under load, the pod of a replicated cell's primary. The operator
// sees it gone, promotes the most advanced replica and the cell servers follow the writable
// instance; every open the client saw acknowledged must then be in the new primary with its
// amount. The recreated pod comes back read-only and replicates from the new primary.
func primaryFailover(t *testing.T, ctx context.Context, cl *cluster) {
	set := replicatedSet()
	if err := cl.c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitAvailable(t, ctx, cl, set, 1, 8*time.Minute)
	cellKey := client.ObjectKey{Namespace: set.Namespace, Name: set.CellName(0)}
	cell := &rpv1.RedPacketCell{}
	database := func() (string, *metav1.Condition, error) {
		if err := cl.c.Get(ctx, cellKey, cell); err != nil {
			return "", nil, err
		}
		primary := ""
		if cell.Status.Database != nil {
			primary = cell.Status.Database.Primary
		}
		return primary, meta.FindStatusCondition(cell.Status.Conditions, rpv1.CellDatabaseReady), nil
	}
	poll(t, "the replicated database Healthy", 3*time.Minute, func() (bool, error) {
		p, c, err := database()
		if err != nil || c == nil {
			return false, err
		}
		return p != "" && c.Status == metav1.ConditionTrue && c.Reason == dbfailover.ReasonHealthy, fmt.Errorf("primary %q, DatabaseReady %s %s: %s", p, c.Status, c.Reason, c.Message)
	})
	old, _, _ := database()
	t.Logf("set Available with primary %s and two replicas after %s", old, time.Since(start).Round(time.Second))

	gw := gatewayURL(t, ctx, cl, set)
	load := startLoad(ctx, gw, "failover", set)
	defer load.stop()
	time.Sleep(20 * time.Second)

	t.Logf("deleting the primary's pod %s", old)
	deleted := time.Now()
	cl.run(t, "delete", "pod", old, "-n", set.Namespace, "--wait=false")
	var promoted string
	poll(t, "a replica promoted and writable", 30*time.Second, func() (bool, error) {
		p, c, err := database()
		if err != nil || c == nil {
			return false, err
		}
		promoted = p
		return p != old && p != "" && c.Status == metav1.ConditionTrue, fmt.Errorf("primary %q, DatabaseReady %s %s: %s", p, c.Status, c.Reason, c.Message)
	})
	t.Logf("%s primary %s after the delete of %s", promoted, time.Since(deleted).Round(100*time.Millisecond), old)
	waitAvailable(t, ctx, cl, set, 1, 5*time.Minute)
	t.Logf("the set Available again, every pod Ready, %s after the delete", time.Since(deleted).Round(time.Second))
	time.Sleep(15 * time.Second)

	res := load.finish(t)
	refused := refusalsOnly(t, res)
	var n int64
	for _, v := range refused {
		n += v
	}
	t.Logf("%d calls refused or of unknown outcome during the failover", n)
	serves(t, ctx, gw, set, "failover-after")
	audit(t, ctx, cl, set, res.Started, res)

	// The old primary is back as a replica: read-only, replicating from the new primary.
	poll(t, "the deposed primary read-only and replicating from the new one", 3*time.Minute, func() (bool, error) {
		db := rootTo(t, ctx, cl, set, old)
		defer db.Close()
		var ro int
		if err := db.QueryRowContext(ctx, "SELECT @@global.read_only").Scan(&ro); err != nil {
			return false, err
		}
		if ro != 1 {
			t.Fatalf("the deposed primary %s came back writable", old)
		}
		rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
		if err != nil {
			return false, err
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		if !rows.Next() {
			return false, fmt.Errorf("not replicating")
		}
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return false, err
		}
		f := map[string]string{}
		for i, c := range cols {
			f[c] = string(vals[i])
		}
		if !strings.HasPrefix(f["Master_Host"], promoted+".") || f["Slave_SQL_Running"] != "Yes" {
			return false, fmt.Errorf("replicating from %s (SQL running %s)", f["Master_Host"], f["Slave_SQL_Running"])
		}
		return true, nil
	})
	var events eventsv1.EventList
	if err := cl.c.List(ctx, &events, client.InNamespace(set.Namespace)); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range events.Items {
		if e.Reason == "DatabaseFailover" && e.Regarding.Name == cellKey.Name {
			t.Logf("event: %s", e.Note)
			found = true
		}
	}
	if !found {
		t.Errorf("no DatabaseFailover event on cell %s", cellKey.Name)
	}
	deleteSet(t, ctx, cl, set)
}

// rootTo opens a database pod as root through its pod IP.
func rootTo(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet, pod string) *sql.DB {
	t.Helper()
	var p corev1.Pod
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: pod}, &p); err != nil {
		t.Fatal(err)
	}
	var sec corev1.Secret
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: set.CellName(0) + "-mysql-credentials"}, &sec); err != nil {
		t.Fatal(err)
	}
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = "root", string(sec.Data["root-password"])
	cfg.Net, cfg.Addr, cfg.Timeout = "tcp", fmt.Sprintf("%s:%d", p.Status.PodIP, controllers.MySQLPort), 5*time.Second
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	return db
}

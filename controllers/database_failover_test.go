package controllers_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/dbfailover"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func rootDB(t *testing.T, p *testenv.MariaDBProcess) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", "root@tcp("+p.Addr()+")/?timeout=2s&readTimeout=10s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func readOnly(db *sql.DB) (bool, error) {
	var ro int
	err := db.QueryRow("SELECT @@global.read_only").Scan(&ro)
	return ro == 1, err
}

// TestOperatorFailsOverAReplicatedCell: the operator, on a real apiserver, runs a cell's three
// real MariaDB instances. It opens one primary with semi-sync replicas, records the term in the
// cell's status; when the primary is killed -9 it promotes a replica holding every acknowledged
// write, says so in DatabaseReady and a DatabaseFailover event naming both, and the old primary
// comes back read-only, replicating from the new one.
func TestOperatorFailsOverAReplicatedCell(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	procs := testenv.StartReplicaSet(t, 3, func(i int) int { return int(rpv1.MySQLServerID(i)) }, dbfailover.InstanceFlags())

	set := smallSet("repl", 1)
	set.Spec.Template.MySQL.Replicas = 3
	cellName := set.CellName(0)
	// The instances' root has no password: the cell's credentials say so (the operator keeps
	// a Secret it finds).
	creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: cellName + "-mysql-credentials", Namespace: set.Namespace,
		Labels: map[string]string{rpv1.LabelManagedBy: rpv1.ManagedByOperator}},
		Data: map[string][]byte{"root-password": nil, "user": []byte("cellserver"), "password": []byte("unused")}}
	if err := c.Create(ctx, creds); err != nil {
		t.Fatal(err)
	}
	startManager(t, env, controllers.Options{DatabaseAddr: func(_ *rpv1.RedPacketCell, i int) string { return procs[i].Addr() }})
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	cellKey := client.ObjectKey{Namespace: set.Namespace, Name: cellName}
	cell := func() *rpv1.RedPacketCell {
		cl := &rpv1.RedPacketCell{}
		if err := c.Get(ctx, cellKey, cl); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return cl
	}
	primaryOf := func(cl *rpv1.RedPacketCell) int {
		if cl.Status.Database == nil || len(cl.Status.Database.Terms) == 0 {
			return -1
		}
		return int(cl.Status.Database.Terms[len(cl.Status.Database.Terms)-1].Ordinal)
	}
	healthy := func(what string) *rpv1.RedPacketCell {
		var got *rpv1.RedPacketCell
		testenv.Eventually(t, 60*time.Second, what, func() error {
			got = cell()
			cond := meta.FindStatusCondition(got.Status.Conditions, rpv1.CellDatabaseReady)
			if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != dbfailover.ReasonHealthy {
				return fmt.Errorf("DatabaseReady %+v, database %+v", cond, got.Status.Database)
			}
			return nil
		})
		return got
	}

	first := healthy("the first primary opened with its replicas")
	p0 := primaryOf(first)
	if p0 < 0 || first.Status.Database.Primary != first.MySQLPodName(p0) {
		t.Fatalf("status.database %+v", first.Status.Database)
	}
	for i, p := range procs {
		ro, err := readOnly(rootDB(t, p))
		if err != nil {
			t.Fatal(err)
		}
		if ro != (i != p0) {
			t.Fatalf("instance %d read_only=%v with primary %d", i, ro, p0)
		}
	}

	// Acknowledged writes: with semi-sync each commit returned only once a replica had it.
	primary := rootDB(t, procs[p0])
	exec := func(db *sql.DB, q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(primary, "CREATE DATABASE f")
	exec(primary, "CREATE TABLE f.acked (id INT PRIMARY KEY)")
	const acked = 200
	for i := range acked {
		exec(primary, fmt.Sprintf("INSERT INTO f.acked VALUES (%d)", i))
	}

	if err := procs[p0].Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var next *rpv1.RedPacketCell
	testenv.Eventually(t, 30*time.Second, "a replica promoted", func() error {
		next = cell()
		if p := primaryOf(next); p == p0 || p < 0 {
			return fmt.Errorf("primary still %d: %+v", p, meta.FindStatusCondition(next.Status.Conditions, rpv1.CellDatabaseReady))
		}
		cond := meta.FindStatusCondition(next.Status.Conditions, rpv1.CellDatabaseReady)
		if cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Errorf("DatabaseReady %+v", cond)
		}
		return nil
	})
	p1 := primaryOf(next)
	t.Logf("instance %d primary %s after the kill of instance %d", p1, time.Since(killed).Round(time.Millisecond), p0)
	if n := len(next.Status.Database.Terms); n != 2 || next.Status.Database.Terms[0].End == "" {
		t.Fatalf("terms after one failover: %+v", next.Status.Database.Terms)
	}
	newPrimary := rootDB(t, procs[p1])
	if ro, err := readOnly(newPrimary); err != nil || ro {
		t.Fatalf("new primary read_only=%v (%v)", ro, err)
	}
	var n int
	if err := newPrimary.QueryRow("SELECT COUNT(*) FROM f.acked").Scan(&n); err != nil || n != acked {
		t.Fatalf("new primary holds %d of %d acknowledged writes (%v)", n, acked, err)
	}
	testenv.Eventually(t, 30*time.Second, "a DatabaseFailover event naming both", func() error {
		list := &eventsv1.EventList{}
		if err := c.List(ctx, list, client.InNamespace(set.Namespace)); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Reason == "DatabaseFailover" && e.Regarding.Name == cellName && e.Type == corev1.EventTypeWarning &&
				strings.Contains(e.Note, fmt.Sprintf("primary %d", p0)) && strings.Contains(e.Note, fmt.Sprintf("instance %d", p1)) {
				return nil
			}
		}
		return fmt.Errorf("no DatabaseFailover event for %s among %d events", cellName, len(list.Items))
	})

	// The old primary returns: read-only, and a replica of the new one, never a second primary.
	if err := procs[p0].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	old := rootDB(t, procs[p0])
	testenv.Eventually(t, 60*time.Second, "the old primary replicating from the new one", func() error {
		ro, err := readOnly(old)
		if err != nil {
			return err
		}
		if !ro {
			t.Fatalf("the old primary came back writable")
		}
		var cnt int
		if err := old.QueryRow("SELECT COUNT(*) FROM f.acked").Scan(&cnt); err != nil {
			return err
		}
		exec(newPrimary, fmt.Sprintf("INSERT IGNORE INTO f.acked VALUES (%d)", acked))
		if cnt != acked+1 {
			return fmt.Errorf("old primary holds %d rows", cnt)
		}
		return nil
	})
	healthy("all three replicating again")

	// Switchover on request: back to the first instance, then a request naming no pod.
	annotate := func(v string) {
		cl := cell()
		patch := client.MergeFrom(cl.DeepCopy())
		if cl.Annotations == nil {
			cl.Annotations = map[string]string{}
		}
		cl.Annotations[rpv1.AnnotationSwitchoverTo] = v
		if err := c.Patch(ctx, cl, patch); err != nil {
			t.Fatal(err)
		}
	}
	event := func(reason string) func() error {
		return func() error {
			list := &eventsv1.EventList{}
			if err := c.List(ctx, list, client.InNamespace(set.Namespace)); err != nil {
				return err
			}
			for _, e := range list.Items {
				if e.Reason == reason && e.Regarding.Name == cellName {
					return nil
				}
			}
			return fmt.Errorf("no %s event", reason)
		}
	}
	annotate(first.MySQLPodName(p0))
	testenv.Eventually(t, 60*time.Second, "switched over back to the first instance", func() error {
		got := cell()
		if p := primaryOf(got); p != p0 {
			return fmt.Errorf("primary %d", p)
		}
		if _, left := got.Annotations[rpv1.AnnotationSwitchoverTo]; left {
			return fmt.Errorf("annotation still there")
		}
		return event("DatabaseSwitchover")()
	})
	healthy("healthy after the switchover")
	var rows int
	if err := old.QueryRow("SELECT COUNT(*) FROM f.acked").Scan(&rows); err != nil || rows != acked+1 {
		t.Fatalf("primary after the switchover holds %d rows, want %d (%v)", rows, acked+1, err)
	}
	if ro, err := readOnly(newPrimary); err != nil || !ro {
		t.Fatalf("the primary handed over from is writable: read_only=%v (%v)", ro, err)
	}
	annotate("nope")
	testenv.Eventually(t, 30*time.Second, "a switchover to no pod refused, said so, annotation removed", func() error {
		if _, left := cell().Annotations[rpv1.AnnotationSwitchoverTo]; left {
			return fmt.Errorf("annotation still there")
		}
		return event("DatabaseSwitchoverRefused")()
	})
	if p := primaryOf(cell()); p != p0 {
		t.Fatalf("a refused switchover moved the primary to %d", p)
	}
}

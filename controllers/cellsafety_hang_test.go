package controllers_test

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// hungDatabase is a TCP listener on 127.0.0.1 that accepts connections and never answers:
// a database whose host is up and whose server is stuck.
func hungDatabase(t *testing.T) (addr string, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int64{}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String(), accepted
}

// TestHungCellDatabaseDoesNotStallOtherCells (issue 11 §8): one cell's database hangs every
// call forever; another cell's failing table is still masked within a bound, because each
// cell's database calls have a deadline and cells reconcile on several workers.
func TestHungCellDatabaseDoesNotStallOtherCells(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	dbs, healthy := cellDatabases(t, "hung-cell-1")
	addr, accepted := hungDatabase(t)
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "root", "tcp", addr // no driver timeouts: only a deadline helps
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hung := sql.OpenDB(connector)
	t.Cleanup(func() { hung.Close() })
	open := func(ctx context.Context, cell *rpv1.RedPacketCell, creds *corev1.Secret) (*sql.DB, error) {
		if cell.Name == "hung-cell-0" {
			return hung, nil
		}
		return healthy(ctx, cell, creds)
	}
	startManager(t, env, controllers.Options{OpenCellDB: open, MaskPoll: 300 * time.Millisecond})

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "hung", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a", "zone-b"},
			Cells:    2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			Masking: rpv1.MaskingPolicy{
				ErrorThreshold: 5, Window: &rpv1.Duration{Duration: 30 * time.Second},
				CoolDown: &rpv1.Duration{Duration: time.Minute}, MaxMaskedPercent: 10,
			},
		},
	}
	createReady(t, ctx, c, set)
	db := dbs["hung-cell-1"]
	testenv.Eventually(t, 30*time.Second, "cell 1's control schema created", func() error {
		_, err := control.ReadMasks(ctx, db, control.DefaultSchema)
		return err
	})
	testenv.Eventually(t, 30*time.Second, "cell 0's masking poll reached its hung database", func() error {
		if accepted.Load() == 0 {
			return fmt.Errorf("no connection yet")
		}
		return nil
	})

	// Three rounds, so cell 0 hangs again and again meanwhile.
	const bound = 4 * time.Second // below the per-pass deadline: another cell waits for none
	for i, table := range []string{"db_67.t_3", "db_68.t_4", "db_69.t_5"} {
		start := time.Now()
		if err := control.RecordErrors(ctx, db, control.DefaultSchema, "server-b",
			[]control.WindowCount{{Table: table, WindowStart: time.Now(), Errors: 9, Calls: 9}}); err != nil {
			t.Fatal(err)
		}
		for {
			ms, err := control.ReadMasks(ctx, db, control.DefaultSchema)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) == i+1 {
				break
			}
			if time.Since(start) > bound {
				t.Fatalf("round %d: cell 1 not masked %s after its errors (masks %+v) while cell 0's database hangs", i, bound, ms)
			}
			time.Sleep(50 * time.Millisecond) // polling with a deadline
		}
		t.Logf("round %d: cell 1 masked %s after its errors", i, time.Since(start).Round(time.Millisecond))
	}
	// The hung cell itself is not stuck either: its pass ends at the deadline and is retried,
	// on a new connection.
	testenv.Eventually(t, 30*time.Second, "cell 0's hung pass ended by its deadline and retried", func() error {
		if n := accepted.Load(); n < 2 {
			return fmt.Errorf("cell 0's database tried %d times", n)
		}
		return nil
	})
}

// TestHungCellsDoNotHoldBackTheSetsRouting: every cell's database hangs. Before a new epoch is
// recorded the set's reconciler asks each cell which epoch its servers hold and announces the
// epoch to each; those calls run side by side, so a pass costs one deadline, not one per cell.
// One after the other, eight hung cells took 8 × 2 deadlines (32 s here) before the status
// moved, and under a loaded CI the set looked stuck.
func TestHungCellsDoNotHoldBackTheSetsRouting(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()

	addr, accepted := hungDatabase(t)
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "root", "tcp", addr
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hung := sql.OpenDB(connector)
	t.Cleanup(func() { hung.Close() })
	const deadline = 2 * time.Second
	startManager(t, env, controllers.Options{CellDBTimeout: deadline,
		OpenCellDB: func(context.Context, *rpv1.RedPacketCell, *corev1.Secret) (*sql.DB, error) { return hung, nil }})

	set := smallSet("allhung", 8)
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(set)
	testenv.Eventually(t, 30*time.Second, "epoch 1 recorded", func() error {
		if e := getSet(t, c, key).Status.Routing.CurrentEpoch; e != 1 {
			return fmt.Errorf("status at epoch %d", e)
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, "the cells' hung databases reached", func() error {
		if n := accepted.Load(); n < 8 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})

	scale(t, ctx, c, set, 9)
	// Two passes over the cells (readers, then announce) plus a reconcile already running:
	// about 3 deadlines side by side, 16 one after the other.
	bound := 8 * deadline
	start := time.Now()
	testenv.Eventually(t, bound, "epoch 2 recorded while every cell hangs", func() error {
		s := getSet(t, c, key)
		if e := s.Status.Routing.CurrentEpoch; e != 2 {
			return fmt.Errorf("status at epoch %d", e)
		}
		return nil
	})
	t.Logf("epoch 2 recorded %s after the scale-out, with every cell's database hung", time.Since(start).Round(time.Millisecond))
	testenv.Eventually(t, 30*time.Second, "the unreachable cells named", func() error {
		s := getSet(t, c, key)
		for _, cond := range s.Status.Conditions {
			if strings.Contains(cond.Message, "allhung-cell-7") {
				return nil
			}
		}
		return fmt.Errorf("no condition names the hung cells: %+v", s.Status.Conditions)
	})
}

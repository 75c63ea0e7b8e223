package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/dbfailover"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/plugin"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// markReady plays the kubelet for a cell's database and servers, which envtest does not run.
func markReady(ctx context.Context, c client.Client, cell string) error {
	sts := &appsv1.StatefulSet{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: cell + "-mysql"}, sts); err != nil {
		return err
	}
	sts.Status.Replicas, sts.Status.ReadyReplicas, sts.Status.ObservedGeneration = 1, 1, sts.Generation
	if err := c.Status().Update(ctx, sts); err != nil {
		return err
	}
	dep := &appsv1.Deployment{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: cell + "-server"}, dep); err != nil {
		return err
	}
	n := *dep.Spec.Replicas
	dep.Status.Replicas, dep.Status.ReadyReplicas, dep.Status.ObservedGeneration = n, n, dep.Generation
	dep.Status.UpdatedReplicas, dep.Status.AvailableReplicas = n, n
	return c.Status().Update(ctx, dep)
}

// cellDB is one cell's real MariaDB, reached by the operator (as root) and by the plugin with
// the credentials of the cell's Secret, as in a cluster.
type cellDB struct {
	m  *testenv.MariaDB
	db *sql.DB
}

// TestPluginOnARunningSet runs the operator on envtest with a real MariaDB per cell and drives
// the plugin's command line: status shows cells, a manual mask with its reason and source, and
// an epoch roll-out with the servers that hold it and those that do not; mask, unmask and
// drain edit the cell's control schema and refuse bad input without changing anything; audit
// passes a clean set and fails one with a packet in a cell that does not own its slot.
func TestPluginOnARunningSet(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()
	cells := map[string]*cellDB{}
	for _, name := range []string{"fest-cell-0", "fest-cell-1"} {
		m := testenv.StartMariaDB(t)
		db, err := sql.Open("mysql", m.DSN(""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		cells[name] = &cellDB{m: m, db: db}
	}
	var mu sync.Mutex
	open := func(_ context.Context, cell *rpv1.RedPacketCell, _ *corev1.Secret) (*sql.DB, error) {
		mu.Lock()
		defer mu.Unlock()
		if d, ok := cells[cell.Name]; ok {
			return d.db, nil
		}
		return nil, fmt.Errorf("no database for %s", cell.Name)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.Setup(mgr, controllers.Options{OpenCellDB: open, MaskPoll: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Start(mctx) }()
	t.Cleanup(func() { cancel(); <-done })

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "fest", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones: []string{"zone-a"}, Cells: 2,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			Template:       rpv1.CellTemplate{Shards: rpv1.ShardSpec{Databases: 2, TablesPerDatabase: 2}},
			RebalanceDelay: &rpv1.Duration{Duration: time.Hour},
		},
	}
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	layout := shard.Layout{Databases: 2, TablesPerDB: 2, DatabasePrefix: "db_"}
	for name := range cells {
		testenv.Eventually(t, 60*time.Second, name+" ready", func() error { return markReady(ctx, c, name) })
	}
	// What the cell servers do at start, and the database user of the cell's Secret.
	for name, d := range cells {
		secret := &corev1.Secret{}
		testenv.Eventually(t, 60*time.Second, "credentials of "+name, func() error {
			return c.Get(ctx, types.NamespacedName{Namespace: "default", Name: name + "-mysql-credentials"}, secret)
		})
		user, pass := string(secret.Data["user"]), string(secret.Data["password"])
		for _, q := range []string{
			fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s'", user, pass),
			fmt.Sprintf("GRANT ALL ON *.* TO '%s'@'%%'", user),
		} {
			if _, err := d.db.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if err := control.EnsureSchema(ctx, d.db, control.DefaultSchema); err != nil {
			t.Fatal(err)
		}
		st, err := store.New(d.db, store.Config{Layout: layout, CellSchema: "rp_cell"})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.EnsureSchema(ctx, time.Now()); err != nil {
			t.Fatal(err)
		}
		l, err := wallet.NewLedger(d.db, "rp_wallet")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.EnsureSchema(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dbArgs := []string{"--db-addr", "fest-cell-0=" + cells["fest-cell-0"].m.Addr(), "--db-addr", "fest-cell-1=" + cells["fest-cell-1"].m.Addr()}
	cli := func(args ...string) (int, string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(ctx, append(append([]string{"-n", "default"}, dbArgs...), args...), &out, &errOut, env.Config)
		return code, out.String(), errOut.String()
	}
	status := func() *plugin.SetStatus {
		t.Helper()
		code, out, errOut := cli("status", "fest", "-o", "json")
		if code != 0 {
			t.Fatalf("status: exit %d: %s", code, errOut)
		}
		var s plugin.SetStatus
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		return &s
	}
	report := func(cell, server string, epoch int64) {
		t.Helper()
		if err := control.ReportRoutingEpoch(ctx, cells[cell].db, control.DefaultSchema, server, epoch, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 60*time.Second, "epoch 1 in the set's status", func() error {
		s := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), s); err != nil {
			return err
		}
		if s.Status.Routing.CurrentEpoch != 1 {
			return fmt.Errorf("current epoch %d", s.Status.Routing.CurrentEpoch)
		}
		return nil
	})
	report("fest-cell-0", "fest-cell-0-server-a", 1)
	report("fest-cell-1", "fest-cell-1-server-a", 1)

	t.Run("status", func(t *testing.T) {
		s := status()
		if len(s.Cells) != 2 || s.Cells[0].Name != "fest-cell-0" || s.Cells[0].Slots != "0-499" || s.Cells[1].Slots != "500-999" {
			t.Fatalf("cells %+v", s.Cells)
		}
		for _, c := range s.Cells {
			if c.DatabaseError != "" || len(c.Reported) != 1 {
				t.Errorf("cell %s: database error %q, reported %+v", c.Name, c.DatabaseError, c.Reported)
			}
		}
		if len(s.Epochs) != 1 || s.Epochs[0].Number != 1 || s.Epochs[0].State != "in-force" || len(s.Epochs[0].HeldBy) != 2 || len(s.Epochs[0].NotHeldBy) != 0 {
			t.Fatalf("epochs %+v", s.Epochs)
		}
		code, out, errOut := cli("status", "fest")
		if code != 0 || !strings.Contains(out, "fest-cell-1-server-a=1") || !strings.Contains(out, "in-force") {
			t.Fatalf("status table: exit %d\n%s%s", code, out, errOut)
		}
	})

	// db_01.t_1 serves the slots whose tens and units digits are odd.
	t.Run("mask and unmask", func(t *testing.T) {
		code, out, errOut := cli("mask", "fest-cell-0", "db_01.t_1", "--reason", "maintenance OPS-123")
		if code != 0 {
			t.Fatalf("mask: exit %d: %s%s", code, out, errOut)
		}
		masks, err := control.ReadMasks(ctx, cells["fest-cell-0"].db, control.DefaultSchema)
		if err != nil {
			t.Fatal(err)
		}
		if len(masks) != 125 || masks[0].Start != 11 || masks[0].End != 11 || masks[0].Source != control.SourceManual || masks[0].Reason != "maintenance OPS-123" {
			t.Fatalf("%d masks, first %+v; want the 125 slots of db_01.t_1 in 0-499, manual", len(masks), masks[0])
		}
		s := status()
		if len(s.Masks) != 125 || s.Masks[0].Cell != "fest-cell-0" || s.Masks[0].Slots != "11" || s.Masks[0].Table != "db_01.t_1" ||
			s.Masks[0].Source != "manual" || s.Masks[0].Reason != "maintenance OPS-123" || time.Since(s.Masks[0].Since) > time.Minute {
			t.Fatalf("status masks: %d, first %+v", len(s.Masks), s.Masks[0])
		}
		// The operator carries the manual mask into the set's status (and the routing table).
		testenv.Eventually(t, 60*time.Second, "manual mask in the set's status", func() error {
			got := &rpv1.RedPacketSet{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
				return err
			}
			if got.Status.MaskedSlotCount != 125 {
				return fmt.Errorf("maskedSlotCount %d", got.Status.MaskedSlotCount)
			}
			return nil
		})

		for _, bad := range [][]string{
			{"mask", "fest-cell-0", "db_01.t_1"},                               // no reason
			{"mask", "fest-cell-0", "nonsense", "--reason", "x"},               // no such table
			{"mask", "fest-cell-0", "db_05.t_0", "--reason", "x"},              // outside the layout
			{"mask", "fest-cell-0", "db_00.t_0", "--reason", "x", "-o", "xml"}, // bad output
		} {
			code, _, errOut := cli(bad...)
			if code != 2 || errOut == "" {
				t.Errorf("%v: exit %d (%q), want 2 with a message", bad, code, errOut)
			}
		}
		if after, _ := control.ReadMasks(ctx, cells["fest-cell-0"].db, control.DefaultSchema); len(after) != 125 {
			t.Fatalf("refused commands changed the masks: %d", len(after))
		}

		if code, out, errOut := cli("unmask", "fest-cell-0", "db_01.t_1", "-o", "json"); code != 0 || !strings.Contains(out, `"11"`) {
			t.Fatalf("unmask: exit %d: %s%s", code, out, errOut)
		}
		if after, _ := control.ReadMasks(ctx, cells["fest-cell-0"].db, control.DefaultSchema); len(after) != 0 {
			t.Fatalf("after unmask: %+v", after)
		}
	})

	t.Run("drain", func(t *testing.T) {
		if code, _, errOut := cli("drain", "fest-cell-1", "--reason", "move off rack 7"); code != 0 {
			t.Fatalf("drain: %s", errOut)
		}
		masks, _ := control.ReadMasks(ctx, cells["fest-cell-1"].db, control.DefaultSchema)
		if len(masks) != 1 || masks[0].Start != 500 || masks[0].End != 999 || masks[0].Reason != plugin.DrainReasonPrefix+"move off rack 7" {
			t.Fatalf("drain masks %+v", masks)
		}
		// A table's unmask cannot cut a drain mask in pieces.
		if code, _, errOut := cli("unmask", "fest-cell-1", "db_01.t_1"); code != 2 || !strings.Contains(errOut, "drain --undo") {
			t.Fatalf("unmask inside a drain: exit %d %q", code, errOut)
		}
		if code, _, errOut := cli("drain", "fest-cell-1", "--undo"); code != 0 {
			t.Fatalf("drain --undo: %s", errOut)
		}
		if masks, _ := control.ReadMasks(ctx, cells["fest-cell-1"].db, control.DefaultSchema); len(masks) != 0 {
			t.Fatalf("after undo: %+v", masks)
		}
	})

	t.Run("audit", func(t *testing.T) {
		wrap := func(cell string, slot int, id string) {
			t.Helper()
			st, err := store.New(cells[cell].db, store.Config{Layout: layout, CellSchema: "rp_cell"})
			if err != nil {
				t.Fatal(err)
			}
			svc := packet.New(st, &storetest.IDs{}, packet.Config{})
			if _, _, err := svc.Wrap(ctx, packet.WrapRequest{Sender: "s", RequestID: id, TotalCents: 100, Count: 2, Kind: packet.KindRandom}, slot); err != nil {
				t.Fatal(err)
			}
		}
		wrap("fest-cell-0", 10, "r-own")
		if code, out, errOut := cli("audit", "fest", "--drain-timeout", "5s"); code != 0 || !strings.Contains(out, "AUDIT fest: OK") {
			t.Fatalf("audit of a clean set: exit %d\n%s%s", code, out, errOut)
		}
		wrap("fest-cell-0", 600, "r-foreign") // slot 600 belongs to cell 1
		code, out, _ := cli("audit", "fest", "--drain-timeout", "5s", "-o", "json")
		var res plugin.AuditResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("audit -o json: %v\n%s", err, out)
		}
		if code != 1 || res.OK || len(res.Violations) != 1 || !strings.Contains(res.Violations[0], "slot 600") {
			t.Fatalf("audit of a misplaced packet: exit %d, %+v", code, res)
		}
	})
	t.Run("epoch roll-out", func(t *testing.T) {
		// A third cell an hour from now: epoch 2 is pending; one server has loaded it.
		got := &rpv1.RedPacketSet{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(set), got); err != nil {
			t.Fatal(err)
		}
		got.Spec.Cells = 3
		if err := c.Update(ctx, got); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 60*time.Second, "epoch 2 scheduled", func() error {
			s := &rpv1.RedPacketSet{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(set), s); err != nil {
				return err
			}
			if s.Status.Routing.CurrentEpoch != 2 {
				return fmt.Errorf("current epoch %d", s.Status.Routing.CurrentEpoch)
			}
			// The routing status can move before the third cell object exists.
			cells := &rpv1.RedPacketCellList{}
			if err := c.List(ctx, cells, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
				return err
			}
			if len(cells.Items) != 3 {
				return fmt.Errorf("%d cell objects", len(cells.Items))
			}
			return nil
		})
		// Servers re-report every 10 s; cell 1's server is still on epoch 1.
		report("fest-cell-0", "fest-cell-0-server-a", 2)
		report("fest-cell-1", "fest-cell-1-server-a", 1)
		s := status()
		if len(s.Epochs) != 2 {
			t.Fatalf("epochs %+v", s.Epochs)
		}
		e1, e2 := s.Epochs[0], s.Epochs[1]
		if e1.State != "in-force" || len(e1.HeldBy) != 2 {
			t.Errorf("epoch 1: %+v", e1)
		}
		if e2.State != "pending" || strings.Join(e2.HeldBy, ",") != "fest-cell-0-server-a" || strings.Join(e2.NotHeldBy, ",") != "fest-cell-1-server-a" {
			t.Errorf("epoch 2: %+v, want pending, held by fest-cell-0-server-a only", e2)
		}
		// The new cell's database is not reachable from here: its line says so, the rest stands.
		if len(s.Cells) != 3 || s.Cells[2].DatabaseError == "" {
			t.Errorf("third cell %+v", s.Cells)
		}
		code, out, _ := cli("status", "fest")
		if code != 0 || !strings.Contains(out, "pending") || !strings.Contains(out, "database unreadable") {
			t.Errorf("status table during a roll-out: exit %d\n%s", code, out)
		}
	})
}

// TestPluginSwitchover: `kubectl redpacket switchover` asks the operator, running a replicated
// cell on three real MariaDB instances, to hand the primary role to another pod, waits, and
// prints the outcome; a request naming no pod, or the primary itself, is refused with exit 2
// and changes nothing.
func TestPluginSwitchover(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()
	procs := testenv.StartReplicaSet(t, 3, func(i int) int { return int(rpv1.MySQLServerID(i)) }, dbfailover.InstanceFlags())
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "sw", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones: []string{"zone-a"}, Cells: 1,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			Template:       rpv1.CellTemplate{MySQL: rpv1.MySQLSpec{Replicas: 3}},
			RebalanceDelay: &rpv1.Duration{Duration: time.Hour},
		},
	}
	cellName := set.CellName(0)
	// The instances' root has no password, and the operator keeps a Secret it finds.
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: cellName + "-mysql-credentials", Namespace: "default",
		Labels: map[string]string{rpv1.LabelManagedBy: rpv1.ManagedByOperator}},
		Data: map[string][]byte{"root-password": nil, "user": []byte("cellserver"), "password": []byte("unused")}}); err != nil {
		t.Fatal(err)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	noControlSchema := func(_ context.Context, cell *rpv1.RedPacketCell, _ *corev1.Secret) (*sql.DB, error) {
		return nil, fmt.Errorf("%s: no control schema in this test", cell.Name)
	}
	if err := controllers.Setup(mgr, controllers.Options{OpenCellDB: noControlSchema,
		DatabaseAddr: func(_ *rpv1.RedPacketCell, i int) string { return procs[i].Addr() }}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Start(mctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := c.Create(ctx, set); err != nil {
		t.Fatal(err)
	}
	cell := &rpv1.RedPacketCell{}
	testenv.Eventually(t, 60*time.Second, "a primary opened", func() error {
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: cellName}, cell); err != nil {
			return err
		}
		if cell.Status.Database == nil || cell.Status.Database.Primary == "" {
			return fmt.Errorf("status.database %+v", cell.Status.Database)
		}
		return nil
	})
	from := cell.Status.Database.Primary
	plug := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(ctx, append([]string{"-n", "default"}, args...), &out, &errOut, env.Config)
		return code, out.String(), errOut.String()
	}
	for _, bad := range []struct{ to, want string }{{"9", "names none of cell"}, {from, "already"}} {
		if code, _, errOut := plug("switchover", cellName, "--to", bad.to); code != 2 || !strings.Contains(errOut, bad.want) {
			t.Fatalf("switchover --to %s: exit %d, %q; want 2 and %q", bad.to, code, errOut, bad.want)
		}
	}
	code, out, errOut := plug("switchover", cellName, "--to", "2", "--timeout", "60s")
	if code != 0 || !strings.Contains(out, cellName+"-mysql-2") || !strings.Contains(out, from) {
		t.Fatalf("switchover: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("switchover:\n%s", out)
	if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: cellName}, cell); err != nil {
		t.Fatal(err)
	}
	if got := cell.Status.Database.Primary; got != cellName+"-mysql-2" || len(cell.Status.Database.Terms) != 2 {
		t.Fatalf("after the switchover: primary %s, %d terms", got, len(cell.Status.Database.Terms))
	}
	var ro int
	db, err := sql.Open("mysql", "root@tcp("+procs[2].Addr()+")/")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	testenv.Eventually(t, 30*time.Second, "pod 2 writable", func() error {
		if err := db.QueryRow("SELECT @@global.read_only").Scan(&ro); err != nil || ro != 0 {
			return fmt.Errorf("read_only=%d (%v)", ro, err)
		}
		return nil
	})

	// The operator refuses a switchover to a dead instance; the plugin says why, exit 1.
	if err := procs[1].Kill(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = plug("switchover", cellName, "--to", "1", "--timeout", "60s")
	if code != 1 || !strings.Contains(errOut, "unreachable") {
		t.Fatalf("switchover to a dead instance: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("refused: %s", strings.TrimSpace(errOut))
}

package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

// databasePoll is how often a replicated cell's database is reconciled: with the failover
// policy's 2 s of unreachability, a lost primary is replaced within about 5 s of its loss.
const databasePoll = 2 * time.Second

// DatabaseAddr gives the host:port of a cell's i-th database instance.
type DatabaseAddr func(cell *rpv1.RedPacketCell, i int) string

// podDatabaseAddr reaches a database pod through the cell's headless Service.
func podDatabaseAddr(cell *rpv1.RedPacketCell, i int) string {
	return fmt.Sprintf("%s:%d", cell.MySQLHost(i), MySQLPort)
}

// cellDatabases keeps one failover Manager per replicated cell, so what it has seen (how long
// an instance has been unreachable, a replica's progress) lasts across reconciles. The
// decisions themselves are internal/dbfailover's, the same code the local SET runs.
type cellDatabases struct {
	mu   sync.Mutex
	byID map[types.UID]*cellDatabase
}

type cellDatabase struct {
	mgr       *dbfailover.Manager
	instances int
	rootPW    string
	// on is the object the Manager's events are recorded on: the cell as last reconciled.
	on atomic.Pointer[rpv1.RedPacketCell]
}

func (c *cellDatabases) forget(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.byID[uid]; ok {
		d.mgr.Close()
		delete(c.byID, uid)
	}
}

// reconcileDatabase runs the failover logic of a replicated cell once: it opens the first
// primary, keeps the replicas replicating with semi-sync, fences and replaces a lost primary,
// and returns what it decided. The history it rests on lives in the cell's status, read from
// and written to the API server directly: a decision from a stale cache could reopen a
// deposed primary.
func (r *CellReconciler) reconcileDatabase(ctx context.Context, cell *rpv1.RedPacketCell) (dbfailover.Decision, error) {
	d, err := r.databaseFor(ctx, cell)
	if err != nil {
		return dbfailover.Decision{}, err
	}
	d.on.Store(cell)
	if to, ok := cell.Annotations[rpv1.AnnotationSwitchoverTo]; ok {
		r.switchover(ctx, cell, d, to)
	}
	return d.mgr.Reconcile(ctx)
}

// switchover carries out a requested switchover once: whatever the outcome, the annotation is
// removed (a refused request is not retried behind the SRE's back) and an event says what
// happened. The Manager's own DatabaseSwitchover event reports a success.
func (r *CellReconciler) switchover(ctx context.Context, cell *rpv1.RedPacketCell, d *cellDatabase, to string) {
	i, err := switchoverTarget(cell, to)
	if err == nil {
		err = d.mgr.Switchover(ctx, i)
	}
	if err != nil {
		EventSwitchoverRefused.emit(r.Recorder, cell, to, err)
	}
	patch := client.MergeFrom(cell.DeepCopy())
	delete(cell.Annotations, rpv1.AnnotationSwitchoverTo)
	if perr := r.Client.Patch(ctx, cell, patch); perr != nil {
		log.FromContext(ctx).Error(perr, "remove the switchover annotation", "cell", cell.Name)
	}
}

// switchoverTarget reads the annotation's value: one of the cell's database pods, by name or
// by ordinal.
func switchoverTarget(cell *rpv1.RedPacketCell, to string) (int, error) {
	if i, ok := cell.MySQLOrdinal(to); ok {
		return i, nil
	}
	return 0, fmt.Errorf("%s=%q names none of the cell's database pods (%s)", rpv1.AnnotationSwitchoverTo, to, cell.MySQLPodRange())
}

func (r *CellReconciler) databaseFor(ctx context.Context, cell *rpv1.RedPacketCell) (*cellDatabase, error) {
	creds := &corev1.Secret{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLSecretName()}, creds); err != nil {
		return nil, fmt.Errorf("read credentials of cell %s: %w", cell.Name, err)
	}
	rootPW, appUser := string(creds.Data["root-password"]), string(creds.Data["user"])
	n := cell.MySQLInstances()
	r.databases.mu.Lock()
	defer r.databases.mu.Unlock()
	if d, ok := r.databases.byID[cell.UID]; ok && d.instances == n && d.rootPW == rootPW {
		return d, nil
	} else if ok {
		d.mgr.Close()
	}
	addr := r.DatabaseAddr
	if addr == nil {
		addr = podDatabaseAddr
	}
	eps := make([]dbfailover.Endpoint, n)
	for i := range eps {
		eps[i] = dbfailover.Endpoint{Addr: addr(cell, i), ServerID: rpv1.MySQLServerID(i)}
	}
	d := &cellDatabase{instances: n, rootPW: rootPW}
	key := client.ObjectKeyFromObject(cell)
	d.mgr = &dbfailover.Manager{
		Cell: dbfailover.Cell{
			Name: cell.Namespace + "/" + cell.Name, Instances: eps,
			AdminDSN: func(addr string) string {
				cfg := mysql.NewConfig()
				cfg.User, cfg.Passwd, cfg.Net, cfg.Addr = "root", rootPW, "tcp", addr
				cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = 2*time.Second, 15*time.Second, 5*time.Second
				return cfg.FormatDSN()
			},
			// Replicas log in to their source as root: the image creates root@'%' with the
			// cell's generated password, and no other user exists on every instance.
			ReplUser: "root", ReplPassword: rootPW, AppUser: appUser,
		},
		Store: &statusHistory{api: r.APIReader, c: r.Client, key: key},
		Log:   slog.New(logr.ToSlogHandler(log.FromContext(ctx).WithValues("cell", cell.Name))),
		Now:   r.Now,
	}
	d.mgr.OnEvent = func(e dbfailover.Event) {
		if on := d.on.Load(); on != nil {
			databaseEvent(e).emit(r.Recorder, on, e.Message)
		}
	}
	if r.databases.byID == nil {
		r.databases.byID = map[types.UID]*cellDatabase{}
	}
	r.databases.byID[cell.UID] = d
	return d, nil
}

// databaseEvent turns the failover logic's event into a Kubernetes Event on the cell.
func databaseEvent(e dbfailover.Event) event {
	typ := corev1.EventTypeNormal
	if e.Warning {
		typ = corev1.EventTypeWarning
	}
	return event{Type: typ, Reason: "Database" + e.Reason, Action: "Database", Message: "%s"}
}

// statusHistory keeps a cell's database History in its status. Load reads from the API server
// (a quorum read), never the cache; Save writes with the object's resourceVersion, so two
// writers can never both believe they recorded a term.
type statusHistory struct {
	api client.Reader
	c   client.Client
	key types.NamespacedName
}

func (s *statusHistory) LoadHistory(ctx context.Context) (dbfailover.History, error) {
	cell := &rpv1.RedPacketCell{}
	if err := s.api.Get(ctx, s.key, cell); err != nil {
		return dbfailover.History{}, fmt.Errorf("read cell %s: %w", s.key, err)
	}
	return historyFromStatus(cell.Status.Database)
}

func (s *statusHistory) SaveHistory(ctx context.Context, h dbfailover.History) error {
	cell := &rpv1.RedPacketCell{}
	if err := s.api.Get(ctx, s.key, cell); err != nil {
		return fmt.Errorf("read cell %s: %w", s.key, err)
	}
	cell.Status.Database = historyToStatus(h, cell)
	if err := s.c.Status().Update(ctx, cell); err != nil {
		return fmt.Errorf("record the database history of cell %s: %w", s.key, err)
	}
	return nil
}

// historyFromStatus reads the failover logic's History from the cell's status. A position that
// does not parse is an error: no decision is made from a history the operator cannot read.
func historyFromStatus(st *rpv1.CellDatabaseStatus) (dbfailover.History, error) {
	var h dbfailover.History
	if st == nil {
		return h, nil
	}
	for _, t := range st.Terms {
		start, err := dbfailover.ParsePosition(t.Start)
		if err != nil {
			return h, fmt.Errorf("status.database.terms[%d].start: %w", t.Number, err)
		}
		term := dbfailover.Term{Number: int(t.Number), Primary: int(t.Ordinal), ServerID: uint32(t.ServerID), Start: start, At: t.At.Time}
		if t.End != "" {
			if term.End, err = dbfailover.ParsePosition(t.End); err != nil {
				return h, fmt.Errorf("status.database.terms[%d].end: %w", t.Number, err)
			}
		}
		h.Terms = append(h.Terms, term)
	}
	for k, why := range st.Refused {
		i, err := strconv.Atoi(k)
		if err != nil {
			return h, fmt.Errorf("status.database.refused: key %q is not a pod ordinal", k)
		}
		if h.Refused == nil {
			h.Refused = map[int]string{}
		}
		h.Refused[i] = why
	}
	if st.SemiSyncOffSince != nil {
		h.SemiSyncOff = st.SemiSyncOffSince.Time
	}
	return h, nil
}

// historyToStatus is historyFromStatus's inverse; Primary names the open term's pod.
func historyToStatus(h dbfailover.History, cell *rpv1.RedPacketCell) *rpv1.CellDatabaseStatus {
	st := &rpv1.CellDatabaseStatus{}
	for _, t := range h.Terms {
		dt := rpv1.DatabaseTerm{Number: int32(t.Number), Ordinal: int32(t.Primary), ServerID: int64(t.ServerID), Start: t.Start.String(), At: metav1.NewTime(t.At)}
		if t.End != nil {
			dt.End = t.End.String()
		}
		st.Terms = append(st.Terms, dt)
	}
	if cur, ok := h.Current(); ok {
		st.Primary = cell.MySQLPodName(cur.Primary)
	}
	for i, why := range h.Refused {
		if st.Refused == nil {
			st.Refused = map[string]string{}
		}
		st.Refused[strconv.Itoa(i)] = why
	}
	if !h.SemiSyncOff.IsZero() {
		t := metav1.NewTime(h.SemiSyncOff)
		st.SemiSyncOffSince = &t
	}
	return st
}

package controllers

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

func testCell() *rpv1.RedPacketCell {
	return &rpv1.RedPacketCell{
		ObjectMeta: metav1.ObjectMeta{Name: "rp-cell-0", Namespace: "ns", Generation: 3},
		Spec:       rpv1.RedPacketCellSpec{SetName: "rp", Servers: 6},
	}
}

func readySts(ready int32) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "rp-cell-0-mysql", Namespace: "ns", Generation: 1},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(int32(1))}, Status: appsv1.StatefulSetStatus{ReadyReplicas: ready, ObservedGeneration: 1}}
}

func readyDep(ready int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "rp-cell-0-server", Namespace: "ns", Generation: 1},
		Status: appsv1.DeploymentStatus{Replicas: 6, ReadyReplicas: ready, ObservedGeneration: 1, Conditions: conds}}
}

var (
	forbiddenPods = appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
		Message: `pods "rp-cell-0-server-x" is forbidden: violates PodSecurity "restricted:latest"`}
	pastDeadline = appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
		Message: `ReplicaSet "rp-cell-0-server-x" has timed out progressing.`}
)

// TestDecideCellStatusFailures: every way a cell's children can be is one row; a failure that waiting
// does not cure wins over "not ready yet".
func TestDecideCellStatusFailures(t *testing.T) {
	stsForbidden := readySts(0)
	stsForbidden.Status.Conditions = []appsv1.StatefulSetCondition{{Type: "ReplicaFailure", Status: corev1.ConditionTrue, Reason: "FailedCreate", Message: "pods forbidden by quota"}}
	cases := []struct {
		name                    string
		obs                     cellObservation
		db, servers, available  string // reasons
		provisioned             metav1.ConditionStatus
		messageHas              string // in Available's message
		observedGenerationMoves bool
	}{
		{"nothing yet", cellObservation{}, rpv1.ReasonDatabaseMissing, rpv1.ReasonServersMissing, rpv1.ReasonDependenciesNotReady, metav1.ConditionTrue, "", true},
		{"all ready", cellObservation{mysql: readySts(1), servers: readyDep(6)}, rpv1.ReasonReady, rpv1.ReasonReady, rpv1.ReasonReady, metav1.ConditionTrue, "", true},
		{"servers coming up", cellObservation{mysql: readySts(1), servers: readyDep(2)}, rpv1.ReasonReady, rpv1.ReasonServersNotReady, rpv1.ReasonServersNotReady, metav1.ConditionTrue, "2/6", true},
		{"database coming up", cellObservation{mysql: readySts(0), servers: readyDep(0)}, rpv1.ReasonDatabaseNotReady, rpv1.ReasonServersNotReady, rpv1.ReasonDatabaseNotReady, metav1.ConditionTrue, "", true},
		{"server pods forbidden", cellObservation{mysql: readySts(1), servers: readyDep(0, forbiddenPods)}, rpv1.ReasonReady, rpv1.ReasonPodsNotCreated, rpv1.ReasonPodsNotCreated, metav1.ConditionTrue, "Deployment ns/rp-cell-0-server cannot create its pods (0/6 servers ready): FailedCreate: pods \"rp-cell-0-server-x\" is forbidden", true},
		{"database pods forbidden", cellObservation{mysql: stsForbidden, servers: readyDep(0)}, rpv1.ReasonPodsNotCreated, rpv1.ReasonServersNotReady, rpv1.ReasonPodsNotCreated, metav1.ConditionTrue, "StatefulSet ns/rp-cell-0-mysql cannot create its pods: FailedCreate: pods forbidden by quota", true},
		{"rollout past its deadline", cellObservation{mysql: readySts(1), servers: readyDep(3, pastDeadline)}, rpv1.ReasonReady, rpv1.ReasonRolloutStuck, rpv1.ReasonRolloutStuck, metav1.ConditionTrue, "ProgressDeadlineExceeded", true},
		{"ready despite an old failure condition", cellObservation{mysql: readySts(1), servers: readyDep(6, forbiddenPods)}, rpv1.ReasonReady, rpv1.ReasonReady, rpv1.ReasonReady, metav1.ConditionTrue, "", true},
		{"database pod crash-looping", cellObservation{mysql: readySts(0), servers: readyDep(0), pods: []corev1.Pod{crashing("rp-cell-0-mysql-0", rpv1.ComponentMySQL)}},
			rpv1.ReasonPodsFailing, rpv1.ReasonServersNotReady, rpv1.ReasonPodsFailing, metav1.ConditionTrue, "StatefulSet ns/rp-cell-0-mysql: pod rp-cell-0-mysql-0 container c: CrashLoopBackOff", true},
		{"server pod unschedulable", cellObservation{mysql: readySts(1), servers: readyDep(5), pods: []corev1.Pod{unschedulable("rp-cell-0-server-a", rpv1.ComponentServer)}},
			rpv1.ReasonReady, rpv1.ReasonPodsFailing, rpv1.ReasonPodsFailing, metav1.ConditionTrue, "pod rp-cell-0-server-a is unschedulable: 0/1 nodes", true},
		{"a ready database ignores a crashing replica pod", cellObservation{mysql: readySts(1), servers: readyDep(6), pods: []corev1.Pod{crashing("rp-cell-0-mysql-1", rpv1.ComponentMySQL)}},
			rpv1.ReasonReady, rpv1.ReasonReady, rpv1.ReasonReady, metav1.ConditionTrue, "", true},
		// Replicated: the failover logic's verdict, not pod readiness, says whether the cell
		// has a writable database.
		{"replicated, primary writable while no pod reports ready", cellObservation{mysql: readySts(0), servers: readyDep(6),
			database: &dbfailover.Decision{Ready: true, Reason: dbfailover.ReasonHealthy, Message: "primary 1 writable; every replica replicating"}},
			dbfailover.ReasonHealthy, rpv1.ReasonReady, rpv1.ReasonReady, metav1.ConditionTrue, "", true},
		{"replicated, primary lost", cellObservation{mysql: readySts(2), servers: readyDep(6),
			database: &dbfailover.Decision{Reason: dbfailover.ReasonPrimaryLost, Message: "primary 0 unreachable for 1s"}},
			dbfailover.ReasonPrimaryLost, rpv1.ReasonReady, rpv1.ReasonDatabaseNotReady, metav1.ConditionTrue, "PrimaryLost: primary 0 unreachable", true},
		{"replicated, a step failed", cellObservation{mysql: readySts(2), servers: readyDep(6),
			database: &dbfailover.Decision{Reason: dbfailover.ReasonBlocked, Message: "no replica may take over"}, databaseErr: "repoint: access denied"},
			dbfailover.ReasonBlocked, rpv1.ReasonReady, rpv1.ReasonDatabaseNotReady, metav1.ConditionTrue, "last step failed: repoint: access denied", true},
		{"replicated, every database pod crash-looping", cellObservation{mysql: readySts(0), servers: readyDep(6), pods: []corev1.Pod{crashing("rp-cell-0-mysql-0", rpv1.ComponentMySQL)},
			database: &dbfailover.Decision{Reason: dbfailover.ReasonPrimaryLost, Message: "primary 0 unreachable"}},
			rpv1.ReasonPodsFailing, rpv1.ReasonReady, rpv1.ReasonPodsFailing, metav1.ConditionTrue, "CrashLoopBackOff", true},
		{"a child refused", cellObservation{applyFailed: `mysql statefulset: apply StatefulSet ns/rp-cell-0-mysql: StatefulSet.apps "rp-cell-0-mysql" is invalid`},
			rpv1.ReasonDatabaseMissing, rpv1.ReasonServersMissing, rpv1.ReasonApplyFailed, metav1.ConditionFalse, "apply StatefulSet ns/rp-cell-0-mysql: StatefulSet.apps \"rp-cell-0-mysql\" is invalid", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cell := testCell()
			decideCellStatus(cell, tc.obs)
			got := func(typ string) *metav1.Condition {
				c := meta.FindStatusCondition(cell.Status.Conditions, typ)
				if c == nil {
					t.Fatalf("no %s condition", typ)
				}
				if c.Reason == "" || c.ObservedGeneration != 3 {
					t.Errorf("%s: reason %q, observedGeneration %d", typ, c.Reason, c.ObservedGeneration)
				}
				return c
			}
			if r := got(rpv1.CellDatabaseReady).Reason; r != tc.db {
				t.Errorf("DatabaseReady reason %s, want %s", r, tc.db)
			}
			if r := got(rpv1.CellServersReady).Reason; r != tc.servers {
				t.Errorf("ServersReady reason %s, want %s", r, tc.servers)
			}
			avail := got(rpv1.CellAvailable)
			if avail.Reason != tc.available || !strings.Contains(avail.Message, tc.messageHas) {
				t.Errorf("Available %s %q, want %s containing %q", avail.Reason, avail.Message, tc.available, tc.messageHas)
			}
			if s := got(rpv1.CellProvisioned).Status; s != tc.provisioned {
				t.Errorf("Provisioned %s, want %s", s, tc.provisioned)
			}
			got(rpv1.CellCacheReady)
			if moved := cell.Status.ObservedGeneration == 3; moved != tc.observedGenerationMoves {
				t.Errorf("observedGeneration %d", cell.Status.ObservedGeneration)
			}
		})
	}
}

func crashing(name, component string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{rpv1.LabelComponent: component}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", RestartCount: 4,
			State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 40s"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Error", ExitCode: 1}}}}}}
}

func unschedulable(name, component string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{rpv1.LabelComponent: component}},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available: 1 Insufficient memory."}}}}
}

// TestPodTrouble: only what waiting does not cure counts, ready and deleting pods never, and
// the account is stable (by pod name) with a count of the rest.
func TestPodTrouble(t *testing.T) {
	ready := crashing("a-ready", rpv1.ComponentServer)
	ready.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	starting := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a-starting", Labels: map[string]string{rpv1.LabelComponent: rpv1.ComponentServer}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}}}}
	deleting := crashing("a-deleting", rpv1.ComponentServer)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	pull := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "b-pull", Labels: map[string]string{rpv1.LabelComponent: rpv1.ComponentServer}},
		Status: corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{{Name: "init", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "no such image"}}}}}}
	for _, tc := range []struct {
		name string
		pods []corev1.Pod
		want string
	}{
		{"none", nil, ""},
		{"ready, starting and deleting pods are fine", []corev1.Pod{ready, starting, deleting}, ""},
		{"another component's trouble is not this one's", []corev1.Pod{crashing("m", rpv1.ComponentMySQL)}, ""},
		{"an init container that cannot pull", []corev1.Pod{starting, pull}, "pod b-pull container init: ImagePullBackOff: no such image"},
		{"first by name, with the count of the rest", []corev1.Pod{pull, crashing("a-crash", rpv1.ComponentServer)},
			"pod a-crash container c: CrashLoopBackOff: back-off 40s (last exit: Error, code 1, 4 restarts) (and 1 more)"},
	} {
		if got := podTrouble(tc.pods, rpv1.ComponentServer); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func cellWith(name string, gen, observed int64, conds ...metav1.Condition) rpv1.RedPacketCell {
	c := rpv1.RedPacketCell{ObjectMeta: metav1.ObjectMeta{Name: name, Generation: gen}}
	c.Status.ObservedGeneration = observed
	c.Status.Conditions = conds
	return c
}

func availCond(s metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: rpv1.CellAvailable, Status: s, Reason: reason, Message: msg}
}

// TestRollUpCells: the set's Available, Degraded and Progressing from its cells. A cell that
// cannot be provisioned is never "up to date", and it shows whether or not the newest epoch
// still names it.
func TestRollUpCells(t *testing.T) {
	ready := availCond(metav1.ConditionTrue, rpv1.ReasonReady, "ok")
	refused := metav1.Condition{Type: rpv1.CellProvisioned, Status: metav1.ConditionFalse, Reason: rpv1.ReasonApplyFailed,
		Message: "mysql statefulset: apply StatefulSet ns/a-mysql: spec.volumeClaimTemplates[0].spec.resources[storage]: Invalid value: \"-10Gi\""}
	latest := []string{"a", "b"}
	cases := []struct {
		name                         string
		cells                        []rpv1.RedPacketCell
		available, degraded, progres string // "Status/Reason"
		messageHas                   string // in Degraded's and, for failures, Progressing's message
	}{
		{"all ready", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready), cellWith("b", 1, 1, ready)},
			"True/AllCellsAvailable", "False/AllCellsAvailable", "False/UpToDate", ""},
		{"one missing", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready)},
			"False/CellsUnavailable", "False/AllCellsAvailable", "True/CellsProgressing", ""},
		{"one not observed", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready), cellWith("b", 2, 1, availCond(metav1.ConditionFalse, rpv1.ReasonServersNotReady, "0/6"))},
			"False/CellsUnavailable", "False/AllCellsAvailable", "True/CellsProgressing", ""},
		{"one not ready", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready), cellWith("b", 1, 1, availCond(metav1.ConditionFalse, rpv1.ReasonServersNotReady, "0/6 servers ready"))},
			"False/CellsUnavailable", "True/CellsUnavailable", "False/UpToDate", "b (ServersNotReady: 0/6 servers ready)"},
		{"a child refused (never observed)", []rpv1.RedPacketCell{cellWith("a", 1, 0, refused, availCond(metav1.ConditionFalse, rpv1.ReasonApplyFailed, refused.Message)), cellWith("b", 1, 1, ready)},
			"False/CellsUnavailable", "True/ProvisioningFailed", "False/ProvisioningFailed", `a (ApplyFailed: mysql statefulset: apply StatefulSet ns/a-mysql`},
		{"pods forbidden", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready), cellWith("b", 1, 1, availCond(metav1.ConditionFalse, rpv1.ReasonPodsNotCreated, "Deployment ns/b-server cannot create its pods: FailedCreate: forbidden"))},
			"False/CellsUnavailable", "True/ProvisioningFailed", "False/ProvisioningFailed", "b (PodsNotCreated: Deployment ns/b-server cannot create its pods"},
		{"a draining cell refused", []rpv1.RedPacketCell{cellWith("a", 1, 1, ready), cellWith("b", 1, 1, ready), cellWith("old", 1, 1, refused)},
			"True/AllCellsAvailable", "True/ProvisioningFailed", "False/ProvisioningFailed", "old (ApplyFailed"},
		{"a failure beside an outage", []rpv1.RedPacketCell{cellWith("a", 1, 1, availCond(metav1.ConditionFalse, rpv1.ReasonRolloutStuck, "past deadline")), cellWith("b", 1, 1, availCond(metav1.ConditionFalse, rpv1.ReasonDatabaseNotReady, "primary"))},
			"False/CellsUnavailable", "True/ProvisioningFailed", "False/ProvisioningFailed", "unavailable: b (DatabaseNotReady: primary)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conds := rollUpCells(tc.cells, latest).conditions()
			for typ, want := range map[string]string{rpv1.SetAvailable: tc.available, rpv1.SetDegraded: tc.degraded, rpv1.SetProgressing: tc.progres} {
				c := meta.FindStatusCondition(conds, typ)
				if c == nil {
					t.Fatalf("no %s", typ)
				}
				if got := fmt.Sprintf("%s/%s", c.Status, c.Reason); got != want {
					t.Errorf("%s = %s (%s), want %s", typ, got, c.Message, want)
				}
				if typ == rpv1.SetDegraded && !strings.Contains(c.Message, tc.messageHas) {
					t.Errorf("Degraded message %q does not contain %q", c.Message, tc.messageHas)
				}
				if typ == rpv1.SetProgressing && c.Reason == rpv1.ReasonProvisioningFailed {
					for i := range tc.cells {
						if f := cellFailure(&tc.cells[i]); f != "" && !strings.Contains(c.Message, f) {
							t.Errorf("Progressing message %q does not name %s", c.Message, f)
						}
					}
				}
			}
		})
	}
}

func TestIsOnlyConflict(t *testing.T) {
	gr := schema.GroupResource{Group: "redpacket.dev", Resource: "redpacketsets"}
	conflict := apierrors.NewConflict(gr, "rp", errors.New("the object has been modified"))
	other := apierrors.NewForbidden(gr, "rp", errors.New("no"))
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{conflict, true},
		{fmt.Errorf("update status of set rp: %w", conflict), true},
		{errors.Join(nil, fmt.Errorf("write: %w", conflict)), true},
		{errors.Join(conflict, conflict), true},
		{other, false},
		{errors.New("plain"), false},
		{fmt.Errorf("phase: %w", errors.Join(conflict, other)), false},
		{errors.Join(fmt.Errorf("apply: %w", other), fmt.Errorf("status: %w", conflict)), false},
	} {
		if got := isOnlyConflict(tc.err); got != tc.want {
			t.Errorf("isOnlyConflict(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestNamedByCommittedEpoch: the never-routed proof is lost as soon as an epoch naming the
// cell can no longer be replaced, not only once it is in force.
func TestNamedByCommittedEpoch(t *testing.T) {
	now := time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC)
	epoch := func(n int64, at time.Time, cells ...string) routing.Epoch {
		e := routing.Epoch{Number: n, EffectiveTime: at}
		per := 1000 / len(cells)
		for i, c := range cells {
			e.Ranges = append(e.Ranges, routing.SlotRange{Start: i * per, End: (i+1)*per - 1, Cell: c})
		}
		return e
	}
	old := epoch(1, now.Add(-time.Hour), "a", "b")
	for _, tc := range []struct {
		name string
		at   time.Time
		want bool
	}{
		{"far ahead", now.Add(2 * time.Minute), false},
		{"just outside the margin", now.Add(plan.HandoverMargin + time.Second), false},
		{"at the margin", now.Add(plan.HandoverMargin), true},
		{"in force", now.Add(-time.Second), true},
	} {
		tbl := &routing.Table{Set: "rp", SlotCount: 1000, Epochs: []routing.Epoch{old, epoch(2, tc.at, "a", "b", "c", "d")}}
		if got := namedByCommittedEpoch("c", now, nil, tbl); got != tc.want {
			t.Errorf("%s: table %v, want %v", tc.name, got, tc.want)
		}
		status := []rpv1.RoutingEpoch{{Number: 2, EffectiveTime: metav1.NewTime(tc.at), Ranges: []rpv1.OwnedSlotRange{{Cell: "c", SlotRange: rpv1.SlotRange{Start: 0, End: 9}}}}}
		if got := namedByCommittedEpoch("c", now, status, nil); got != tc.want {
			t.Errorf("%s: status %v, want %v", tc.name, got, tc.want)
		}
	}
	if !namedByCommittedEpoch("a", now, nil, &routing.Table{Epochs: []routing.Epoch{old}}) {
		t.Error("a cell of the epoch in force is not committed")
	}
}

func TestCacheHealth(t *testing.T) {
	now := time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC)
	h := &CacheHealth{Now: func() time.Time { return now }}
	if f := h.Failures(); len(f) != 0 {
		t.Fatalf("fresh: %v", f)
	}
	h.record("*v1alpha1.RedPacketSet", errors.New(`redpacketsets.redpacket.dev is forbidden`))
	if f := h.Failures(); len(f) != 1 || !strings.Contains(f[0], "RedPacketSet: redpacketsets.redpacket.dev is forbidden") {
		t.Fatalf("after a failure: %v", f)
	}
	now = now.Add(91 * time.Second)
	if f := h.Failures(); len(f) != 0 {
		t.Fatalf("a failure past the window still counts: %v", f)
	}
	for _, err := range []error{apierrorsExpired(), fmt.Errorf("watch: %w", errEOF)} {
		if !benignWatchError(err) {
			t.Errorf("%v counted as a failure", err)
		}
	}
}

var errEOF = io.EOF

func apierrorsExpired() error { return apierrors.NewResourceExpired("too old resource version") }

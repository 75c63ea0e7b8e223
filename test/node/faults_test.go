package node

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/loadgen"
)

// background is a festival load running while a stage breaks something.
type background struct {
	stop context.CancelFunc
	done chan struct{}
	res  *loadgen.Result
	err  error
}

func startLoad(ctx context.Context, gw, runID string, set *rpv1.RedPacketSet) *background {
	loadCtx, stop := context.WithCancel(ctx)
	b := &background{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.res, b.err = loadgen.Run(loadCtx, loadgen.Config{
			Gateway: gw, Concurrency: 8, Duration: 10 * time.Minute,
			Groups: 40, Members: 30, HotPackets: 2, HotMembers: 200, HotShare: 0.3,
			MaxCount: int(set.Spec.Limits.MaxCount), MaxTotalCents: set.Spec.Limits.MaxTotalCents, RunID: runID,
		})
	}()
	return b
}

// finish stops the load and returns what it saw; the load ending early is a failure.
func (b *background) finish(t *testing.T) *loadgen.Result {
	t.Helper()
	select {
	case <-b.done:
		t.Fatalf("the load ended before the stage did: %v", b.err)
	default:
	}
	b.stop()
	<-b.done
	if b.err != nil {
		t.Fatal(b.err)
	}
	t.Logf("%d opens in %s (%.0f/s), %d packets, %d throttled, %d errors", b.res.Opens, b.res.Elapsed.Round(time.Millisecond),
		b.res.OpensPerSec, len(b.res.Created), b.res.Throttled, b.res.Errors)
	return b.res
}

// refusalsOnly fails the test for any answer that is neither a success nor a refusal or an
// unknown outcome the client retries with the same key: while a pod is gone or a table is
// failing, the API answers 503 (retry later), the gateway answers 502 upstream_unavailable
// (the cell's connection broke mid-request, as it does when its pod goes: the call may or may
// not have happened, docs/api.md), or the client's own connection breaks. The audit then
// proves the retries lost and doubled nothing. Any other answer (a 4xx about the request, a
// 500) is a breach.
func refusalsOnly(t *testing.T, res *loadgen.Result) map[string]int64 {
	t.Helper()
	refused := map[string]int64{}
	for _, v := range res.Verbs {
		for outcome, n := range v.Outcomes {
			switch {
			case strings.HasPrefix(outcome, "2"), outcome == "409 exhausted", strings.HasPrefix(outcome, "429 "):
			case strings.HasPrefix(outcome, "503 "), outcome == "transport", outcome == "502 upstream_unavailable":
				refused[v.Verb+" "+outcome] += n
			default:
				t.Errorf("%s: %d answers %q", v.Verb, n, outcome)
			}
		}
	}
	t.Logf("refused while the fault lasted: %v; first samples: %v", refused, res.ErrorSamples)
	return refused
}

// waitAvailable waits for the set to be Available with every cell ready, and for each pod of
// the set to be Ready by the kubelet's word.
func waitAvailable(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet, cells int, timeout time.Duration) {
	t.Helper()
	poll(t, fmt.Sprintf("the set Available again with %d ready cells and every pod Ready", cells), timeout, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		if int(set.Status.ReadyCells) != cells || !meta.IsStatusConditionTrue(set.Status.Conditions, rpv1.SetAvailable) {
			return false, fmt.Errorf("%d ready cells, Available %v", set.Status.ReadyCells, meta.FindStatusCondition(set.Status.Conditions, rpv1.SetAvailable))
		}
		var pods corev1.PodList
		if err := cl.c.List(ctx, &pods, client.InNamespace(set.Namespace), client.MatchingLabels{rpv1.LabelSet: set.Name}); err != nil {
			return false, err
		}
		for i := range pods.Items {
			if !podReady(&pods.Items[i]) {
				return false, fmt.Errorf("pod %s not Ready", pods.Items[i].Name)
			}
		}
		return true, nil
	})
}

// serves checks that service returned: a short load through the gateway gets every open
// answered.
func serves(t *testing.T, ctx context.Context, gw string, set *rpv1.RedPacketSet, runID string) {
	t.Helper()
	res, err := loadgen.Run(ctx, loadgen.Config{
		Gateway: gw, Concurrency: 4, Opens: 300, Duration: time.Minute,
		Groups: 10, Members: 30, MaxCount: int(set.Spec.Limits.MaxCount), MaxTotalCents: set.Spec.Limits.MaxTotalCents, RunID: runID,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Opens < 300 || res.Errors != 0 {
		t.Fatalf("after recovery: %d opens of 300, %d errors (%v)", res.Opens, res.Errors, res.ErrorSamples)
	}
}

// podDeletions deletes, under load, a cell server pod and then a cell's MySQL pod, as a node
// drain or a crash would. The cell's Deployment and StatefulSet bring them back on the same
// volume; every open the client saw acknowledged must then be in a database with its amount.
func podDeletions(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	gw := gatewayURL(t, ctx, cl, set)
	cells := int(set.Spec.Cells)
	load := startLoad(ctx, gw, "pods", set)
	defer load.stop()
	time.Sleep(20 * time.Second)

	server := cellPod(t, ctx, cl, set, set.CellName(0), rpv1.ComponentServer)
	t.Logf("deleting server pod %s", server)
	start := time.Now()
	cl.run(t, "delete", "pod", server, "-n", set.Namespace, "--wait=false")
	poll(t, "the server pod replaced", 3*time.Minute, func() (bool, error) {
		p := cellPod(t, ctx, cl, set, set.CellName(0), rpv1.ComponentServer)
		return p != server, fmt.Errorf("still %s", p)
	})
	waitAvailable(t, ctx, cl, set, cells, 5*time.Minute)
	t.Logf("server pod replaced and the set Available in %s", time.Since(start).Round(time.Second))
	time.Sleep(15 * time.Second)

	cell := &rpv1.RedPacketCell{}
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: set.CellName(1)}, cell); err != nil {
		t.Fatal(err)
	}
	var before corev1.Pod
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: cell.MySQLPodName(0)}, &before); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleting MySQL pod %s", before.Name)
	start = time.Now()
	cl.run(t, "delete", "pod", before.Name, "-n", set.Namespace, "--wait=false")
	poll(t, "the MySQL pod recreated", 3*time.Minute, func() (bool, error) {
		var p corev1.Pod
		if err := cl.c.Get(ctx, client.ObjectKey{Namespace: set.Namespace, Name: before.Name}, &p); err != nil {
			return false, err
		}
		return p.UID != before.UID, fmt.Errorf("still the deleted pod")
	})
	waitAvailable(t, ctx, cl, set, cells, 5*time.Minute)
	t.Logf("MySQL pod recreated and the set Available in %s", time.Since(start).Round(time.Second))
	time.Sleep(15 * time.Second)

	res := load.finish(t)
	refusalsOnly(t, res)
	serves(t, ctx, gw, set, "pods-after")
	audit(t, ctx, cl, set, res.Started, res)
}

// cellPod names the one pod of a component of a cell (the test runs one server per cell).
func cellPod(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet, cell, component string) string {
	t.Helper()
	var pods corev1.PodList
	if err := cl.c.List(ctx, &pods, client.InNamespace(set.Namespace),
		client.MatchingLabels{rpv1.LabelSet: set.Name, rpv1.LabelCell: cell, rpv1.LabelComponent: component}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			return p.Name
		}
	}
	return ""
}

// maskAndLift makes one logical table of a real cell fail (today's day tables renamed away, as
// a botched restore would leave them): the servers' error counts reach the operator, which
// masks the table's slots in that cell; once the tables are back and calls succeed for the
// cool-down, the mask lifts. Money stays whole throughout.
func maskAndLift(t *testing.T, ctx context.Context, cl *cluster, set *rpv1.RedPacketSet) {
	gw := gatewayURL(t, ctx, cl, set)
	cellName := set.CellName(0)
	layout := shard.Layout{Databases: int(set.Spec.Template.Shards.Databases), TablesPerDB: int(set.Spec.Template.Shards.TablesPerDatabase)}
	table := shard.Table{DB: 0, Table: 1}
	var admin *sql.DB
	for _, c := range cellDBs(t, ctx, cl, set) {
		if c.Name == cellName {
			db, err := sql.Open("mysql", c.DSN)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			admin = db
		}
	}
	if admin == nil {
		t.Fatalf("no database for %s", cellName)
	}
	load := startLoad(ctx, gw, "mask", set)
	defer load.stop()
	time.Sleep(15 * time.Second)

	// Packets already in the table: the lift needs evidence of health, calls without errors
	// (silence keeps a mask, docs/designdoc/masking.md), and creates cannot provide it while the
	// slots are masked. Their owners reading them do, as they would on a live service.
	var before []int64
	rows, err := admin.QueryContext(ctx, "SELECT id FROM "+layout.Physical("t", table, time.Now())+" ORDER BY id DESC LIMIT 50")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		before = append(before, id)
	}
	rows.Close()
	if len(before) == 0 {
		t.Fatalf("no packet in %s of %s to read", layout.Name(table), cellName)
	}
	readOld := func() {
		for _, id := range before {
			resp, err := http.Get(fmt.Sprintf("%s/v1/packets/%d", gw, id))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}

	var hidden []string
	restore := func() {
		for _, name := range hidden {
			if _, err := admin.ExecContext(ctx, "RENAME TABLE "+name+"_hidden TO "+name); err != nil {
				t.Errorf("restore %s: %v", name, err)
			}
		}
		hidden = nil
	}
	defer restore()
	for _, kind := range []string{"t", "r"} {
		name := layout.Physical(kind, table, time.Now())
		if _, err := admin.ExecContext(ctx, "RENAME TABLE "+name+" TO "+name+"_hidden"); err != nil {
			t.Fatalf("hide %s: %v", name, err)
		}
		hidden = append(hidden, name)
	}
	t.Logf("hid %v in %s", hidden, cellName)
	logical := layout.Name(table)
	start := time.Now()
	poll(t, "the failing table masked in the set's status", 4*time.Minute, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		for _, m := range set.Status.MaskedSlots {
			if m.Cell == cellName && m.Table == logical {
				return true, nil
			}
		}
		return false, fmt.Errorf("masked %v", set.Status.MaskedSlots)
	})
	t.Logf("%s of %s masked %s after its tables went", logical, cellName, time.Since(start).Round(time.Second))
	if !meta.IsStatusConditionTrue(set.Status.Conditions, rpv1.SetSlotsMasked) {
		t.Errorf("SlotsMasked not True with a mask in force: %v", meta.FindStatusCondition(set.Status.Conditions, rpv1.SetSlotsMasked))
	}
	// New packets stay out of the masked slots once the mask is in force (the servers read
	// masks every second; the status is written after the masks).
	maskedAt := time.Now()
	masked := map[int]bool{}
	for _, m := range set.Status.MaskedSlots {
		for s := m.Start; s <= m.End; s++ {
			masked[int(s)] = true
		}
	}
	time.Sleep(20 * time.Second)

	restore()
	liftStart := time.Now()
	start = time.Now()
	poll(t, "the mask lifted after the cool-down", 6*time.Minute, func() (bool, error) {
		readOld()
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(set), set); err != nil {
			return false, err
		}
		return len(set.Status.MaskedSlots) == 0, fmt.Errorf("masked %v", set.Status.MaskedSlots)
	})
	t.Logf("mask lifted %s after the tables came back", time.Since(start).Round(time.Second))
	time.Sleep(10 * time.Second)
	res := load.finish(t)
	refusalsOnly(t, res)
	inMasked := 0
	for _, p := range res.Created {
		if c := ids.CreatedAt(p.ID); p.Cell == cellName && masked[ids.Slot(p.ID)] && c.After(maskedAt) && c.Before(liftStart) {
			inMasked++
		}
	}
	if inMasked > 0 {
		t.Errorf("%d packets created in masked slots of %s while the mask was in force", inMasked, cellName)
	}
	audit(t, ctx, cl, set, res.Started, res)
}

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/localset"
)

// twoCellSet is a small SET: two cells of one server each (the planner gives one per zone for
// this peak), a 2×2 shard layout so the first start creates few tables.
func twoCellSet() *rpv1.RedPacketSet {
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:    []string{"zone-a"},
			Cells:    2,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			Template: rpv1.CellTemplate{
				Shards: rpv1.ShardSpec{Databases: 2, TablesPerDatabase: 2},
				Queue:  rpv1.QueueSpec{Workers: 16},
			},
		},
	}
	localset.ApplyDefaults(set)
	return set
}

// TestLocalSETFestivalAndRestart starts a 2-cell local SET, drives 10,000 opens through the
// gateway, audits every cell, then stops the SET, starts it again on the same data and checks
// that a packet from before is still readable and openable, with idempotent repeats; then
// crashes the server holding it and opens it again once the supervisor has restarted it.
func TestLocalSETFestivalAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole SET of processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	// Warnings to stderr; everything to logs, which the restart checks below read.
	logs := &lockedBuffer{}
	log := slog.New(teeHandler{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}),
		slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})})
	opts := localset.Options{Set: twoCellSet(), DataDir: dir, MaxServersPerCell: 1, ReadyTimeout: 3 * time.Minute, BufferPool: "64M", Log: log}

	start := time.Now()
	s, err := localset.Up(ctx, opts)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if cells := s.Cells(); len(cells) != 2 {
		t.Fatalf("cells %v, want 2", cells)
	}
	for _, c := range s.Cells() {
		if planned, started := s.Servers(c); planned != 1 || started != 1 {
			t.Fatalf("cell %s: planned %d started %d servers, want 1 and 1", c, planned, started)
		}
	}
	t.Logf("SET up in %s at %s", time.Since(start).Round(time.Millisecond), s.GatewayURL())

	res, err := loadgen.Run(ctx, loadgen.Config{
		Gateway: s.GatewayURL(), Concurrency: 32, Opens: 10_000, Duration: 3 * time.Minute,
		Groups: 60, Members: 40, HotPackets: 2, HotMembers: 300, HotShare: 0.3,
		MaxCount: s.State().MaxCount, MaxTotalCents: s.State().MaxTotalCents, Routing: s.Routing(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range res.Verbs {
		t.Logf("%-8s %6d requests  p50 %-8s p99 %-8s p99.9 %-8s  %v", v.Verb, v.Requests, v.P50.Round(10*time.Microsecond),
			v.P99.Round(10*time.Microsecond), v.P999.Round(10*time.Microsecond), v.SortedOutcomes())
	}
	t.Logf("%d opens in %s (%.0f/s), %d packets, %d throttled, %d errors", res.Opens, res.Elapsed.Round(time.Millisecond),
		res.OpensPerSec, len(res.Created), res.Throttled, res.Errors)
	if res.Opens < 10_000 {
		t.Errorf("only %d opens within the time bound, want 10,000", res.Opens)
	}
	if res.Errors != 0 {
		t.Errorf("%d unexpected errors, first: %v", res.Errors, res.ErrorSamples)
	}
	if len(res.Misrouted) != 0 {
		t.Errorf("answers from the wrong cell: %v", res.Misrouted)
	}
	cellsSeen := map[string]int{}
	for _, p := range res.Created {
		cellsSeen[p.Cell]++
	}
	if len(cellsSeen) != 2 {
		t.Errorf("packets per answering cell %v: want both cells used", cellsSeen)
	}
	audit(t, ctx, s, res.Started.Add(-time.Second), res)
	auditCatchesTampering(t, ctx, s, res)

	// A packet with shares left, opened once before the restart.
	old := wrapAndPay(t, s.GatewayURL(), "restart-sender", 5, 500)
	first := open(t, s.GatewayURL(), old, "before-restart")
	ports := *s.State()
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	if first := logs.String(); !strings.Contains(first, "the first start of a cell creates its shard tables") {
		t.Errorf("the first start did not say it creates shard tables:\n%s", first)
	}
	logs.Reset()
	opts.BinDir = dir + "/bin" // built by the first run
	s2, err := localset.Up(ctx, opts)
	if err != nil {
		t.Fatalf("up again on the same data: %v", err)
	}
	if again := logs.String(); strings.Contains(again, "shard tables") || !strings.Contains(again, "starting cell servers") {
		t.Errorf("a restart must not announce creating shard tables:\n%s", again)
	}
	t.Cleanup(func() { _ = s2.Stop() })
	if s2.GatewayURL() != s.GatewayURL() || s2.State().Cells[0].MySQLPort != ports.Cells[0].MySQLPort {
		t.Errorf("ports changed across restart: gateway %s → %s", s.GatewayURL(), s2.GatewayURL())
	}
	var details struct {
		Packet struct {
			Status         string `json:"status"`
			RemainingCount int    `json:"remainingCount"`
		} `json:"packet"`
		Receivers []struct {
			User        string `json:"user"`
			AmountCents int64  `json:"amountCents"`
		} `json:"receivers"`
	}
	if code := call(t, http.MethodGet, s2.GatewayURL()+"/v1/packets/"+old, nil, &details); code != http.StatusOK {
		t.Fatalf("details of the old packet after restart: %d", code)
	}
	if details.Packet.Status != "active" || details.Packet.RemainingCount != 4 || len(details.Receivers) != 1 ||
		details.Receivers[0].User != "before-restart" || details.Receivers[0].AmountCents != first {
		t.Fatalf("old packet after restart: %+v", details)
	}
	if again := open(t, s2.GatewayURL(), old, "before-restart"); again != first {
		t.Errorf("repeat open after restart paid %d, first open %d", again, first)
	}
	open(t, s2.GatewayURL(), old, "after-restart")

	// A cell server that crashes is restarted by the supervisor (as Kubernetes would) under a
	// new worker lease; the gateway routes to it again once it is ready.
	id, err := strconv.ParseInt(old, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	owner, _, err := s2.Routing().PacketOwner(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.KillServer(owner, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, err := tryOpen(s2.GatewayURL(), old, "after-crash")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("open after a server crash: still %d %v after 90s", code, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The whole history, old run included, still audits clean.
	audit(t, ctx, s2, res.Started.Add(-time.Second), nil)
}

func audit(t *testing.T, ctx context.Context, s *localset.SET, from time.Time, res *loadgen.Result) {
	t.Helper()
	st := s.State()
	var cells []loadgen.CellDB
	for _, c := range st.Cells {
		cells = append(cells, loadgen.CellDB{Name: c.Name, DSN: c.DSN()})
	}
	cfg := loadgen.AuditConfig{Cells: cells, Layout: st.Layout.Shard(), CellSchema: st.CellSchema, WalletSchema: st.WalletSchema,
		Routing: s.Routing(), From: from, To: time.Now().Add(time.Second), DrainTimeout: time.Minute}
	if res != nil {
		cfg.Created, cfg.Shares = res.Created, res.Shares
	}
	rep, err := loadgen.Audit(ctx, cfg)
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	receipts := 0
	for _, c := range rep.Cells {
		receipts += c.Receipts
		t.Logf("audit %s: %d packets, %d receive records, outbox drained in %s", c.Name, c.Packets, c.Receipts, c.DrainedIn.Round(time.Millisecond))
	}
	if res != nil && (rep.Checked.Shares != len(res.Shares) || receipts < len(res.Shares)) {
		t.Errorf("audit saw %d receive records and checked %d shares, the run was paid %d", receipts, rep.Checked.Shares, len(res.Shares))
	}
	if !rep.OK() {
		n := min(len(rep.Violations), 20)
		t.Fatalf("audit: %d violations, first %d:\n%v", len(rep.Violations), n, rep.Violations[:n])
	}
}

// auditCatchesTampering shows the audit is not vacuous: one receive record inflated by a cent,
// and a routing table that names the wrong owners, must both be reported; undoing the change
// makes the audit clean again.
func auditCatchesTampering(t *testing.T, ctx context.Context, s *localset.SET, res *loadgen.Result) {
	t.Helper()
	st := s.State()
	victim := res.Shares[len(res.Shares)/2]
	owner, _, err := s.Routing().PacketOwner(victim.Packet)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := st.Cell(owner)
	db, err := store.OpenDB(cs.DSN(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cellStore, err := store.New(db, store.Config{Layout: st.Layout.Shard(), CellSchema: st.CellSchema})
	if err != nil {
		t.Fatal(err)
	}
	_, receipts := cellStore.Tables(victim.Packet)
	shift := func(delta int) {
		t.Helper()
		r, err := db.ExecContext(ctx, "UPDATE "+receipts+" SET amount_cents = amount_cents + ? WHERE packet_id = ? AND user_id = ?", delta, victim.Packet, victim.User)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := r.RowsAffected(); n != 1 {
			t.Fatalf("tamper: %d rows", n)
		}
	}
	var cells []loadgen.CellDB
	for _, c := range st.Cells {
		cells = append(cells, loadgen.CellDB{Name: c.Name, DSN: c.DSN()})
	}
	cfg := loadgen.AuditConfig{Cells: cells, Layout: st.Layout.Shard(), CellSchema: st.CellSchema, WalletSchema: st.WalletSchema,
		Routing: s.Routing(), From: res.Started.Add(-time.Second), To: time.Now().Add(time.Second), Shares: res.Shares}

	shift(+1)
	rep, err := loadgen.Audit(ctx, cfg)
	shift(-1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"opened", "credited", "was told"} // conservation, ledger, client view
	for _, w := range want {
		if !slices.ContainsFunc(rep.Violations, func(v string) bool {
			return strings.Contains(v, w) && strings.Contains(v, strconv.FormatInt(victim.Packet, 10))
		}) {
			t.Errorf("an inflated receive record of packet %d: no %q violation in %v", victim.Packet, w, rep.Violations)
		}
	}

	swapped := *s.Routing()
	swapped.Epochs = slices.Clone(swapped.Epochs)
	for i := range swapped.Epochs {
		e := &swapped.Epochs[i]
		e.Ranges = slices.Clone(e.Ranges)
		for j := range e.Ranges {
			e.Ranges[j].Cell = map[string]string{st.Cells[0].Name: st.Cells[1].Name, st.Cells[1].Name: st.Cells[0].Name}[e.Ranges[j].Cell]
		}
	}
	cfg.Routing, cfg.Shares = &swapped, nil
	rep, err = loadgen.Audit(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// One per packet stored in the window, which may include a packet whose wrap the client
	// never saw answered (a timeout), so count what the cells hold rather than res.Created.
	stored := 0
	for _, c := range rep.Cells {
		stored += c.Packets
	}
	if n := len(rep.Violations); n != stored || stored < len(res.Created) {
		t.Errorf("with every owner swapped the audit found %d violations, want one per stored packet (%d; client created %d)", n, stored, len(res.Created))
	}
}

func wrapAndPay(t *testing.T, gw, sender string, count int, total int64) string {
	t.Helper()
	req := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	var p struct {
		PacketID string `json:"packetId"`
	}
	body := fmt.Sprintf(`{"sender":%q,"requestId":%q,"totalCents":%d,"count":%d,"kind":"random"}`, sender, req, total, count)
	if code := call(t, http.MethodPost, gw+"/v1/packets", []byte(body), &p); code != http.StatusCreated {
		t.Fatalf("wrap: %d", code)
	}
	pay := fmt.Sprintf(`{"paymentTxnId":"pay-%s","amountCents":%d}`, req, total)
	if code := call(t, http.MethodPost, gw+"/v1/packets/"+p.PacketID+"/pay", []byte(pay), nil); code != http.StatusOK {
		t.Fatalf("pay: %d", code)
	}
	return p.PacketID
}

// tryOpen is an open that may fail while a server restarts.
func tryOpen(gw, id, user string) (int, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Post(gw+"/v1/packets/"+id+"/open", "application/json",
		bytes.NewReader([]byte(`{"user":"`+user+`"}`)))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func open(t *testing.T, gw, id, user string) int64 {
	t.Helper()
	var o struct {
		AmountCents int64 `json:"amountCents"`
	}
	if code := call(t, http.MethodPost, gw+"/v1/packets/"+id+"/open", []byte(`{"user":"`+user+`"}`), &o); code != http.StatusOK {
		t.Fatalf("open %s by %s: %d", id, user, code)
	}
	if o.AmountCents < 1 {
		t.Fatalf("open %s by %s paid %d cents", id, user, o.AmountCents)
	}
	return o.AmountCents
}

func call(t *testing.T, method, url string, body []byte, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, url, data, err)
		}
	}
	if resp.StatusCode/100 != 2 {
		t.Logf("%s %s: %d %s", method, url, resp.StatusCode, data)
	}
	return resp.StatusCode
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *lockedBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

// teeHandler sends each record to both handlers, each applying its own level.
type teeHandler struct{ a, b slog.Handler }

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.a.Enabled(ctx, l) || h.b.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, x := range []slog.Handler{h.a, h.b} {
		if x.Enabled(ctx, r.Level) {
			errs = append(errs, x.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (h teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h.a.WithAttrs(as), h.b.WithAttrs(as)}
}

func (h teeHandler) WithGroup(n string) slog.Handler {
	return teeHandler{h.a.WithGroup(n), h.b.WithGroup(n)}
}

package httpapi_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/cellserver/httpapi"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type server struct {
	url    string
	env    *storetest.Env
	svc    *packet.Service
	relay  *wallet.Relay
	ledger *wallet.Ledger
}

func start(t *testing.T) *server { return startWith(t, nil, queue.Config{Workers: 4}) }

func startWith(t *testing.T, g *guard.Guard, qc queue.Config) *server {
	t.Helper()
	return startOn(t, storetest.New(t, storetest.Options{}), g, qc)
}

func startOn(t *testing.T, env *storetest.Env, g *guard.Guard, qc queue.Config) *server {
	t.Helper()
	pc := packet.Config{Limits: packet.Limits{MaxTotalCents: 2_000_000, MaxCount: 500, MaxIDLength: 64, MaxGroupLength: 64, MaxGreeting: 128}}
	if g != nil {
		pc.Cache, qc.Guard = g, g
	}
	svc := packet.New(env.Store, &storetest.IDs{}, pc)
	reg := prometheus.NewRegistry()
	qc.Registerer = reg
	q, err := queue.New(svc, qc)
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Config{Service: svc, Queue: q, Registerer: reg, Gatherer: reg, MaxBody: 4096})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(api)
	t.Cleanup(func() { ts.Close(); _ = q.Close(context.Background()) })
	l, err := wallet.NewLedger(env.DB, env.Prefix+"_wallet")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureSchema(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = env.DB.Exec("DROP DATABASE IF EXISTS " + env.Prefix + "_wallet") })
	relay, err := wallet.NewRelay(env.Store, l, env.Store, wallet.RelayConfig{Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &server{url: ts.URL, env: env, svc: svc, relay: relay, ledger: l}
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (s *server) do(t *testing.T, method, path string, body any, hdr ...string) answer {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }
func (a answer) num(k string) int64  { f, _ := a.body[k].(float64); return int64(f) }

func wrapBody(req string, total int64, count int) map[string]any {
	return map[string]any{"sender": "alice", "requestId": req, "totalCents": total, "count": count, "kind": "random", "group": "fam", "greeting": "新年快乐"}
}

func TestLifecycleOverHTTP(t *testing.T) {
	s := start(t)
	w := s.do(t, "POST", "/v1/packets", wrapBody("r1", 1000, 3), routing.HeaderSlot, "42")
	if w.status != 201 || !strings.HasSuffix(w.str("packetId"), "042") || w.str("status") != "wrapped" {
		t.Fatalf("wrap: %d %s", w.status, w.raw)
	}
	id := w.str("packetId")
	if again := s.do(t, "POST", "/v1/packets", wrapBody("r1", 1000, 3)); again.status != 200 || again.str("packetId") != id {
		t.Fatalf("wrap retry: %d %s", again.status, again.raw)
	}
	if g := s.do(t, "POST", "/v1/packets/"+id+"/grab", map[string]any{"user": "bob"}); g.status != 200 || g.body["eligible"] != false || g.str("reason") != "not_paid" {
		t.Fatalf("grab unpaid: %d %s", g.status, g.raw)
	}
	pay := map[string]any{"paymentTxnId": "pt1", "amountCents": 1000}
	if p := s.do(t, "POST", "/v1/packets/"+id+"/pay", pay); p.status != 200 || p.str("status") != "active" {
		t.Fatalf("pay: %d %s", p.status, p.raw)
	}
	if p := s.do(t, "POST", "/v1/packets/"+id+"/pay", pay); p.status != 200 {
		t.Fatalf("pay retry: %d %s", p.status, p.raw)
	}
	if g := s.do(t, "POST", "/v1/packets/"+id+"/grab", map[string]any{"user": "bob"}); g.status != 200 || g.body["eligible"] != true {
		t.Fatalf("grab: %d %s", g.status, g.raw)
	}
	var sum int64
	for _, u := range []string{"bob", "carol", "dave"} {
		o := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": u})
		if o.status != 200 || o.body["repeat"] != false || o.str("packetId") != id {
			t.Fatalf("open %s: %d %s", u, o.status, o.raw)
		}
		sum += o.num("amountCents")
		r := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": u})
		if r.status != 200 || r.body["repeat"] != true || r.num("amountCents") != o.num("amountCents") {
			t.Fatalf("repeat open %s: %d %s", u, r.status, r.raw)
		}
	}
	if sum != 1000 {
		t.Fatalf("Σ %d", sum)
	}
	if o := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": "erin"}); o.status != 409 || o.str("code") != "exhausted" {
		t.Fatalf("open exhausted: %d %s", o.status, o.raw)
	}
	d := s.do(t, "GET", "/v1/packets/"+id+"?limit=2", nil)
	if d.status != 200 || len(d.body["receivers"].([]any)) != 2 || d.str("next") != "2" {
		t.Fatalf("details: %d %s", d.status, d.raw)
	}
	d2 := s.do(t, "GET", "/v1/packets/"+id+"?limit=2&after=2", nil)
	if d2.status != 200 || len(d2.body["receivers"].([]any)) != 1 || d2.str("next") != "" {
		t.Fatalf("details page 2: %d %s", d2.status, d2.raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.relay.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	h := s.do(t, "GET", "/v1/users/bob/received?limit=10", nil)
	items, _ := h.body["items"].([]any)
	if h.status != 200 || len(items) != 1 || items[0].(map[string]any)["packetId"] != id {
		t.Fatalf("received: %d %s", h.status, h.raw)
	}
	sent := s.do(t, "GET", "/v1/users/alice/sent", nil)
	if items, _ := sent.body["items"].([]any); sent.status != 200 || len(items) != 1 {
		t.Fatalf("sent: %d %s", sent.status, sent.raw)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if a := s.do(t, "GET", path, nil); a.status != 200 {
			t.Fatalf("%s: %d", path, a.status)
		}
	}
	m := s.do(t, "GET", "/metrics", nil)
	for _, name := range []string{"redpacket_http_request_duration_seconds", "redpacket_queue_depth", "redpacket_queue_batch_size"} {
		if !strings.Contains(m.raw, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestHistoryPagingAcrossPages(t *testing.T) {
	s := start(t)
	for i := 0; i < 5; i++ {
		w := s.do(t, "POST", "/v1/packets", wrapBody(fmt.Sprintf("h%d", i), 100, 1))
		id := w.str("packetId")
		s.do(t, "POST", "/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "ph" + id, "amountCents": 100})
		s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": "zed"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.relay.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	next, lastKey := "", ""
	for page := 0; page < 5; page++ {
		h := s.do(t, "GET", "/v1/users/zed/received?limit=2&before="+next, nil)
		if h.status != 200 {
			t.Fatalf("page %d: %d %s", page, h.status, h.raw)
		}
		for _, it := range h.body["items"].([]any) {
			m := it.(map[string]any)
			key := fmt.Sprintf("%013d:%s", int64(m["at"].(float64)), m["packetId"])
			if lastKey != "" && key >= lastKey {
				t.Fatalf("not sorted newest first: %s after %s", key, lastKey)
			}
			lastKey = key
			seen[m["packetId"].(string)] = true
		}
		next = h.str("next")
		if next == "" {
			break
		}
	}
	if len(seen) != 5 {
		t.Fatalf("paged through %d packets, want 5", len(seen))
	}
}

// fingerprint checksums every table of the test's schemas, so a refused request can be shown
// to have changed nothing.
func fingerprint(t *testing.T, db *sql.DB, prefix string) string {
	t.Helper()
	rows, err := db.Query("SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables WHERE table_schema LIKE ? ORDER BY 1", prefix+"\\_%")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	var b strings.Builder
	for _, tb := range tables {
		var name string
		var sum sql.NullInt64
		if err := db.QueryRow("CHECKSUM TABLE "+tb).Scan(&name, &sum); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s=%d;", name, sum.Int64)
	}
	return b.String()
}

func TestBadInputChangesNothing(t *testing.T) {
	s := start(t)
	active := s.do(t, "POST", "/v1/packets", wrapBody("act", 300, 3)).str("packetId")
	s.do(t, "POST", "/v1/packets/"+active+"/pay", map[string]any{"paymentTxnId": "pa", "amountCents": 300})
	unpaid := s.do(t, "POST", "/v1/packets", wrapBody("unp", 300, 3)).str("packetId")
	exhausted := s.do(t, "POST", "/v1/packets", wrapBody("exh", 100, 1)).str("packetId")
	s.do(t, "POST", "/v1/packets/"+exhausted+"/pay", map[string]any{"paymentTxnId": "pe", "amountCents": 100})
	s.do(t, "POST", "/v1/packets/"+exhausted+"/open", map[string]any{"user": "first"})
	s.do(t, "POST", "/v1/packets/"+active+"/open", map[string]any{"user": "opener"})
	with := func(k string, v any) map[string]any {
		b := wrapBody("bad", 1000, 10)
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
		return b
	}
	unknownID := "384050653036545999"
	cases := []struct {
		name   string
		method string
		path   string
		body   any
		hdr    []string
		status int
		code   string
		field  string
	}{
		{"malformed json", "POST", "/v1/packets", `{"sender": "a",`, nil, 400, "malformed_json", ""},
		{"not an object", "POST", "/v1/packets", `[1,2]`, nil, 400, "malformed_json", ""},
		{"trailing data", "POST", "/v1/packets", `{"sender":"a"} {}`, nil, 400, "malformed_json", ""},
		{"unknown field", "POST", "/v1/packets", with("bonus", 5), nil, 400, "invalid_input", "bonus"},
		{"negative total", "POST", "/v1/packets", with("totalCents", -100), nil, 400, "invalid_input", "totalCents"},
		{"zero total", "POST", "/v1/packets", with("totalCents", 0), nil, 400, "invalid_input", "totalCents"},
		{"overflowing total", "POST", "/v1/packets", `{"sender":"a","requestId":"b","totalCents":99999999999999999999999,"count":1,"kind":"random"}`, nil, 400, "invalid_input", "totalCents"},
		{"fractional total", "POST", "/v1/packets", with("totalCents", 10.5), nil, 400, "invalid_input", "totalCents"},
		{"total as string", "POST", "/v1/packets", with("totalCents", "1000"), nil, 400, "invalid_input", "totalCents"},
		{"total above limit", "POST", "/v1/packets", with("totalCents", 2_000_001), nil, 400, "invalid_input", "totalCents"},
		{"count zero", "POST", "/v1/packets", with("count", 0), nil, 400, "invalid_input", "count"},
		{"count above limit", "POST", "/v1/packets", with("count", 501), nil, 400, "invalid_input", "count"},
		{"total below count cents", "POST", "/v1/packets", with("totalCents", 9), nil, 400, "invalid_input", "totalCents"},
		{"fixed uneven", "POST", "/v1/packets", map[string]any{"sender": "a", "requestId": "f", "totalCents": 1001, "count": 10, "kind": "fixed"}, nil, 400, "invalid_input", "totalCents"},
		{"bad kind", "POST", "/v1/packets", with("kind", "lucky"), nil, 400, "invalid_input", "kind"},
		{"missing sender", "POST", "/v1/packets", with("sender", nil), nil, 400, "invalid_input", "sender"},
		{"bad slot header", "POST", "/v1/packets", with("requestId", "slot"), []string{routing.HeaderSlot, "1000"}, 400, "invalid_input", routing.HeaderSlot},
		{"reused request id", "POST", "/v1/packets", map[string]any{"sender": "alice", "requestId": "act", "totalCents": 999, "count": 3, "kind": "random", "group": "fam", "greeting": "新年快乐"}, nil, 409, "idempotency_conflict", "requestId"},
		{"body too large", "POST", "/v1/packets", with("greeting", strings.Repeat("x", 5000)), nil, 413, "too_large", ""},
		{"pay unknown packet", "POST", "/v1/packets/" + unknownID + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": 300}, nil, 404, "not_found", "id"},
		{"pay bad id", "POST", "/v1/packets/abc/pay", map[string]any{"paymentTxnId": "x", "amountCents": 300}, nil, 400, "invalid_input", "id"},
		{"pay negative id", "POST", "/v1/packets/-5/pay", map[string]any{"paymentTxnId": "x", "amountCents": 300}, nil, 400, "invalid_input", "id"},
		{"pay plus-signed id", "POST", "/v1/packets/+" + unpaid + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": 300}, nil, 400, "invalid_input", "id"},
		{"pay zero-led id", "POST", "/v1/packets/0" + unpaid + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": 300}, nil, 400, "invalid_input", "id"},
		{"pay wrong amount", "POST", "/v1/packets/" + unpaid + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": 299}, nil, 409, "amount_mismatch", "amountCents"},
		{"pay zero amount", "POST", "/v1/packets/" + unpaid + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": 0}, nil, 400, "invalid_input", "amountCents"},
		{"pay negative amount", "POST", "/v1/packets/" + unpaid + "/pay", map[string]any{"paymentTxnId": "x", "amountCents": -300}, nil, 400, "invalid_input", "amountCents"},
		{"pay missing txn", "POST", "/v1/packets/" + unpaid + "/pay", map[string]any{"amountCents": 300}, nil, 400, "invalid_input", "paymentTxnId"},
		{"pay twice other txn", "POST", "/v1/packets/" + active + "/pay", map[string]any{"paymentTxnId": "other", "amountCents": 300}, nil, 409, "already_paid", "paymentTxnId"},
		{"pay reusing txn of other packet", "POST", "/v1/packets/" + unpaid + "/pay", map[string]any{"paymentTxnId": "pa", "amountCents": 300}, nil, 409, "idempotency_conflict", "paymentTxnId"},
		{"open unpaid", "POST", "/v1/packets/" + unpaid + "/open", map[string]any{"user": "u"}, nil, 409, "not_paid", ""},
		{"open exhausted", "POST", "/v1/packets/" + exhausted + "/open", map[string]any{"user": "u"}, nil, 409, "exhausted", ""},
		{"open unknown", "POST", "/v1/packets/" + unknownID + "/open", map[string]any{"user": "u"}, nil, 404, "not_found", "id"},
		{"open no user", "POST", "/v1/packets/" + active + "/open", map[string]any{}, nil, 400, "invalid_input", "user"},
		{"open user too long", "POST", "/v1/packets/" + active + "/open", map[string]any{"user": strings.Repeat("u", 65)}, nil, 400, "invalid_input", "user"},
		{"open user not a string", "POST", "/v1/packets/" + active + "/open", map[string]any{"user": 5}, nil, 400, "invalid_input", "user"},
		{"open empty body", "POST", "/v1/packets/" + active + "/open", "", nil, 400, "malformed_json", ""},
		{"grab unknown", "POST", "/v1/packets/" + unknownID + "/grab", map[string]any{"user": "u"}, nil, 404, "not_found", "id"},
		{"details unknown", "GET", "/v1/packets/" + unknownID, nil, nil, 404, "not_found", "id"},
		{"details bad limit", "GET", "/v1/packets/" + active + "?limit=0", nil, nil, 400, "invalid_input", "limit"},
		{"details huge limit", "GET", "/v1/packets/" + active + "?limit=100000", nil, nil, 400, "invalid_input", "limit"},
		{"details bad after", "GET", "/v1/packets/" + active + "?after=x", nil, nil, 400, "invalid_input", "after"},
		{"history bad cursor", "GET", "/v1/users/bob/sent?before=yesterday", nil, nil, 400, "invalid_input", "before"},
		{"history bad user", "GET", "/v1/users/" + strings.Repeat("b", 65) + "/received", nil, nil, 400, "invalid_input", "user"},
		{"no such route", "POST", "/v1/packets/" + active + "/steal", map[string]any{}, nil, 404, "no_route", ""},
		{"no such route outside v1", "GET", "/v2/packets", nil, nil, 404, "no_route", ""},
		// encoding/json matches names case-insensitively; the API's names are exact.
		{"case-variant field", "POST", "/v1/packets", `{"sender":"a","requestId":"cv","TotalCents":1000,"count":1,"kind":"random"}`, nil, 400, "invalid_input", "TotalCents"},
		{"case-variant field only differs in one letter", "POST", "/v1/packets", `{"sender":"a","requestID":"cv","totalCents":1000,"count":1,"kind":"random"}`, nil, 400, "invalid_input", "requestID"},
		{"case-variant user", "POST", "/v1/packets/" + active + "/open", `{"User":"mallory"}`, nil, 400, "invalid_input", "User"},
		{"case-variant pay field", "POST", "/v1/packets/" + unpaid + "/pay", `{"paymentTxnId":"cv","AmountCents":300}`, nil, 400, "invalid_input", "AmountCents"},
		// With duplicates encoding/json keeps the last value; a client or proxy that keeps the
		// first would see another packet than the one created.
		{"duplicate field", "POST", "/v1/packets", `{"sender":"a","requestId":"dup","totalCents":1,"count":1,"kind":"random","totalCents":1000}`, nil, 400, "invalid_input", "totalCents"},
		{"null body", "POST", "/v1/packets", `null`, nil, 400, "malformed_json", ""},
		{"null body on open", "POST", "/v1/packets/" + active + "/open", `null`, nil, 400, "malformed_json", ""},
		{"null body on pay", "POST", "/v1/packets/" + unpaid + "/pay", ` null `, nil, 400, "malformed_json", ""},
		{"string body", "POST", "/v1/packets/" + active + "/open", `"u"`, nil, 400, "malformed_json", ""},
	}
	before := fingerprint(t, s.env.DB, s.env.Prefix)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := s.do(t, c.method, c.path, c.body, c.hdr...)
			if a.status != c.status || a.str("code") != c.code || a.str("field") != c.field || a.str("message") == "" {
				t.Fatalf("got %d %s, want %d code=%s field=%s", a.status, a.raw, c.status, c.code, c.field)
			}
			if _, present := a.body["field"]; c.field == "" && present {
				t.Fatalf("field must be omitted when no input is at fault: %s", a.raw)
			}
			if after := fingerprint(t, s.env.DB, s.env.Prefix); after != before {
				t.Fatalf("refused request changed the DB:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestConcurrentOpensOverHTTP(t *testing.T) {
	s := start(t)
	id := s.do(t, "POST", "/v1/packets", wrapBody("hot", 100_00, 100)).str("packetId")
	s.do(t, "POST", "/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "ph", "amountCents": 100_00})
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int64{}
	codes := map[int]int{}
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func(u string) {
			defer wg.Done()
			a := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": u})
			mu.Lock()
			defer mu.Unlock()
			codes[a.status]++
			if a.status == 200 {
				got[u] = a.num("amountCents")
			}
		}(fmt.Sprintf("u%d", i))
	}
	wg.Wait()
	var sum int64
	for _, v := range got {
		sum += v
	}
	if len(got) != 100 || codes[409] != 200 || sum != 100_00 {
		t.Fatalf("%d opened (codes %v), Σ %d", len(got), codes, sum)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.relay.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := wallet.Audit(ctx, s.env.Store, s.ledger, time.Now().Add(-time.Hour), time.Now())
	if err != nil || !rep.OK() || rep.Receipts != 100 {
		t.Fatalf("audit: %+v %v", rep, err)
	}
}

// TestKillingMemcachedChangesNoResult runs opens and grabs through tiny queues, so most
// requests overflow onto the memcached-guarded path, and kills memcached halfway. Every
// money result must be what it would have been: each packet fully opened exactly once per
// share, Σ exact, nobody twice, grab answers consistent with the DB, and a clean audit.
func TestKillingMemcachedChangesNoResult(t *testing.T) {
	mc := testenv.StartMemcached(t)
	g, err := guard.New(guard.Config{Addr: mc.Addr(), Limit: 2, Timeout: 50 * time.Millisecond, ProbeEvery: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s := startWith(t, g, queue.Config{Workers: 2, Depth: 2})
	const packets, shares, users = 5, 40, 60
	var ids []string
	for i := 0; i < packets; i++ {
		id := s.do(t, "POST", "/v1/packets", wrapBody(fmt.Sprintf("mc%d", i), 40_00, shares)).str("packetId")
		if p := s.do(t, "POST", "/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "pm" + id, "amountCents": 40_00}); p.status != 200 {
			t.Fatalf("pay: %d %s", p.status, p.raw)
		}
		ids = append(ids, id)
	}
	type key struct{ id, user string }
	var mu sync.Mutex
	got := map[key]int64{}
	exhausted := map[key]bool{}
	answered := 0
	var wg sync.WaitGroup
	for i := 0; i < packets*users; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			k := key{ids[i%packets], fmt.Sprintf("u%d", i/packets)}
			s.do(t, "POST", "/v1/packets/"+k.id+"/grab", map[string]any{"user": k.user})
			giveUp := time.Now().Add(60 * time.Second)
			for {
				a := s.do(t, "POST", "/v1/packets/"+k.id+"/open", map[string]any{"user": k.user})
				mu.Lock()
				switch {
				case a.status == 200:
					if prev, ok := got[k]; ok && prev != a.num("amountCents") {
						t.Errorf("%v: repeat gave %d, first %d", k, a.num("amountCents"), prev)
					}
					got[k] = a.num("amountCents")
				case a.status == 409 && a.str("code") == "exhausted":
					exhausted[k] = true
				case a.status == 429 && a.header.Get("Retry-After") != "" && time.Now().Before(giveUp):
					mu.Unlock()
					time.Sleep(5 * time.Millisecond) // a client's backoff, not synchronisation
					continue
				default:
					t.Errorf("%v: %d %s", k, a.status, a.raw)
				}
				answered++
				mu.Unlock()
				return
			}
		}(i)
	}
	// Kill memcached once about half the opens are answered.
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := answered
		mu.Unlock()
		if n >= packets*users/2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	mc.Kill()
	wg.Wait()
	perPacket := map[string]int64{}
	count := map[string]int{}
	for k, amt := range got {
		perPacket[k.id] += amt
		count[k.id]++
	}
	for _, id := range ids {
		if count[id] != shares || perPacket[id] != 40_00 {
			t.Errorf("packet %s: %d opened, Σ %d; want %d, 4000", id, count[id], perPacket[id], shares)
		}
	}
	if len(exhausted) != packets*(users-shares) {
		t.Errorf("%d refused as exhausted, want %d", len(exhausted), packets*(users-shares))
	}
	// Grab after the kill (and after memcached comes back empty) agrees with the DB.
	for _, restart := range []bool{false, true} {
		if restart {
			mc.Restart()
		}
		for k := range got {
			if a := s.do(t, "POST", "/v1/packets/"+k.id+"/grab", map[string]any{"user": k.user}); a.body["eligible"] != false || (a.str("reason") != "already_opened" && a.str("reason") != "exhausted") {
				t.Fatalf("grab %v: %s", k, a.raw)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.relay.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := wallet.Audit(ctx, s.env.Store, s.ledger, time.Now().Add(-time.Hour), time.Now())
	if err != nil || !rep.OK() || rep.Receipts != packets*shares {
		t.Fatalf("audit: %+v %v", rep, err)
	}
}

// TestDatabaseOutageAnswers503AndRecovers kills the cell's MariaDB: every verb answers 503
// with Retry-After (never a 500, never a wrong amount), and after the restart the same
// requests succeed with the results they would have had.
func TestDatabaseOutageAnswers503AndRecovers(t *testing.T) {
	m := testenv.StartMariaDB(t)
	s := startOn(t, storetest.NewOn(t, m, storetest.Options{}), nil, queue.Config{Workers: 2})
	id := s.do(t, "POST", "/v1/packets", wrapBody("db", 1000, 10)).str("packetId")
	if p := s.do(t, "POST", "/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "pdb", "amountCents": 1000}); p.status != 200 {
		t.Fatalf("pay: %d %s", p.status, p.raw)
	}
	first := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": "before"})
	if first.status != 200 {
		t.Fatalf("open: %d %s", first.status, first.raw)
	}
	m.Kill()
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/packets/" + id + "/open", map[string]any{"user": "during"}},
		{"POST", "/v1/packets/" + id + "/grab", map[string]any{"user": "during"}},
		{"GET", "/v1/packets/" + id, nil},
		{"POST", "/v1/packets", wrapBody("db2", 1000, 10)},
	} {
		a := s.do(t, c.method, c.path, c.body)
		if a.status != 503 || a.header.Get("Retry-After") == "" {
			t.Fatalf("%s %s during outage: %d %s", c.method, c.path, a.status, a.raw)
		}
	}
	m.Restart()
	deadline := time.Now().Add(60 * time.Second)
	var during answer
	for {
		during = s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": "during"})
		if during.status != 503 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // a client's retry interval
	}
	if during.status != 200 || during.body["repeat"] != false {
		t.Fatalf("open after restart: %d %s", during.status, during.raw)
	}
	again := s.do(t, "POST", "/v1/packets/"+id+"/open", map[string]any{"user": "before"})
	if again.status != 200 || again.num("amountCents") != first.num("amountCents") || again.body["repeat"] != true {
		t.Fatalf("repeat open after restart: %s, first %s", again.raw, first.raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.relay.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := wallet.Audit(ctx, s.env.Store, s.ledger, time.Now().Add(-time.Hour), time.Now())
	if err != nil || !rep.OK() || rep.Receipts != 2 {
		t.Fatalf("audit: %+v %v", rep, err)
	}
}

// TestStrictJSONStillTakesOrdinaryBodies: exact names in any order, whitespace around the
// object (curl and json.Encoder end with a newline) and nested values are all fine.
func TestStrictJSONStillTakesOrdinaryBodies(t *testing.T) {
	s := start(t)
	w := s.do(t, "POST", "/v1/packets", " \n{\"kind\":\"random\",\"count\":2,\n \"totalCents\":200,\"requestId\":\"ws\",\"sender\":\"alice\",\"greeting\":\"{\\\"x\\\":1}\"}\n\t")
	if w.status != http.StatusCreated || w.num("totalCents") != 200 || w.str("greeting") != `{"x":1}` {
		t.Fatalf("wrap with whitespace: %d %s", w.status, w.raw)
	}
	if p := s.do(t, "POST", "/v1/packets/"+w.str("packetId")+"/pay", "{\"paymentTxnId\":\"ws\",\"amountCents\":200}\n"); p.status != http.StatusOK {
		t.Fatalf("pay with trailing newline: %d %s", p.status, p.raw)
	}
}

package gateway

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

var key = []byte("gateway-test-key-0123456789abcdef")

// fakeServer is one cell server: real HTTP behind the real signature verifier, recording what
// reached it. The real cell server is built elsewhere; these tests are about where requests go.
type fakeServer struct {
	cell string
	srv  *httptest.Server
	*fakeCell

	mu    sync.Mutex
	calls []call
}

type call struct {
	method, path, slot string
}

// fakeCell is state shared by a cell's servers: its history and its create policy.
type fakeCell struct {
	name    string
	history map[string][]histItem // user -> items
	// refuse decides whether a create in slot is refused with slot_unavailable.
	refuse func(requestID string, slot int) bool
	mu     sync.Mutex
	ready  map[string]bool
}

type histItem struct {
	PacketID string `json:"packetId"`
	At       int64  `json:"at"`
	Cell     string `json:"cell"`
}

func (s *fakeServer) record(r *http.Request) {
	s.mu.Lock()
	s.calls = append(s.calls, call{r.Method, r.URL.Path, r.Header.Get(routing.HeaderSlot)})
	s.mu.Unlock()
}

func (s *fakeServer) Calls() []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func newFakeServer(t testing.TB, c *fakeCell) *fakeServer {
	t.Helper()
	s := &fakeServer{cell: c.name, fakeCell: c}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		ok := true
		if v, set := c.ready[s.srv.URL]; set {
			ok = v
		}
		c.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /v1/packets", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		var req struct {
			RequestID string `json:"requestId"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req) // a bad body shows as an empty requestId below
		slot, err := strconv.Atoi(r.Header.Get(routing.HeaderSlot))
		if err != nil {
			http.Error(w, `{"code":"invalid_input"}`, http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		refuse := c.refuse
		c.mu.Unlock()
		if refuse != nil && refuse(req.RequestID, slot) {
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"code":"slot_unavailable","message":"slot masked","field":""}`))
			return
		}
		id, _ := ids.Compose(ids.Parts{Created: time.Now(), Slot: slot, Seq: rand.IntN(ids.MaxSeq)})
		fmt.Fprintf(w, `{"packetId":"%d","cell":%q,"server":%q}`, id, c.name, s.srv.URL)
	})
	answer := func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, `{"cell":%q,"server":%q,"body":%q}`, c.name, s.srv.URL, body)
	}
	mux.HandleFunc("GET /v1/packets/{id}", answer)
	mux.HandleFunc("POST /v1/packets/{id}/{verb}", answer)
	mux.HandleFunc("GET /v1/users/{user}/{role}", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		items := slices.Clone(c.history[r.PathValue("user")])
		sortItems(items)
		q := r.URL.Query()
		limit, _ := strconv.Atoi(q.Get("limit"))
		if b := q.Get("before"); b != "" {
			cur, err := routing.ParseHistoryCursor(b)
			if err != nil {
				http.Error(w, `{"code":"invalid_input","field":"before"}`, http.StatusBadRequest)
				return
			}
			items = slices.DeleteFunc(items, func(it histItem) bool { return !cur.NewerThan(itemPos(it)) })
		}
		page := historyPageOut{Items: []histItem{}}
		if len(items) > limit {
			page.Next = itemPos(items[limit-1]).String()
			items = items[:limit]
		}
		page.Items = append(page.Items, items...)
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			// Like a real server behind a compressing middleware.
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			defer zw.Close()
			_ = json.NewEncoder(zw).Encode(page)
			return
		}
		_ = json.NewEncoder(w).Encode(page)
	})
	v := signing.NewVerifier(key, 0)
	s.srv = httptest.NewServer(v.Middleware(mux))
	t.Cleanup(s.srv.Close)
	return s
}

type historyPageOut struct {
	Items []histItem `json:"items"`
	Next  string     `json:"next"`
}

func itemPos(it histItem) Cursor {
	id, _ := strconv.ParseInt(it.PacketID, 10, 64)
	return Cursor{AtMillis: it.At, PacketID: id}
}

func sortItems(items []histItem) {
	slices.SortFunc(items, func(a, b histItem) int {
		pa, pb := itemPos(a), itemPos(b)
		switch {
		case pa.NewerThan(pb):
			return -1
		case pb.NewerThan(pa):
			return 1
		}
		return 0
	})
}

// harness is a gateway in front of fake cells, routed by a real routing file.
type harness struct {
	t       testing.TB
	path    string
	watcher *routing.Watcher
	gw      *Gateway
	front   *httptest.Server
	cells   map[string]*fakeCell
	servers map[string][]*fakeServer
	reg     *prometheus.Registry
}

var (
	epoch1 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	epoch2 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
)

// newHarness starts serversPerCell fake servers for each cell and a gateway routing by table,
// whose endpoints it fills in.
func newHarness(t testing.TB, table *routing.Table, serversPerCell int, cells ...*fakeCell) *harness {
	t.Helper()
	return newHarnessWith(t, table, serversPerCell, nil, cells...)
}

// newHarnessWith is newHarness with tune applied to the gateway's Config, and before applies
// to the harness once its fake servers exist and before the gateway starts.
func newHarnessWith(t testing.TB, table *routing.Table, serversPerCell int, tune func(*Config, *harness), cells ...*fakeCell) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "routing.json"), cells: map[string]*fakeCell{}, servers: map[string][]*fakeServer{}}
	table.Endpoints = map[string][]string{}
	for _, c := range cells {
		h.cells[c.name] = c
		for range serversPerCell {
			s := newFakeServer(t, c)
			h.servers[c.name] = append(h.servers[c.name], s)
			table.Endpoints[c.name] = append(table.Endpoints[c.name], s.srv.URL)
		}
	}
	h.write(table)
	var err error
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h.watcher, err = routing.NewWatcher(h.path, 5*time.Millisecond, quiet)
	if err != nil {
		t.Fatal(err)
	}
	h.reg = prometheus.NewRegistry()
	cfg := Config{Routing: h.watcher, Signer: signing.NewSigner(key), Registerer: h.reg, Log: quiet, ProbeInterval: 10 * time.Millisecond}
	if tune != nil {
		tune(&cfg, h)
	}
	h.gw, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go h.watcher.Run(ctx)
	h.gw.Probe(ctx)
	go h.gw.Run(ctx)
	h.front = httptest.NewServer(h.gw.Handler())
	t.Cleanup(h.front.Close)
	return h
}

func (h *harness) write(table *routing.Table) {
	h.t.Helper()
	data, err := table.Marshal()
	if err != nil {
		h.t.Fatal(err)
	}
	h.writeRaw(data)
}

func (h *harness) writeRaw(data []byte) {
	h.t.Helper()
	tmp := h.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		h.t.Fatal(err)
	}
}

type answer struct {
	status int
	cell   string
	body   map[string]any
	raw    string
}

func (h *harness) do(method, path, body string) answer {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.front.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, cell: resp.Header.Get(routing.HeaderCell), raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body) // not every answer is JSON; raw keeps it
	return a
}

func packetID(t testing.TB, created time.Time, slot, seq int) int64 {
	t.Helper()
	id, err := ids.Compose(ids.Parts{Created: created, Slot: slot, Seq: seq})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// twoEpochTable: 10 slots; epoch 1 splits a|b, epoch 2 gives slots 3,4 and 8,9 to cell c.
func twoEpochTable() *routing.Table {
	return &routing.Table{
		Set: "rp", SlotCount: 10,
		Epochs: []routing.Epoch{
			{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 4, Cell: "a"}, {Start: 5, End: 9, Cell: "b"}}},
			{Number: 2, EffectiveTime: epoch2, Ranges: []routing.SlotRange{{Start: 0, End: 2, Cell: "a"}, {Start: 3, End: 4, Cell: "c"}, {Start: 5, End: 7, Cell: "b"}, {Start: 8, End: 9, Cell: "c"}}},
		},
	}
}

func cellsABC() []*fakeCell {
	return []*fakeCell{{name: "a"}, {name: "b"}, {name: "c"}}
}

func TestRoutesByEpochOfCreation(t *testing.T) {
	h := newHarness(t, twoEpochTable(), 2, cellsABC()...)
	cases := []struct {
		created time.Time
		slot    int
		want    string
	}{
		{epoch2.Add(-time.Second), 3, "a"}, // created before epoch 2: stays with the old owner
		{epoch2, 3, "c"},
		{epoch2.Add(time.Hour), 4, "c"},
		{epoch1.Add(time.Hour), 9, "b"},
		{epoch2.Add(time.Hour), 9, "c"},
		{epoch2.Add(time.Hour), 6, "b"},
		{epoch1.Add(-time.Hour), 0, "a"}, // older than every epoch: the first one
	}
	for _, c := range cases {
		id := packetID(t, c.created, c.slot, 1)
		for _, verb := range []string{"pay", "grab", "open"} {
			a := h.do("POST", fmt.Sprintf("/v1/packets/%d/%s", id, verb), `{"userId":"u1"}`)
			if a.status != http.StatusOK || a.cell != c.want || a.body["cell"] != c.want {
				t.Fatalf("%s packet slot %d created %s: %d from %q (%s), want cell %s", verb, c.slot, c.created, a.status, a.cell, a.raw, c.want)
			}
			if a.body["body"] != `{"userId":"u1"}` {
				t.Fatalf("body not forwarded unchanged: %v", a.body["body"])
			}
		}
		if a := h.do("GET", fmt.Sprintf("/v1/packets/%d", id), ""); a.status != http.StatusOK || a.cell != c.want {
			t.Fatalf("details of slot %d: %d from %q", c.slot, a.status, a.cell)
		}
	}
}

func TestBadPacketRequests(t *testing.T) {
	table := twoEpochTable()
	h := newHarness(t, table, 1, cellsABC()...)
	for _, bad := range []string{"abc", "0", "-5", "012", "99999999999999999999", "1.5"} {
		a := h.do("GET", "/v1/packets/"+bad, "")
		if a.status != http.StatusBadRequest || a.body["code"] != "invalid_input" || a.body["field"] != "id" || a.body["message"] == "" {
			t.Errorf("id %q: %d %s", bad, a.status, a.raw)
		}
	}
	// Slot 500 is outside this set's 10 slots: nobody owns it.
	a := h.do("GET", fmt.Sprintf("/v1/packets/%d", packetID(t, epoch2, 500, 0)), "")
	if a.status != http.StatusNotFound || a.body["code"] != "not_found" || a.body["field"] != "id" {
		t.Errorf("unowned slot: %d %s", a.status, a.raw)
	}
	// Another region's packet.
	other, _ := ids.Compose(ids.Parts{Created: epoch2, Region: 1, Slot: 1})
	if a := h.do("GET", fmt.Sprintf("/v1/packets/%d", other), ""); a.status != http.StatusMisdirectedRequest || a.body["code"] != "wrong_region" {
		t.Errorf("other region: %d %s", a.status, a.raw)
	}
	if a := h.do("DELETE", fmt.Sprintf("/v1/packets/%d/open", packetID(t, epoch2, 1, 0)), ""); a.status != http.StatusMethodNotAllowed || a.body["code"] != "method_not_allowed" {
		t.Errorf("DELETE open: %d %s", a.status, a.raw)
	}
	// Unknown paths: 404 no_route, and no "field" since no input is at fault (docs/api.md).
	for _, path := range []string{fmt.Sprintf("/v1/packets/%d/steal", packetID(t, epoch2, 1, 0)), "/v1/users/u1/liked", "/v1/nothing", "/v2/packets", "/", "/v1/packets/1/open/more"} {
		a := h.do("POST", path, "")
		if _, hasField := a.body["field"]; a.status != http.StatusNotFound || a.body["code"] != "no_route" || hasField || a.body["message"] == "" {
			t.Errorf("unknown path %s: %d %s", path, a.status, a.raw)
		}
	}
	// Every gateway refusal omits an empty field, like the cell's.
	if a := h.do("DELETE", fmt.Sprintf("/v1/packets/%d/open", packetID(t, epoch2, 1, 0)), ""); strings.Contains(a.raw, `"field"`) {
		t.Errorf("empty field written: %s", a.raw)
	}
	// A cell whose servers are all unready answers 503; the gateway stays ready for the
	// other cells (TestOneDownCellLeavesTheGatewayReady).
	h.cells["c"].mu.Lock()
	h.cells["c"].ready = map[string]bool{table.Endpoints["c"][0]: false}
	h.cells["c"].mu.Unlock()
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return len(h.gw.ReadyServers("c")) == 0 }))
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", packetID(t, epoch2, 3, 0)), "{}"); a.status != http.StatusServiceUnavailable || a.body["code"] != "cell_unavailable" {
		t.Errorf("unready cell: %d %s", a.status, a.raw)
	}
	if a := h.do("GET", "/readyz", ""); a.status != http.StatusOK {
		t.Errorf("readyz with one dead cell: %d %s", a.status, a.raw)
	}
	if a := h.do("GET", "/healthz", ""); a.status != http.StatusOK {
		t.Errorf("healthz: %d", a.status)
	}
}

func TestCreateNeverPicksMaskedSlots(t *testing.T) {
	table := &routing.Table{
		Set: "rp", SlotCount: 100,
		Epochs: []routing.Epoch{
			{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 49, Cell: "a"}, {Start: 50, End: 99, Cell: "b"}}},
			// In force from now on: c takes 80..99.
			{Number: 2, EffectiveTime: time.Now().Add(-time.Minute).Truncate(time.Second), Ranges: []routing.SlotRange{{Start: 0, End: 49, Cell: "a"}, {Start: 50, End: 79, Cell: "b"}, {Start: 80, End: 99, Cell: "c"}}},
		},
		Masked: []routing.MaskedRange{{Start: 0, End: 44, Reason: "db_00 errors"}, {Start: 60, End: 79, Reason: "db_06 errors"}},
	}
	h := newHarness(t, table, 2, cellsABC()...)
	used := map[int]int{}
	perCell := map[string]int{}
	const creates = 600
	for i := range creates {
		a := h.do("POST", "/v1/packets", fmt.Sprintf(`{"sender":"s%d","requestId":"r%d","totalCents":100,"count":2}`, i, i))
		if a.status != http.StatusOK {
			t.Fatalf("create %d: %d %s", i, a.status, a.raw)
		}
		perCell[a.cell]++
	}
	for _, servers := range h.servers {
		for _, s := range servers {
			for _, c := range s.Calls() {
				slot, _ := strconv.Atoi(c.slot)
				if table.IsMasked(slot) {
					t.Fatalf("create sent to masked slot %d", slot)
				}
				if owner, _, _ := table.OwnerAt(slot, time.Now()); owner != s.cell {
					t.Fatalf("create for slot %d sent to cell %s, owner is %s", slot, s.cell, owner)
				}
				used[slot]++
			}
		}
	}
	// A create goes to the home of its key (the owner of the key's slot in the epoch in force,
	// masked or not: masks stop IDs, not keys), so creates follow owned slots: a 50, b 30,
	// c 20. Inside its home it lands on a creatable slot: 45..49 (a), 50..59 (b), 80..99 (c).
	for cell, share := range map[string]float64{"a": 50.0 / 100, "b": 30.0 / 100, "c": 20.0 / 100} {
		if got := float64(perCell[cell]) / creates; got < share-0.07 || got > share+0.07 {
			t.Errorf("cell %s got %.2f of creates, its slots are %.2f", cell, got, share)
		}
	}
	if len(used) < 30 {
		t.Errorf("only %d of 35 creatable slots used in %d creates", len(used), creates)
	}
	// The same create again (a client retry) goes to the same slot, so the cell's idempotency
	// on (sender, request ID) can answer it.
	for i := range 20 {
		body := fmt.Sprintf(`{"sender":"s%d","requestId":"r%d"}`, i, i)
		first, second := h.do("POST", "/v1/packets", body), h.do("POST", "/v1/packets", body)
		if first.cell != second.cell || slotOf(t, first) != slotOf(t, second) {
			t.Fatalf("retried create moved from %s slot %d to %s slot %d", first.cell, slotOf(t, first), second.cell, slotOf(t, second))
		}
	}
}

func slotOf(t *testing.T, a answer) int {
	t.Helper()
	s, _ := a.body["packetId"].(string)
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("no packet id in %s", a.raw)
	}
	return ids.Slot(id)
}

func TestCreateRetriesOnceOnSlotUnavailable(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	// Each cell refuses the first attempt of every create and accepts the second.
	refuseFirst := func(requestID string, slot int) bool {
		mu.Lock()
		defer mu.Unlock()
		seen[requestID]++
		return seen[requestID] == 1
	}
	table := twoEpochTable()
	cells := []*fakeCell{{name: "a", refuse: refuseFirst}, {name: "b", refuse: refuseFirst}, {name: "c", refuse: refuseFirst}}
	h := newHarness(t, table, 1, cells...)
	for i := range 20 {
		a := h.do("POST", "/v1/packets", fmt.Sprintf(`{"sender":"s","requestId":"q%d"}`, i))
		if a.status != http.StatusOK {
			t.Fatalf("create %d after one refusal: %d %s", i, a.status, a.raw)
		}
	}
	attempts := 0
	for _, servers := range h.servers {
		for _, s := range servers {
			attempts += len(s.Calls())
		}
	}
	if attempts != 40 {
		t.Fatalf("%d attempts for 20 creates, want exactly 2 each", attempts)
	}
	if got := testutil.ToFloat64(h.gw.metrics.createRetries); got != 20 {
		t.Errorf("retry metric = %v", got)
	}

	// A cell that refuses every slot: maxCreateAttempts distinct slots, then a 503 the client
	// may retry (nothing was created; the cell's 409 is internal to the wire).
	var tried []int
	for _, c := range h.cells {
		c.mu.Lock()
		c.refuse = func(_ string, slot int) bool {
			mu.Lock()
			defer mu.Unlock()
			tried = append(tried, slot)
			return true
		}
		c.mu.Unlock()
	}
	a := h.do("POST", "/v1/packets", `{"sender":"s","requestId":"doomed"}`)
	if a.status != http.StatusServiceUnavailable || a.body["code"] != routing.CodeNoSlotAvailable {
		t.Fatalf("always refused: %d %s", a.status, a.raw)
	}
	mu.Lock()
	defer mu.Unlock()
	distinct := map[int]bool{}
	for _, sl := range tried {
		distinct[sl] = true
	}
	// The home has fewer creatable slots than maxCreateAttempts here: each is tried once.
	if n := len(tried); n < 2 || n > maxCreateAttempts || len(distinct) != n {
		t.Fatalf("doomed create tried slots %v, want 2..%d distinct ones", tried, maxCreateAttempts)
	}
}

// TestCreateAvoidsATableTheGatewayDoesNotKnowIsMasked is the seam after a database restart:
// the cell has masked one logical table (a quarter of its slots) that the gateway's routing
// table does not list yet. Every create still lands, in a slot of another table.
func TestCreateAvoidsATableTheGatewayDoesNotKnowIsMasked(t *testing.T) {
	maskedTable := func(_ string, slot int) bool { return slot%10 == 1 || slot%10 == 3 } // tables t_1 of a 2x2 layout
	table := twoEpochTable()
	h := newHarness(t, table, 1, &fakeCell{name: "a", refuse: maskedTable}, &fakeCell{name: "b", refuse: maskedTable}, &fakeCell{name: "c", refuse: maskedTable})
	for i := range 300 {
		a := h.do("POST", "/v1/packets", fmt.Sprintf(`{"sender":"s","requestId":"m%d"}`, i))
		if a.status != http.StatusOK {
			t.Fatalf("create %d with a table masked only at the cell: %d %s", i, a.status, a.raw)
		}
	}
}

func TestRendezvousPinsPacketToOneServer(t *testing.T) {
	table := &routing.Table{Set: "rp", SlotCount: 10, Epochs: []routing.Epoch{
		{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 9, Cell: "a"}}},
	}}
	h := newHarness(t, table, 4, &fakeCell{name: "a"})
	serverOf := map[string]string{} // path prefix -> server
	for i := range 60 {
		id := packetID(t, epoch2, i%10, i)
		for range 3 {
			for _, verb := range []string{"grab", "open", "pay"} {
				if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/%s", id, verb), "{}"); a.status != http.StatusOK {
					t.Fatalf("%s: %d", verb, a.status)
				}
			}
			h.do("GET", fmt.Sprintf("/v1/packets/%d", id), "")
		}
	}
	for _, s := range h.servers["a"] {
		for _, c := range s.Calls() {
			id := strings.Split(c.path, "/")[3]
			if prev, ok := serverOf[id]; ok && prev != s.srv.URL {
				t.Fatalf("packet %s reached %s and %s", id, prev, s.srv.URL)
			}
			serverOf[id] = s.srv.URL
		}
	}
	used := map[string]int{}
	for _, s := range serverOf {
		used[s]++
	}
	if len(serverOf) != 60 || len(used) != 4 {
		t.Fatalf("%d packets over %d servers; want 60 spread over all 4", len(serverOf), len(used))
	}

	// One server goes unready: only its packets move.
	gone := h.servers["a"][1].srv.URL
	h.cells["a"].mu.Lock()
	h.cells["a"].ready = map[string]bool{gone: false}
	h.cells["a"].mu.Unlock()
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return len(h.gw.ReadyServers("a")) == 3 }))
	for id, server := range serverOf {
		n, _ := strconv.ParseInt(id, 10, 64)
		_, now, _, err := h.gw.route(n)
		if err != nil {
			t.Fatal(err)
		}
		if server != gone && now != server {
			t.Fatalf("packet %s moved from %s to %s although its server stayed", id, server, now)
		}
		if now == gone {
			t.Fatalf("packet %s still routed to the unready server", id)
		}
	}
}

func TestHistoryMergesAcrossCellsWithCursor(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	cells := cellsABC()
	var all []histItem
	base := epoch2.UnixMilli()
	for i, c := range cells {
		c.history = map[string][]histItem{}
		for j := range 23 + 7*i {
			// Coarse times so several items share a millisecond across cells: the packet ID breaks ties.
			it := histItem{PacketID: strconv.FormatInt(packetID(t, epoch2, i*3, j)+int64(rng.IntN(1000))*1000, 10), At: base + int64(rng.IntN(40))*1000, Cell: c.name}
			c.history["u1"] = append(c.history["u1"], it)
			all = append(all, it)
		}
		c.history["someone-else"] = []histItem{{PacketID: "1000", At: base, Cell: c.name}}
	}
	sortItems(all)
	h := newHarness(t, twoEpochTable(), 2, cells...)

	for _, limit := range []int{1, 7, 20, 100} {
		var got []histItem
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 200 {
				t.Fatal("paging does not end")
			}
			path := fmt.Sprintf("/v1/users/u1/received?limit=%d", limit)
			if cursor != "" {
				path += "&before=" + cursor
			}
			resp, err := http.Get(h.front.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			var page historyPageOut
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("page %d: %d", pages, resp.StatusCode)
			}
			if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
				t.Fatalf("page %d: %v", pages, err)
			}
			resp.Body.Close()
			if len(page.Items) > limit {
				t.Fatalf("page of %d items, limit %d", len(page.Items), limit)
			}
			got = append(got, page.Items...)
			if page.Next == "" {
				break
			}
			cursor = page.Next
		}
		if len(got) != len(all) {
			t.Fatalf("limit %d: paged %d items, cells hold %d", limit, len(got), len(all))
		}
		for i := range all {
			if got[i] != all[i] {
				t.Fatalf("limit %d: item %d = %+v, want %+v", limit, i, got[i], all[i])
			}
		}
	}
	for _, bad := range []string{"?limit=0", "?limit=101", "?limit=x", "?before=12", "?before=a:b"} {
		a := h.do("GET", "/v1/users/u1/sent"+bad, "")
		field := "limit"
		if strings.Contains(bad, "before") {
			field = "before"
		}
		if a.status != http.StatusBadRequest || a.body["code"] != "invalid_input" || a.body["field"] != field {
			t.Errorf("%s: %d %s", bad, a.status, a.raw)
		}
	}
	if a := h.do("GET", "/v1/users/u1/liked", ""); a.status != http.StatusNotFound {
		t.Errorf("unknown history role: %d", a.status)
	}
}

func TestUnsignedOrWronglySignedCallsAreRefusedByCells(t *testing.T) {
	h := newHarness(t, twoEpochTable(), 1, cellsABC()...)
	server := h.servers["a"][0].srv.URL
	id := packetID(t, epoch2, 1, 0)
	resp, err := http.Post(fmt.Sprintf("%s/v1/packets/%d/open", server, id), "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned call straight to a cell: %d", resp.StatusCode)
	}
	// A gateway holding the wrong key is refused too, and says so with the cell's answer.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	wrong, _ := New(Config{Routing: h.watcher, Signer: signing.NewSigner(bytes.Repeat([]byte("x"), 32)), Log: quiet})
	wrong.Probe(context.Background())
	front := httptest.NewServer(wrong.Handler())
	defer front.Close()
	if len(wrong.ReadyServers("a")) != 0 {
		t.Fatal("servers refusing our signature counted as ready")
	}
	// Every call through the right gateway was verified by the cells' verifiers: they answer
	// 200 only past signing.Verifier.
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", id), "{}"); a.status != http.StatusOK {
		t.Fatalf("signed call: %d %s", a.status, a.raw)
	}
}

func TestRoutingFileReloadChangesRouting(t *testing.T) {
	table := &routing.Table{Set: "rp", SlotCount: 10, Epochs: []routing.Epoch{
		{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 4, Cell: "a"}, {Start: 5, End: 9, Cell: "b"}}},
	}}
	cells := cellsABC()
	h := newHarness(t, table, 1, cells...)
	future := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	id := packetID(t, future, 3, 0)
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", id), "{}"); a.cell != "a" {
		t.Fatalf("before reload: cell %q", a.cell)
	}
	// Scale out: epoch 2 from an hour ahead gives slots 3..4 to c. Packets from then on move.
	next := *table
	next.Epochs = append(slices.Clone(table.Epochs), routing.Epoch{
		Number: 2, EffectiveTime: future.Add(-time.Hour),
		Ranges: []routing.SlotRange{{Start: 0, End: 2, Cell: "a"}, {Start: 3, End: 4, Cell: "c"}, {Start: 5, End: 9, Cell: "b"}},
	})
	changed := h.watcher.Changed()
	h.write(&next)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("routing file not reloaded")
	}
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return len(h.gw.ReadyServers("c")) == 1 }))
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", id), "{}"); a.status != http.StatusOK || a.cell != "c" {
		t.Fatalf("after reload: %d cell %q", a.status, a.cell)
	}
	// A packet created now still belongs to a.
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", packetID(t, time.Now(), 3, 0)), "{}"); a.cell != "a" {
		t.Fatalf("packet created before the new epoch moved to %q", a.cell)
	}
	if got := testutil.ToFloat64(h.gw.metrics.requests.WithLabelValues("open", "200")); got != 3 {
		t.Errorf("open/200 counter = %v", got)
	}
	if n, _ := testutil.GatherAndCount(h.reg, "rp_gateway_routing_epoch"); n != 1 {
		t.Errorf("epoch gauge missing")
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP rp_gateway_routing_epoch Number of the newest epoch in the loaded routing table.
# TYPE rp_gateway_routing_epoch gauge
rp_gateway_routing_epoch 2
# HELP rp_gateway_routing_file_refused 1 while the routing file's current content is refused and the last good table is in force.
# TYPE rp_gateway_routing_file_refused gauge
rp_gateway_routing_file_refused 0
`), "rp_gateway_routing_epoch", "rp_gateway_routing_file_refused"); err != nil {
		t.Error(err)
	}
	// A broken file keeps routing as it was and raises the gauge.
	h.writeRaw([]byte("{broken"))
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(h.watcher.Failing))
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", id), "{}"); a.status != http.StatusOK || a.cell != "c" {
		t.Fatalf("after a broken file: %d cell %q", a.status, a.cell)
	}
}

func TestHistoryWithClientAskingForGzip(t *testing.T) {
	cells := cellsABC()
	for i, c := range cells {
		c.history = map[string][]histItem{"u": {{PacketID: strconv.Itoa(1000 + i), At: int64(i), Cell: c.name}}}
	}
	h := newHarness(t, twoEpochTable(), 1, cells...)
	req, _ := http.NewRequest("GET", h.front.URL+"/v1/users/u/sent", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page historyPageOut
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK || len(page.Items) != 3 {
		t.Fatalf("history with gzip asked: %d %v %+v", resp.StatusCode, err, page)
	}
}

func TestDeadServerFailsOverWithoutWaitingForProbe(t *testing.T) {
	table := &routing.Table{Set: "rp", SlotCount: 10, Epochs: []routing.Epoch{
		{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 9, Cell: "a"}}},
	}}
	h := newHarness(t, table, 3, &fakeCell{name: "a"})
	// A gateway of our own that probes only when told, so the probe cannot hide the failover.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	gw, err := New(Config{Routing: h.watcher, Signer: signing.NewSigner(key), Log: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	gw.Probe(context.Background())
	front := httptest.NewServer(gw.Handler())
	defer front.Close()

	dead := h.servers["a"][0]
	var victims []int64
	for i := 0; len(victims) < 5; i++ {
		id := packetID(t, epoch2, i%10, i)
		if _, s, _, _ := gw.route(id); s == dead.srv.URL {
			victims = append(victims, id)
		}
	}
	dead.srv.Close()
	for _, id := range victims {
		resp, err := http.Post(fmt.Sprintf("%s/v1/packets/%d/open", front.URL, id), "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("open of packet %d on a dead server: %d", id, resp.StatusCode)
		}
	}
	if got := testutil.ToFloat64(gw.metrics.failovers.WithLabelValues("a")); got != 1 {
		t.Errorf("failovers = %v, want 1 (the dead server leaves rotation at once)", got)
	}
	if slices.Contains(gw.ReadyServers("a"), dead.srv.URL) {
		t.Error("dead server still in rotation")
	}

	// With every server dead the answer is a clean 503.
	for _, s := range h.servers["a"] {
		s.srv.Close()
	}
	resp, err := http.Post(fmt.Sprintf("%s/v1/packets/%d/open", front.URL, victims[0]), "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("all servers dead: %d", resp.StatusCode)
	}
}

// TestHistorySkipsCellsOfALaterEpoch: a cell named only by an epoch that takes effect later
// holds no record and is often not serving yet (it is created when its epoch is decided), so a
// user's history does not wait for it. Within the hand-over margin of that epoch it may hold
// records already (a server clock ahead of the gateway's), and then it must answer.
func TestHistorySkipsCellsOfALaterEpoch(t *testing.T) {
	later := time.Now().Add(10 * time.Minute).Truncate(time.Second)
	table := &routing.Table{
		Set: "rp", SlotCount: 10,
		Epochs: []routing.Epoch{
			{Number: 1, EffectiveTime: epoch1, Ranges: []routing.SlotRange{{Start: 0, End: 4, Cell: "a"}, {Start: 5, End: 9, Cell: "b"}}},
			{Number: 2, EffectiveTime: later, Ranges: []routing.SlotRange{{Start: 0, End: 2, Cell: "a"}, {Start: 3, End: 4, Cell: "c"}, {Start: 5, End: 7, Cell: "b"}, {Start: 8, End: 9, Cell: "c"}}},
		},
	}
	cells := cellsABC()
	for _, c := range cells {
		c.history = map[string][]histItem{"u1": {{PacketID: strconv.FormatInt(packetID(t, epoch1.Add(time.Hour), 1, 0), 10), At: epoch1.Add(time.Hour).UnixMilli(), Cell: c.name}}}
	}
	h := newHarness(t, table, 1, cells...)
	h.servers["c"][0].srv.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.gw.ReadyServers("c")) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("cell c still ready after its server closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a := h.do("GET", "/v1/users/u1/received", ""); a.status != http.StatusOK {
		t.Fatalf("history with a not-yet-serving cell of a later epoch: %d %s", a.status, a.raw)
	}
	table.Epochs[1].EffectiveTime = time.Now().Add(routing.HandoverMargin / 2).Truncate(time.Second)
	changed := h.watcher.Changed()
	h.write(table)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("table not reloaded")
	}
	if a := h.do("GET", "/v1/users/u1/received", ""); a.status != http.StatusServiceUnavailable || a.body["code"] != "cell_unavailable" {
		t.Fatalf("history with cell c down within the hand-over margin of its epoch: %d %s", a.status, a.raw)
	}
}

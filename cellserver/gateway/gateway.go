// Package gateway owns the access layer of a SET: it routes every packet request to the one
// cell server that must answer it, and fans a user's history out to every cell.
//
// Routing is a pure function of the packet ID and the routing table (docs/design.md §2, §4.4): the ID
// gives the slot (its last three digits) and the creation second; the table gives the cell that
// owned that slot at that second; rendezvous hashing of the ID over the cell's ready servers
// gives the server. So every request about one packet meets one per-packet queue, and a server
// leaving moves only its own packets. Creates have no ID yet: the gateway picks the slot itself,
// within the home cell of the create's idempotency key (routing/keyhome.go), and tells the cell
// with the X-Redpacket-Slot header; when the cell refuses the slot (409 slot_unavailable:
// masked, tripped or no longer owned) it retries once with another slot of the same cell. A
// key's home is the owner of its key slot, which masks never move, so every retry of one
// create meets one wrap_requests row; an epoch that moves the key slot makes the gateway ask
// the key's earlier homes first. A payment notice is claimed in its txn's home before the
// packet's cell activates it, so one notice activates at most one packet in the whole set.
//
// Every call to a cell is signed (cellserver/signing). The routing table reloads without a
// restart (routing.Watcher); servers come from the table (local mode) or from DNS (Kubernetes)
// and are used only once their /readyz answers.
//
// What the gateway expects of the cell API (cellserver/httpapi):
//
//   - POST /v1/packets with the slot header (routing.HeaderSlot): issue the packet's ID in that slot, or answer 409
//     {"code":"slot_unavailable"} without creating anything. The body is the client's, with
//     "sender" and "requestId" (the create's idempotency key).
//   - POST /v1/packets/{id}/pay|grab|open and GET /v1/packets/{id}: IDs as decimal strings.
//   - GET /v1/users/{user}/sent|received?before=<atMillis>:<packetId>&limit=N: at most N items
//     strictly older than the cursor, newest first (at desc, packetId desc), as
//     {"items":[{"packetId":"<decimal>","at":<epoch millis>, ...}],"next":"<cursor>"|""}, next
//     non-empty when more items exist. "at" may also be an RFC 3339 string.
//   - GET /readyz: 200 when the server can take requests.
//   - Every route behind signing.Verifier.Middleware with the gateway's key.
//
// This package must never decide anything about money or packet state: it forwards bodies
// unchanged, and it never retries a call that may have reached a cell except the create whose
// slot the cell explicitly refused.
package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
)

// TableSource gives the routing table in force; *routing.Watcher is one.
type TableSource interface{ Current() *routing.Table }

// TableOfferer is a TableSource that also takes a newer table from elsewhere than its own
// source (*routing.Watcher is one): the gateway offers it the table of a cell server that
// advertises a newer epoch, since servers load new epochs from their cell's database well
// before the kubelet refreshes the gateway's mounted ConfigMap.
type TableOfferer interface {
	Offer(data []byte, source string) (bool, error)
}

// Config wires a Gateway.
type Config struct {
	Routing  TableSource     // required
	Signer   *signing.Signer // required
	Resolver Resolver        // nil: StaticResolver (endpoints from the table)
	Client   *http.Client    // nil: a pooled client with UpstreamTimeout and TLS
	TLS      *tls.Config     // for https cell servers when Client is nil; nil: system roots
	// Registerer receives the gateway's metrics; nil registers them nowhere.
	Registerer    prometheus.Registerer
	Log           *slog.Logger
	ProbeInterval time.Duration // default 1s
	ProbeTimeout  time.Duration // default 1s
	// ProbeFailures is how many unanswered probes in a row take a ready server out of
	// rotation (default 3); a server answering "not ready" leaves at once.
	ProbeFailures   int
	UpstreamTimeout time.Duration // default 10s
	MaxBody         int64         // request bodies; default 1 MiB
	Region          int           // the region this gateway serves (ids.Region)
	HistoryLimit    int           // default page size; default 20
	MaxHistoryLimit int           // default 100
	// StartupGrace bounds how long a starting gateway stays unready until it has seen a ready
	// server in every cell of the epochs in force (default 1m): a gateway that starts beside a
	// new set, or before cluster DNS has its cells, would otherwise take traffic and answer
	// 503 cell_unavailable for cells that are up. A cell still down after the grace no longer
	// holds it back: one cell down must not keep a restarted gateway out of its Service.
	StartupGrace time.Duration
	Now          func() time.Time
}

// Gateway routes requests to cells. Create it with New, serve Handler, and keep Run going.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	client   *http.Client
	ready    *readiness
	metrics  *metrics
	probed   atomic.Bool
	draining atomic.Bool
	started  time.Time
	// warmed: every cell in force has been seen with a ready server, or the grace ran out.
	warmed atomic.Bool
}

// Drain makes /readyz fail from now on, so load balancers stop sending new requests before
// the server shuts down; requests that still arrive are served.
func (g *Gateway) Drain() { g.draining.Store(true) }

// New checks cfg and builds a Gateway. No server is ready until the first Probe.
func New(cfg Config) (*Gateway, error) {
	if cfg.Routing == nil {
		return nil, errors.New("gateway: routing table source required")
	}
	if cfg.Signer == nil {
		return nil, errors.New("gateway: signer required")
	}
	if cfg.Resolver == nil {
		cfg.Resolver = StaticResolver{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.ProbeInterval = orDefault(cfg.ProbeInterval, time.Second)
	cfg.ProbeTimeout = orDefault(cfg.ProbeTimeout, time.Second)
	if cfg.ProbeFailures <= 0 {
		cfg.ProbeFailures = 3
	}
	cfg.UpstreamTimeout = orDefault(cfg.UpstreamTimeout, 10*time.Second)
	cfg.StartupGrace = orDefault(cfg.StartupGrace, time.Minute)
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.HistoryLimit <= 0 {
		cfg.HistoryLimit = 20
	}
	if cfg.MaxHistoryLimit <= 0 {
		cfg.MaxHistoryLimit = 100
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := cfg.Client
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 1024
		tr.MaxIdleConnsPerHost = 256 // one gateway talks to few servers, hard
		if cfg.TLS != nil {
			tr.TLSClientConfig = cfg.TLS.Clone()
		}
		client = &http.Client{Transport: tr, Timeout: cfg.UpstreamTimeout}
	}
	g := &Gateway{cfg: cfg, log: cfg.Log, client: client, started: cfg.Now()}
	g.metrics = newMetrics(cfg.Registerer, g)
	g.ready = &readiness{
		resolver:     cfg.Resolver,
		client:       client,
		signer:       cfg.Signer,
		timeout:      cfg.ProbeTimeout,
		softFailures: cfg.ProbeFailures,
		onProbe:      g.metrics.observeCell,
		logf:         func(msg string, args ...any) { g.log.Info(msg, args...) },
		ready:        map[string][]string{},
	}
	return g, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run probes cell servers every ProbeInterval until ctx ends.
func (g *Gateway) Run(ctx context.Context) {
	tick := time.NewTicker(g.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		g.Probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Probe resolves and probes every cell's servers once.
func (g *Gateway) Probe(ctx context.Context) {
	t := g.cfg.Routing.Current()
	if t == nil {
		return
	}
	server, epoch := g.ready.probe(ctx, t)
	g.probed.Store(true)
	g.warm(t)
	o, ok := g.cfg.Routing.(TableOfferer)
	if !ok || server == "" {
		return
	}
	data, err := g.ready.fetchTable(ctx, server, t.Latest().Number)
	if err == nil && data != nil {
		_, err = o.Offer(data, server)
	}
	if err != nil && ctx.Err() == nil {
		g.log.Warn("a cell server holds a newer routing table, and it could not be loaded from it", "server", server, "epoch", epoch, "err", err)
	}
}

// ReadyServers lists the servers of cell that answered their last probe.
func (g *Gateway) ReadyServers(cell string) []string { return g.ready.Ready(cell) }

// Ready is nil when the gateway can route: a table is loaded and at least one cell it names
// has a ready server. One cell down must not take the gateway out of its Service: that cell's
// packets get 503 cell_unavailable per request, every other cell's are served, and creates go
// to the cells that can take them. Per-cell health is in rp_gateway_cell_serving.
func (g *Gateway) Ready() error {
	if g.draining.Load() {
		return errors.New("draining for shutdown")
	}
	t := g.cfg.Routing.Current()
	if t == nil {
		return errors.New("no routing table loaded")
	}
	if !g.probed.Load() {
		return errors.New("cell servers not probed yet")
	}
	if err := ReadyFor(t, func(cell string) int { return len(g.ready.Ready(cell)) }); err != nil {
		return err
	}
	if missing := g.warm(t); len(missing) > 0 {
		return fmt.Errorf("starting: no ready server seen yet in cells %s (waiting at most %s)", strings.Join(missing, ", "), g.cfg.StartupGrace)
	}
	return nil
}

// warm records, after each probe round and on each readiness check, whether the gateway has
// seen every cell in force serve (or its startup grace ran out); once it has, it stays warm.
// It returns the cells still missing while it waits.
func (g *Gateway) warm(t *routing.Table) []string {
	if g.warmed.Load() {
		return nil
	}
	missing := WarmingUp(t, g.cfg.Now(), func(cell string) int { return len(g.ready.Ready(cell)) })
	if len(missing) > 0 && g.cfg.Now().Sub(g.started) < g.cfg.StartupGrace {
		return missing
	}
	if len(missing) > 0 {
		g.log.Warn("taking traffic after the startup grace with cells still unreachable", "cells", missing, "grace", g.cfg.StartupGrace)
	}
	g.warmed.Store(true)
	return nil
}

// WarmingUp lists the cells of the epochs in force at now with no ready server: what a
// starting gateway waits for before it takes traffic.
func WarmingUp(t *routing.Table, now time.Time, readyServers func(cell string) int) []string {
	var missing []string
	for _, cell := range t.CellsBy(now) {
		if readyServers(cell) == 0 {
			missing = append(missing, cell)
		}
	}
	return missing
}

// ReadyFor is the gateway's readiness rule, pure so the control-plane simulation checks the
// same one: a table with an epoch, and at least one cell it names with a ready server.
func ReadyFor(t *routing.Table, readyServers func(cell string) int) error {
	if t == nil {
		return errors.New("no routing table loaded")
	}
	if len(t.Epochs) == 0 {
		return errors.New("routing table has no epoch")
	}
	cells := t.AllCells()
	for _, cell := range cells {
		if readyServers(cell) > 0 {
			return nil
		}
	}
	return fmt.Errorf("no cell can serve: cells %s have no ready server", strings.Join(cells, ", "))
}

// Handler serves the public API, /healthz and /readyz.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := g.Ready(); err != nil {
			writeError(w, http.StatusServiceUnavailable, routing.CodeNotReady, "", err.Error())
			return
		}
		// The epoch held, for whoever checks a hand-over (also rp_gateway_routing_epoch).
		if t := g.cfg.Routing.Current(); t != nil && t.Latest() != nil {
			fmt.Fprintf(w, "ok epoch=%d\n", t.Latest().Number)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/v1/packets", g.instrument("create", http.MethodPost, g.serveCreate))
	mux.Handle("/v1/packets/{id}", g.instrument("details", http.MethodGet, func(w http.ResponseWriter, r *http.Request) {
		g.servePacket(w, r, "details")
	}))
	mux.HandleFunc("/v1/packets/{id}/{verb}", func(w http.ResponseWriter, r *http.Request) {
		verb := r.PathValue("verb")
		switch verb {
		case "pay", "grab", "open":
			g.instrument(verb, http.MethodPost, func(w http.ResponseWriter, r *http.Request) { g.servePacket(w, r, verb) }).ServeHTTP(w, r)
		default:
			g.instrument("unknown", "", notFound).ServeHTTP(w, r)
		}
	})
	mux.HandleFunc("/v1/users/{user}/{role}", func(w http.ResponseWriter, r *http.Request) {
		role := r.PathValue("role")
		switch role {
		case "sent", "received":
			g.instrument("history_"+role, http.MethodGet, func(w http.ResponseWriter, r *http.Request) { g.serveHistory(w, r, role) }).ServeHTTP(w, r)
		default:
			g.instrument("unknown", "", notFound).ServeHTTP(w, r)
		}
	})
	mux.Handle("/", g.instrument("unknown", "", notFound))
	return mux
}

// notFound answers a path the API does not have. not_found is for a packet that does not exist,
// and a client must be able to tell the two apart.
func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, routing.CodeNoRoute, "", r.Method+" "+r.URL.Path+" is not a route")
}

// servePacket forwards a request about one existing packet to its server.
func (g *Gateway) servePacket(w http.ResponseWriter, r *http.Request, verb string) {
	id, err := routing.ParsePacketID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, routing.CodeInvalidInput, "id", err.Error())
		return
	}
	cell, _, status, err := g.route(id)
	if err != nil {
		code := routing.CodeNotFound
		if status == http.StatusServiceUnavailable {
			code = routing.CodeCellUnavailable
		} else if status == http.StatusMisdirectedRequest {
			code = routing.CodeWrongRegion
		}
		writeError(w, status, code, "id", err.Error())
		return
	}
	body, ok := g.readBody(w, r)
	if !ok {
		return
	}
	if verb == "pay" && !g.claimPayment(w, r, g.cfg.Routing.Current(), id, body) {
		return
	}
	resp, err := g.callCell(r.Context(), verb, cell, id, r.Method, r.URL.RequestURI(), r.Header, body, nil)
	if err != nil {
		g.upstreamFailed(w, verb, cell, err)
		return
	}
	resp.write(w, cell)
}

// route finds the cell and server for a packet. The HTTP status says how to refuse.
func (g *Gateway) route(id int64) (cell, server string, status int, err error) {
	if region := ids.Region(id); region != g.cfg.Region {
		return "", "", http.StatusMisdirectedRequest, fmt.Errorf("packet %d belongs to region %d, this gateway serves region %d", id, region, g.cfg.Region)
	}
	t := g.cfg.Routing.Current()
	if t == nil {
		return "", "", http.StatusServiceUnavailable, errors.New("no routing table loaded")
	}
	cell, _, err = t.PacketOwner(id)
	if err != nil {
		return "", "", http.StatusNotFound, fmt.Errorf("packet %d: %w", id, err)
	}
	servers := g.ready.Ready(cell)
	if len(servers) == 0 {
		return cell, "", http.StatusServiceUnavailable, fmt.Errorf("cell %s has no ready server", cell)
	}
	return cell, routing.Rendezvous(id, servers), 0, nil
}

// serveCreate sends a create to the home cell of its (sender, requestId) key, after asking every
// earlier home of the key whether it already holds the packet (routing/keyhome.go). Inside the
// home it picks a slot and retries once with another slot of the same cell when the cell refuses
// the first: the retry meets the same wrap_requests row, so it can never make a second packet.
func (g *Gateway) serveCreate(w http.ResponseWriter, r *http.Request) {
	body, ok := g.readBody(w, r)
	if !ok {
		return
	}
	t := g.cfg.Routing.Current()
	if t == nil {
		writeError(w, http.StatusServiceUnavailable, routing.CodeNotReady, "", "no routing table loaded")
		return
	}
	sender, requestID, keyed := createIdentity(body)
	if !keyed {
		// Malformed or anonymous creates still reach a cell, whose validation answers them;
		// the cell creates nothing without a key.
		g.forwardCreate(w, r, t, "", rand.Int64(), body)
		return
	}
	now := g.cfg.Now()
	key := routing.WrapKey(sender, requestID)
	home, err := t.KeyHome(key, now)
	if err != nil {
		g.refuseKey(w, "requestId", err)
		return
	}
	hash := hashString(key)
	for _, prior := range t.PriorHomes(key, home, now) {
		resp, err := g.callCell(r.Context(), "create", prior, hash, http.MethodPost, routing.PathFindWrap, r.Header, body, nil)
		if err != nil {
			g.metrics.keyLookups.WithLabelValues("wrap", "failed").Inc()
			g.upstreamFailed(w, "create", prior, err)
			return
		}
		if resp.status == http.StatusNotFound {
			g.metrics.keyLookups.WithLabelValues("wrap", "absent").Inc()
			continue
		}
		// The earlier home holds the packet (200), or refuses the body as it would a retry.
		g.metrics.keyLookups.WithLabelValues("wrap", "found").Inc()
		resp.write(w, prior)
		return
	}
	g.forwardCreate(w, r, t, home, hash, body)
}

// forwardCreate sends a create to cell (any cell with a creatable slot when cell is "").
//
// A cell refuses a slot it cannot issue in (409 slot_unavailable): masked, or its table's
// breaker open. The gateway's masks come with the routing table and trail the cell's by up to
// a kubelet refresh, so after a table fails the gateway keeps picking its slots for a while.
// Each refusal costs one cheap round trip (the cell refuses before any write), so the create
// tries up to maxCreateAttempts slots, never one refused before: one retry was not enough
// right after a database restart masked a quarter of a cell's slots.
func (g *Gateway) forwardCreate(w http.ResponseWriter, r *http.Request, t *routing.Table, cell string, key int64, body []byte) {
	refused := map[int]bool{}
	for attempt := 0; ; attempt++ {
		slot, target, ok := g.pickSlot(t, g.cfg.Now(), key, cell, refused)
		var extra http.Header
		switch {
		case ok:
			extra = http.Header{routing.HeaderSlot: []string{strconv.Itoa(slot)}}
		case cell == "":
			writeError(w, http.StatusServiceUnavailable, routing.CodeNoSlotAvailable, "", "no unmasked slot with a ready cell server")
			return
		case attempt > 0:
			// Every slot left was refused: nothing was created.
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, routing.CodeNoSlotAvailable, "", fmt.Sprintf("cell %s, home of this request, refused every slot it was offered", cell))
			return
		default:
			// The home has no creatable slot left (all masked): it still answers a retry with
			// the packet it holds, and refuses a new key itself.
			target = cell
		}
		resp, err := g.callCell(r.Context(), "create", target, key, r.Method, r.URL.RequestURI(), r.Header, body, extra)
		if err != nil {
			g.upstreamFailed(w, "create", target, err)
			return
		}
		if ok && attempt+1 < maxCreateAttempts && resp.slotUnavailable() {
			g.metrics.createRetries.Inc()
			g.log.Debug("cell refused create slot; retrying with another", "cell", target, "slot", slot)
			refused[slot] = true
			continue
		}
		if resp.slotUnavailable() {
			// Refused on every attempt, or with no slot to choose: nothing was created. Near an
			// epoch's boundary the cell's clock may place the instant in another epoch than ours.
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, routing.CodeNoSlotAvailable, "", fmt.Sprintf("cell %s, home of this request, has no slot it can issue in now", target))
			return
		}
		if resp.status == http.StatusMisdirectedRequest && resp.code() == routing.CodeNotHome {
			// The cell's table or clock puts the key elsewhere this instant: retry shortly.
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, routing.CodeNotHome, "requestId", fmt.Sprintf("cell %s is not the home of this request at its clock; retry", target))
			return
		}
		resp.write(w, target)
		return
	}
}

// refuseKey answers a request whose idempotency key has no home to take it now.
func (g *Gateway) refuseKey(w http.ResponseWriter, field string, err error) {
	if errors.Is(err, routing.ErrKeyHandover) {
		w.Header().Set("Retry-After", strconv.Itoa(int(routing.KeyHandover/time.Second)))
		writeError(w, http.StatusServiceUnavailable, routing.CodeKeyHandover, field, err.Error())
		return
	}
	writeError(w, http.StatusServiceUnavailable, routing.CodeNotReady, field, err.Error())
}

// claimPayment makes sure the payment notice in body may activate packet id and no other in
// the set: the txn's earlier homes must not hold it for another packet, and its home records it
// for this one. It answers the client itself and returns false when the pay must not go on.
// A body it cannot read goes on unclaimed: the packet's cell refuses it without paying.
func (g *Gateway) claimPayment(w http.ResponseWriter, r *http.Request, t *routing.Table, id int64, body []byte) bool {
	var pay struct {
		PaymentTxnID string `json:"paymentTxnId"`
		AmountCents  int64  `json:"amountCents"`
	}
	if json.Unmarshal(body, &pay) != nil || pay.PaymentTxnID == "" {
		return true
	}
	now := g.cfg.Now()
	key := routing.PaymentKey(pay.PaymentTxnID)
	home, err := t.KeyHome(key, now)
	if err != nil {
		g.refuseKey(w, "paymentTxnId", err)
		return false
	}
	hash := hashString(key)
	txn, _ := json.Marshal(map[string]string{"paymentTxnId": pay.PaymentTxnID})
	for _, prior := range t.PriorHomes(key, home, now) {
		resp, err := g.callCell(r.Context(), "pay", prior, hash, http.MethodPost, routing.PathFindPaymentClaim, r.Header, txn, nil)
		if err != nil {
			g.metrics.keyLookups.WithLabelValues("payment", "failed").Inc()
			g.upstreamFailed(w, "pay", prior, err)
			return false
		}
		if resp.status == http.StatusNotFound {
			g.metrics.keyLookups.WithLabelValues("payment", "absent").Inc()
			continue
		}
		g.metrics.keyLookups.WithLabelValues("payment", "found").Inc()
		return g.claimAnswer(w, resp, prior, id)
	}
	claim, _ := json.Marshal(map[string]any{"paymentTxnId": pay.PaymentTxnID, "packetId": strconv.FormatInt(id, 10), "amountCents": pay.AmountCents})
	resp, err := g.callCell(r.Context(), "pay", home, hash, http.MethodPost, routing.PathPaymentClaims, r.Header, claim, nil)
	if err != nil {
		g.upstreamFailed(w, "pay", home, err)
		return false
	}
	return g.claimAnswer(w, resp, home, id)
}

// claimAnswer reads a cell's claim answer: true when the claim binds the txn to packet id.
func (g *Gateway) claimAnswer(w http.ResponseWriter, resp *upstream, cell string, id int64) bool {
	if resp.status == http.StatusMisdirectedRequest && resp.code() == routing.CodeNotHome {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, routing.CodeNotHome, "paymentTxnId", fmt.Sprintf("cell %s is not the home of this payment at its clock; retry", cell))
		return false
	}
	if resp.status != http.StatusOK {
		resp.write(w, cell) // 409 idempotency_conflict, a validation error, or unavailable
		return false
	}
	var c struct {
		PacketID string `json:"packetId"`
	}
	if json.Unmarshal(resp.body, &c) != nil {
		writeError(w, http.StatusBadGateway, routing.CodeUpstreamInvalid, "", fmt.Sprintf("cell %s answered a claim it cannot have meant", cell))
		return false
	}
	if c.PacketID != strconv.FormatInt(id, 10) {
		writeError(w, http.StatusConflict, routing.CodeIdempotencyConflict, "paymentTxnId", "payment transaction already paid another packet")
		return false
	}
	return true
}

// pickSlot chooses, by highest random weight over key, one unmasked slot of the epoch in force
// at now whose cell has a ready server, leaving out slot exclude; only slots of cell when cell
// is not "". Weighing every slot alike makes a cell's share of creates proportional to its
// creatable slots.
// maxCreateAttempts bounds the slots one create tries (see forwardCreate).
const maxCreateAttempts = 6

func (g *Gateway) pickSlot(t *routing.Table, now time.Time, key int64, cell string, exclude map[int]bool) (slot int, owner string, ok bool) {
	e, found := t.EpochAt(now)
	if !found {
		return 0, "", false
	}
	var best uint64
	slot = -1
	for _, r := range e.Ranges {
		if (cell != "" && r.Cell != cell) || len(g.ready.Ready(r.Cell)) == 0 {
			continue
		}
		for s := r.Start; s <= r.End; s++ {
			if exclude[s] || t.IsMasked(s) {
				continue
			}
			if w := slotWeight(key, s); slot < 0 || w > best {
				best, slot, owner = w, s, r.Cell
			}
		}
	}
	return slot, owner, slot >= 0
}

func slotWeight(key int64, slot int) uint64 {
	return mix64(uint64(key) ^ mix64(uint64(slot)+0x632be59bd9b4e019))
}

func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// createIdentity reads a create's idempotency identity; ok is false when the body lacks it.
func createIdentity(body []byte) (sender, requestID string, ok bool) {
	var req struct {
		Sender    string `json:"sender"`
		RequestID string `json:"requestId"`
	}
	if json.Unmarshal(body, &req) != nil || req.Sender == "" || req.RequestID == "" {
		return "", "", false
	}
	return req.Sender, req.RequestID, true
}

func hashString(s string) int64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return int64(h.Sum64())
}

func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, routing.CodeTooLarge, "", fmt.Sprintf("body larger than %d bytes", g.cfg.MaxBody))
		} else {
			writeError(w, http.StatusBadRequest, routing.CodeMalformedJSON, "", "cannot read body")
		}
		return nil, false
	}
	return body, true
}

// upstream is a cell's buffered answer. Cell answers are small JSON documents, and buffering
// lets the gateway look at them (slot refusals, history merging) before answering.
type upstream struct {
	status int
	header http.Header
	body   []byte
}

// code is the error code of a non-2xx answer ("" when the body has none).
func (u *upstream) code() string {
	return routing.ErrorCode(u.body)
}

func (u *upstream) slotUnavailable() bool {
	if u.status != http.StatusConflict {
		return false
	}
	return routing.ErrorCode(u.body) == routing.CodeSlotUnavailable
}

func (u *upstream) write(w http.ResponseWriter, cell string) {
	for k, vs := range u.header {
		if hopByHop(k) || k == "Content-Length" {
			continue
		}
		w.Header()[k] = vs
	}
	w.Header().Set(routing.HeaderCell, cell)
	w.WriteHeader(u.status)
	_, _ = w.Write(u.body) // the client went away: nothing is left to tell it
}

// maxUpstreamBody bounds what the gateway buffers from a cell.
const maxUpstreamBody = 8 << 20

// errNoReadyServer is returned when a cell has no ready server left to call.
var errNoReadyServer = errors.New("no ready server")

// callCell sends a request to the server rendezvous picks for key among the cell's ready
// servers. When the connection cannot even be opened, nothing reached the server, so the
// gateway takes it out of rotation until its next good probe and tries the next server once:
// safe for every verb, since no byte was sent. Any other failure is final, because a call that
// may have reached a cell must not be repeated behind the caller's back.
func (g *Gateway) callCell(ctx context.Context, verb, cell string, key int64, method, requestURI string, in http.Header, body []byte, extra http.Header) (*upstream, error) {
	for attempt := 0; ; attempt++ {
		server := routing.Rendezvous(key, g.ready.Ready(cell))
		if server == "" {
			return nil, fmt.Errorf("%s to cell %s: %w", verb, cell, errNoReadyServer)
		}
		resp, err := g.call(ctx, verb, cell, server, method, requestURI, in, body, extra)
		if err != nil && attempt == 0 && isDialError(err) {
			g.ready.markDown(cell, server)
			g.metrics.failovers.WithLabelValues(cell).Inc()
			g.log.Warn("cell server unreachable; taken out until its next good probe", "cell", cell, "server", server, "err", err)
			continue
		}
		return resp, err
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// call sends one signed request to a cell server.
func (g *Gateway) call(ctx context.Context, verb, cell, server, method, requestURI string, in http.Header, body []byte, extra http.Header) (*upstream, error) {
	req, err := http.NewRequestWithContext(ctx, method, server+requestURI, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s to cell %s: build request: %w", verb, cell, err)
	}
	for k, vs := range in {
		if hopByHop(k) || strings.HasPrefix(k, "X-Rp-") || k == routing.HeaderSlot || k == "Content-Length" {
			continue // signing headers and the slot are the gateway's to set, never the client's
		}
		if k == "Accept-Encoding" {
			continue // the transport negotiates compression itself, so answers arrive readable
		}
		req.Header[k] = vs
	}
	for k, vs := range extra {
		req.Header[k] = vs
	}
	if err := g.cfg.Signer.Sign(req, body); err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := g.client.Do(req)
	if err != nil {
		g.metrics.upstream.WithLabelValues(verb, cell).Observe(time.Since(start).Seconds())
		return nil, fmt.Errorf("%s to cell %s server %s: %w", verb, cell, server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	g.metrics.upstream.WithLabelValues(verb, cell).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("%s to cell %s server %s: read answer: %w", verb, cell, server, err)
	}
	return &upstream{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

func (g *Gateway) upstreamFailed(w http.ResponseWriter, verb, cell string, err error) {
	g.log.Warn("cell call failed", "verb", verb, "cell", cell, "err", err)
	if errors.Is(err, errNoReadyServer) {
		writeError(w, http.StatusServiceUnavailable, routing.CodeCellUnavailable, "", fmt.Sprintf("cell %s has no ready server", cell))
		return
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads this answer, but the metric should not say 502.
		writeError(w, 499, routing.CodeClientClosed, "", "client closed the request")
		return
	}
	writeError(w, http.StatusBadGateway, routing.CodeUpstreamUnavailable, "", fmt.Sprintf("cell %s did not answer", cell))
}

func hopByHop(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host":
		return true
	}
	return false
}

// writeError answers with the JSON error body the cells use too, so a client cannot tell
// which tier refused.
func writeError(w http.ResponseWriter, status int, code, field, message string) {
	routing.WriteError(w, status, code, field, message)
}

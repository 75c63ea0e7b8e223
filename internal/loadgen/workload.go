// Package loadgen is the festival workload behind cmd/rpbench and the end-to-end test: many
// groups whose senders wrap and pay packets while members grab and open them at once, a
// configurable share of taps aimed at a few hot packets (the 500-member group where everyone
// taps the same packet), and user-history reads — all through the gateway's public API. It
// records per-verb latency and outcomes, and keeps the client's view of every packet it
// created and every share it was paid, so Audit can hold the cells' databases and wallet
// ledgers to docs/design.md §4 and to what the clients were told.
//
// It must never write to a cell's database: the audit only reads, and the workload only
// talks HTTP to the gateway.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/internal/cpustat"
)

// Config shapes the workload. Zero values take the defaults in withDefaults.
type Config struct {
	Gateway     string        // base URL, e.g. http://127.0.0.1:8080
	Concurrency int           // workers tapping at once; default 64
	Duration    time.Duration // stop after this long (0: only Opens bounds the run)
	Opens       int64         // stop after this many paid shares (0: only Duration bounds it)

	Groups     int     // ordinary groups; default 200
	Members    int     // members per ordinary group; default 50
	HotPackets int     // hot packets live at once; default 4
	HotMembers int     // members of each hot group (all tap the hot packet); default 500
	HotShare   float64 // fraction of taps aimed at hot packets; default 0.3 (negative: none)
	// HistoryShare is the fraction of iterations that read a user's sent or received history
	// (default 0.02; negative: none).
	HistoryShare float64
	// DetailsShare is the fraction of taps followed by a details read (default 0.02).
	DetailsShare float64
	// MaxCount and MaxTotalCents are the set's packet limits; defaults 100 and 20000.
	MaxCount      int
	MaxTotalCents int64
	// Pool is the number of ordinary packets open for tapping at once; default 2×Concurrency.
	Pool int
	// KeepShares bounds how many paid shares the result keeps for the audit's client-view
	// check (each costs one query); default 200,000. Opens counts them all.
	KeepShares int
	// RunID makes request IDs unique across runs on the same data; default from the clock.
	RunID string
	Seed  uint64
	// Routing, when set, checks the cell that answered each packet (X-Redpacket-Cell) against
	// the owner of the packet's slot at its creation time (docs/design.md §4.4).
	Routing *routing.Table
	// Client defaults to a pooled client with a 30 s timeout.
	Client *http.Client
	// Progress is called about once a second while the run lasts.
	Progress func(Progress)
}

// WithDefaults is the config with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.withDefaults()
	return c
}

func (c *Config) withDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.Groups <= 0 {
		c.Groups = 200
	}
	if c.Members <= 0 {
		c.Members = 50
	}
	if c.HotPackets <= 0 {
		c.HotPackets = 4
	}
	if c.HotMembers <= 0 {
		c.HotMembers = 500
	}
	if c.HotShare == 0 {
		c.HotShare = 0.3
	}
	if c.HistoryShare == 0 {
		c.HistoryShare = 0.02
	}
	if c.DetailsShare == 0 {
		c.DetailsShare = 0.02
	}
	if c.MaxCount <= 0 {
		c.MaxCount = 100
	}
	if c.MaxTotalCents <= 0 {
		c.MaxTotalCents = 20000
	}
	if c.Pool <= 0 {
		c.Pool = 2 * c.Concurrency
	}
	if c.KeepShares <= 0 {
		c.KeepShares = 200_000
	}
	if c.RunID == "" {
		c.RunID = strconv.FormatInt(time.Now().UnixMilli(), 36)
	}
	if c.Seed == 0 {
		c.Seed = uint64(time.Now().UnixNano())
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 4 * c.Concurrency, MaxIdleConnsPerHost: 4 * c.Concurrency,
			IdleConnTimeout: time.Minute, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		}}
	}
}

// Progress is the live picture the Progress callback receives.
type Progress struct {
	Elapsed     time.Duration
	Opens       int64   // shares paid so far
	OpensPerSec float64 // over the last interval
	Requests    int64
	Errors      int64
	Throttled   int64 // 429 answers
	Target      int64 // Config.Opens
	Duration    time.Duration
}

// CreatedPacket is the client's view of one packet it wrapped and paid.
type CreatedPacket struct {
	ID         int64
	TotalCents int64
	Count      int
	Cell       string // X-Redpacket-Cell of the create answer
}

// PaidShare is one successful open as the client saw it.
type PaidShare struct {
	Packet      int64
	User        string
	AmountCents int64
}

// Result is the outcome of a run.
type Result struct {
	Started, Ended time.Time
	Elapsed        time.Duration
	Opens          int64
	OpensPerSec    float64
	Throttled      int64
	Errors         int64
	Verbs          []VerbReport
	ErrorSamples   []string // the first few unexpected answers, for the report
	Misrouted      []string // answers from a cell that does not own the packet
	Created        []CreatedPacket
	Shares         []PaidShare // the first Config.KeepShares of them
	Config         Config
	// MachineCPU is the machine-wide busy fraction during the run (every tier shares the cores
	// on one machine); ClientCPU is the CPU time the load generator itself used.
	MachineCPU float64
	ClientCPU  time.Duration
}

// Run drives the workload until ctx ends, Duration passes or Opens shares are paid. Requests
// in flight when the run stops are allowed to finish, so every money call has an answer.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.withDefaults()
	if cfg.Gateway == "" {
		return nil, errors.New("loadgen: Config.Gateway is required")
	}
	if cfg.Duration <= 0 && cfg.Opens <= 0 {
		return nil, errors.New("loadgen: set Duration or Opens (or both)")
	}
	r := &runner{cfg: cfg, normal: make([]poolSlot, cfg.Pool), hot: make([]poolSlot, cfg.HotPackets)}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(runCtx, cfg.Duration)
		defer cancel()
	}
	r.stop = runCtx.Done()
	r.cancel = cancel

	cpu0, self0 := cpustat.Read(), selfCPU()
	res := &Result{Started: time.Now(), Config: cfg}
	recs := make([]*recorder, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		recs[w] = newRecorder()
		wg.Go(func() { r.work(w, recs[w]) })
	}
	progressDone := make(chan struct{})
	go r.progress(res.Started, progressDone)
	wg.Wait()
	close(progressDone)

	res.Ended = time.Now()
	res.Elapsed = res.Ended.Sub(res.Started)
	res.MachineCPU, res.ClientCPU = cpustat.Busy(cpu0, cpustat.Read()), selfCPU()-self0
	res.Opens = r.opens.Load()
	res.OpensPerSec = float64(res.Opens) / res.Elapsed.Seconds()
	res.Throttled = r.throttled.Load()
	res.Errors = r.errors.Load()
	res.Verbs = merge(recs)
	r.mu.Lock()
	res.ErrorSamples, res.Misrouted, res.Created, res.Shares = r.samples, r.misrouted, r.created, r.shares
	r.mu.Unlock()
	return res, nil
}

type runner struct {
	cfg    Config
	stop   <-chan struct{}
	cancel context.CancelFunc

	normal []poolSlot
	hot    []poolSlot
	seq    atomic.Int64

	opens, requests, errors, throttled atomic.Int64

	mu        sync.Mutex
	samples   []string
	misrouted []string
	created   []CreatedPacket
	shares    []PaidShare
}

// livePacket is a packet members are tapping; next hands out member indexes so each member
// taps it once.
type livePacket struct {
	id        int64
	path      string // /v1/packets/<id>
	group     string
	members   int
	next      atomic.Int64
	exhausted atomic.Bool
}

// poolSlot holds one live packet; a worker that finds it used up becomes the sender of the
// next one, while the others tap elsewhere.
type poolSlot struct {
	mu      sync.Mutex
	pk      *livePacket
	filling bool
}

// claim returns the packet and a member that has not tapped it yet; refill true means the
// caller must wrap a new packet for this slot; neither means another worker is doing so.
func (s *poolSlot) claim() (pk *livePacket, member int, refill bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filling {
		return nil, 0, false
	}
	if s.pk == nil || s.pk.exhausted.Load() || s.pk.next.Load() >= int64(s.pk.members) {
		s.filling = true
		return nil, 0, true
	}
	return s.pk, int(s.pk.next.Add(1) - 1), false
}

func (s *poolSlot) fill(pk *livePacket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pk, s.filling = pk, false
}

func (r *runner) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func (r *runner) work(w int, rec *recorder) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(w)))
	for !r.stopped() {
		if rng.Float64() < r.cfg.HistoryShare {
			r.readHistory(rng, rec)
			continue
		}
		hot := rng.Float64() < r.cfg.HotShare
		slots := r.normal
		if hot {
			slots = r.hot
		}
		slot := &slots[rng.IntN(len(slots))]
		pk, member, refill := slot.claim()
		if refill {
			pk, err := r.wrapAndPay(w, rng, hot, rec)
			if err != nil {
				// Leave the slot empty-handed but free, so another worker tries again.
				slot.fill(nil)
				continue
			}
			slot.fill(pk)
			continue
		}
		if pk == nil {
			continue // someone else is refilling this slot; tap another
		}
		r.tap(rng, pk, member, rec)
	}
}

// tap is one member's grab and, when eligible, open.
func (r *runner) tap(rng *rand.Rand, pk *livePacket, member int, rec *recorder) {
	user := pk.group + "-m" + strconv.Itoa(member)
	body := []byte(`{"user":"` + user + `"}`)
	var grab struct {
		Eligible bool   `json:"eligible"`
		Reason   string `json:"reason"`
	}
	if ok, _ := r.call(rec, VerbGrab, http.MethodPost, pk.path+"/grab", body, pk.id, &grab); !ok {
		return
	}
	if !grab.Eligible {
		if grab.Reason == "exhausted" {
			pk.exhausted.Store(true)
		}
		return
	}
	var open struct {
		User        string `json:"user"`
		AmountCents int64  `json:"amountCents"`
		Repeat      bool   `json:"repeat"`
	}
	ok, code, cell, retried := r.callCell(rec, VerbOpen, http.MethodPost, pk.path+"/open", body, pk.id, &open)
	r.checkOwner(VerbOpen, pk.id, cell)
	switch {
	case ok:
		if open.Repeat && !retried {
			// Each member taps once, so only a retry after a lost answer may see its own first open.
			r.errors.Add(1)
			r.sample(fmt.Sprintf("open %d by %s: first open answered repeat", pk.id, user))
		}
		n := r.opens.Add(1)
		r.mu.Lock()
		if len(r.shares) < r.cfg.KeepShares {
			r.shares = append(r.shares, PaidShare{Packet: pk.id, User: user, AmountCents: open.AmountCents})
		}
		r.mu.Unlock()
		if r.cfg.Opens > 0 && n >= r.cfg.Opens {
			r.cancel()
		}
	case code == "exhausted":
		pk.exhausted.Store(true)
	}
	if rng.Float64() < r.cfg.DetailsShare {
		r.call(rec, VerbDetails, http.MethodGet, pk.path+"?limit=20", nil, pk.id, nil)
	}
}

// wrapAndPay is a sender's turn: wrap a packet for a group and pay it.
func (r *runner) wrapAndPay(w int, rng *rand.Rand, hot bool, rec *recorder) (*livePacket, error) {
	sh := shapePacket(rng, &r.cfg, hot)
	group, members, count, total, kind := sh.group, sh.members, sh.count, sh.total, sh.kind
	sender := group + "-m" + strconv.Itoa(rng.IntN(members))
	req := fmt.Sprintf("%s-%d-%d", r.cfg.RunID, w, r.seq.Add(1))
	body, _ := json.Marshal(map[string]any{"sender": sender, "requestId": req, "totalCents": total,
		"count": count, "kind": kind, "group": group, "greeting": "恭喜发财"})
	var p struct {
		PacketID string `json:"packetId"`
	}
	ok, _, cell, _ := r.callCell(rec, VerbWrap, http.MethodPost, "/v1/packets", body, 0, &p)
	if !ok {
		return nil, errors.New("wrap refused")
	}
	id, err := routing.ParsePacketID(p.PacketID)
	if err != nil {
		r.sample(fmt.Sprintf("wrap: packetId %q: %v", p.PacketID, err))
		return nil, err
	}
	r.checkOwner(VerbWrap, id, cell)
	path := "/v1/packets/" + p.PacketID
	pay := []byte(fmt.Sprintf(`{"paymentTxnId":"pay-%s","amountCents":%d}`, req, total))
	if ok, _ := r.call(rec, VerbPay, http.MethodPost, path+"/pay", pay, id, nil); !ok {
		return nil, errors.New("pay refused")
	}
	r.mu.Lock()
	r.created = append(r.created, CreatedPacket{ID: id, TotalCents: total, Count: count, Cell: cell})
	r.mu.Unlock()
	return &livePacket{id: id, path: path, group: group, members: members}, nil
}

// packetShape is what a sender wraps.
type packetShape struct {
	group   string
	members int
	count   int
	total   int64
	kind    string
}

// shapePacket draws a packet within the set's limits: a hot group's packet has as many shares
// as the limit allows (far fewer than its members, so most taps find it exhausted, as in a
// 500-member group); an ordinary one 1/5 to all of its group's members. Every share is at least
// one cent, and a fixed packet's total divides evenly.
func shapePacket(rng *rand.Rand, cfg *Config, hot bool) packetShape {
	var sh packetShape
	if hot {
		sh.group, sh.members = "hot"+strconv.Itoa(rng.IntN(cfg.HotPackets)), cfg.HotMembers
		sh.count = min(cfg.MaxCount, sh.members)
	} else {
		sh.group, sh.members = "g"+strconv.Itoa(rng.IntN(cfg.Groups)), cfg.Members
		hi := min(cfg.MaxCount, sh.members)
		lo := max(1, hi/5)
		sh.count = lo + rng.IntN(hi-lo+1)
	}
	perShare := 1 + rng.Int64N(max(1, min(cfg.MaxTotalCents/int64(sh.count), 888)))
	sh.total, sh.kind = perShare*int64(sh.count), "fixed"
	if rng.IntN(5) != 0 {
		sh.kind = "random"
		sh.total = min(sh.total+rng.Int64N(int64(sh.count)), cfg.MaxTotalCents)
	}
	return sh
}

func (r *runner) readHistory(rng *rand.Rand, rec *recorder) {
	user := "g" + strconv.Itoa(rng.IntN(r.cfg.Groups)) + "-m" + strconv.Itoa(rng.IntN(r.cfg.Members))
	role := "received"
	if rng.IntN(4) == 0 {
		role = "sent"
	}
	var page struct {
		Items []json.RawMessage `json:"items"`
		Next  string            `json:"next"`
	}
	r.call(rec, VerbHistory, http.MethodGet, "/v1/users/"+user+"/"+role+"?limit=20", nil, 0, &page)
}

// call does one request, retrying 429s after a short pause (the cell refused before touching
// anything) and a transport failure once (every verb is idempotent, so the retry returns the
// first outcome). It reports whether the answer was 2xx and, if not, the error code.
func (r *runner) call(rec *recorder, verb, method, path string, body []byte, packet int64, out any) (bool, string) {
	ok, code, cell, _ := r.callCell(rec, verb, method, path, body, packet, out)
	if packet != 0 {
		r.checkOwner(verb, packet, cell)
	}
	return ok, code
}

func (r *runner) callCell(rec *recorder, verb, method, path string, body []byte, packet int64, out any) (ok bool, code, cell string, retried bool) {
	transportRetries, throttleRetries := 1, 5
	for attempt := 0; ; attempt++ {
		retried = attempt > 0
		start := time.Now()
		status, code, cell, err := r.do(method, path, body, out)
		d := time.Since(start)
		r.requests.Add(1)
		switch {
		case err != nil:
			rec.record(verb, "transport", d)
			if transportRetries > 0 {
				transportRetries--
				continue
			}
			r.errors.Add(1)
			r.sample(fmt.Sprintf("%s %s: %v", method, path, err))
			return false, "transport", "", retried
		case status/100 == 2:
			rec.record(verb, strconv.Itoa(status), d)
			return true, "", cell, retried
		case status == http.StatusTooManyRequests:
			rec.record(verb, "429 "+code, d)
			r.throttled.Add(1)
			if throttleRetries > 0 {
				throttleRetries--
				time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
				continue
			}
			return false, code, cell, retried
		default:
			rec.record(verb, strconv.Itoa(status)+" "+code, d)
			if !expected(verb, status, code) {
				r.errors.Add(1)
				r.sample(fmt.Sprintf("%s %s: %d %s", method, path, status, code))
			}
			return false, code, cell, retried
		}
	}
}

// expected are refusals a festival produces by design: members who tap an exhausted packet.
func expected(verb string, status int, code string) bool {
	return status == http.StatusConflict && code == "exhausted" && (verb == VerbOpen || verb == VerbGrab)
}

func (r *runner) do(method, path string, body []byte, out any) (status int, code, cell string, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, r.cfg.Gateway+path, rd)
	if err != nil {
		return 0, "", "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, "", "", err
	}
	cell = resp.Header.Get(routing.HeaderCell)
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, routing.ErrorCode(data), cell, nil
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, "", cell, fmt.Errorf("decode %s answer: %w", path, err)
		}
	}
	return resp.StatusCode, "", cell, nil
}

// checkOwner holds the answering cell to the routing table: the owner of the packet's slot at
// the packet's creation second.
func (r *runner) checkOwner(verb string, packet int64, cell string) {
	if r.cfg.Routing == nil || cell == "" {
		return
	}
	want, _, err := r.cfg.Routing.PacketOwner(packet)
	if err != nil || want != cell {
		r.mu.Lock()
		if len(r.misrouted) < 100 {
			r.misrouted = append(r.misrouted, fmt.Sprintf("%s %d answered by %s, owner %s (%v)", verb, packet, cell, want, err))
		}
		r.mu.Unlock()
	}
}

func (r *runner) sample(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) < 20 {
		r.samples = append(r.samples, s)
	}
}

func (r *runner) progress(start time.Time, done <-chan struct{}) {
	if r.cfg.Progress == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, lastAt := int64(0), start
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			opens := r.opens.Load()
			r.cfg.Progress(Progress{Elapsed: now.Sub(start), Opens: opens,
				OpensPerSec: float64(opens-last) / now.Sub(lastAt).Seconds(),
				Requests:    r.requests.Load(), Errors: r.errors.Load(), Throttled: r.throttled.Load(),
				Target: r.cfg.Opens, Duration: r.cfg.Duration})
			last, lastAt = opens, now
		}
	}
}
